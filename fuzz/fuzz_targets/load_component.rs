//! Arbitrary bytes as a component: `Engine::load_component` compiles, checks and links what
//! is a valid component of world `courier:actor/actor` and refuses anything else with an
//! `Error` that names the component. It never panics, whatever the bytes.

#![no_main]

use std::sync::OnceLock;

use courier_host_core::{Engine, EngineConfig, ErrorKind};
use libfuzzer_sys::fuzz_target;

/// One engine for every input, as a host has. No pooling: nothing is instantiated here, and
/// the pool's reservation would only slow the fuzzer's start.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(EngineConfig::default().pooling(false).max_instances(4)).expect("engine")
    })
}

fuzz_target!(|data: &[u8]| {
    match engine().load_component("fuzzed", data) {
        Ok(component) => assert_eq!(component.name(), "fuzzed"),
        Err(err) => {
            let message = err.to_string();
            assert!(
                message.contains("`fuzzed`"),
                "error does not name the component: {message}"
            );
            // Bytes in memory are never read from a file.
            assert!(!matches!(err.kind(), ErrorKind::Read { .. }), "{message}");
        }
    }
});
