//! The wit-bindgen bindings of world `actor`, generated once here so that no component crate
//! runs `generate!` itself. Authors use the safe wrappers in the rest of the SDK; the raw
//! bindings are reachable as `courier_sdk::__private::bindings` for the `#[handler]` glue.
//!
//! wit-bindgen compiles the imports to panics on targets other than `wasm32`, which keeps the
//! SDK (and handlers written with it) buildable and unit-testable on the host; the SDK's
//! wrappers check the target first so that such a call fails with a clear message instead.

// With a codec on, the SDK can save a serde state, so components target world
// `stateful-actor` and export `state`. Without one they target `actor`: a component that
// cannot keep state exports nothing for it (and stays as small and as quick to instantiate
// as before).
#[cfg(any(feature = "json", feature = "cbor"))]
wit_bindgen::generate!({
    path: "../wit",
    world: "stateful-actor",
    // The `#[handler]` expansion invokes `export!` from the component crate, so the macro
    // must be public and must find the bindings and the wit-bindgen runtime through this
    // crate: the component depends on `courier-sdk` alone.
    pub_export_macro: true,
    default_bindings_module: "::courier_sdk::__private::bindings",
    runtime_path: "::courier_sdk::__private::wit_bindgen::rt",
});

#[cfg(not(any(feature = "json", feature = "cbor")))]
wit_bindgen::generate!({
    path: "../wit",
    world: "actor",
    pub_export_macro: true,
    default_bindings_module: "::courier_sdk::__private::bindings",
    runtime_path: "::courier_sdk::__private::wit_bindgen::rt",
});
