//! The wasmtime bindings of world `courier:actor/actor`, generated from `wit/` at build time.
//!
//! The host calls a guest's handlers through the generated, typed exports (`ActorPre` kept
//! per component, `Actor` per instance), so no hand-written unchecked call exists.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "actor",
    // send-request waits for another actor, and send-message to a durable component waits
    // for the store, so neither may block the thread; the rest answer at once and stay
    // synchronous, which keeps them cheap. Whether the host awaits is invisible to the guest:
    // the WIT, and so every component built against it, is unchanged.
    imports: {
        "courier:actor/messaging.send-message": async,
        "courier:actor/messaging.send-request": async,
    },
    // Handlers run under epoch interruption, which yields to the scheduler at every tick:
    // only an async call can yield.
    exports: {
        default: async,
    },
});
