//! The wasmtime bindings of world `courier:actor/actor`, generated from `wit/` at build time.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "actor",
    // send-request waits for another actor, so it must not block the thread; the rest answer
    // at once and stay synchronous, which keeps them cheap.
    imports: {
        "courier:actor/messaging.send-request": async,
    },
});
