//! An embedder links host interfaces of its own beside WASI and `courier:actor`.

use std::sync::{Arc, Mutex};

use courier_host_core::wasmtime::StoreContextMut;
use courier_host_core::{Engine, EngineConfig, ErrorKind, HostState, Instance, InstanceOptions};
use courier_test_support::guest_bytes;

/// What the embedder's `launch` records: the id of every instance that called it.
#[derive(Default)]
struct Launches(Mutex<Vec<String>>);

/// An engine whose linker also provides `courier:alien/rocket`, the interface the
/// `alien_import` guest imports and a plain Courier host refuses.
fn engine_with_rockets() -> Engine {
    Engine::builder(EngineConfig::default().max_instances(4))
        .expect("engine")
        .link(|linker| {
            linker.instance("courier:alien/rocket@0.1.0")?.func_wrap(
                "launch",
                |store: StoreContextMut<'_, HostState>, (): ()| {
                    let state = store.data();
                    if let Some(launches) = state.extension::<Launches>() {
                        launches.0.lock().unwrap().push(state.id().to_string());
                    }
                    Ok(())
                },
            )
        })
        .expect("linking the rocket interface")
        .build()
}

/// An instance of `alien_import` on an engine that links its import.
async fn alien(options: InstanceOptions) -> Instance {
    engine_with_rockets()
        .load_component("alien", &guest_bytes("alien_import"))
        .unwrap_or_else(|err| panic!("the linked import is accepted: {err}"))
        .instantiate(options)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_host_interface_linked_by_the_embedder_reaches_its_guest() {
    let launches = Arc::new(Launches::default());
    let mut instance = alien(InstanceOptions::new("apollo").extension(launches.clone())).await;

    instance
        .call_handle_message("host", b"go")
        .await
        .unwrap()
        .unwrap();
    let reply = instance
        .call_handle_request("host", b"again")
        .await
        .unwrap();
    assert_eq!(reply.unwrap(), b"again");
    assert_eq!(*launches.0.lock().unwrap(), ["apollo", "apollo"]);
}

#[tokio::test]
async fn an_instance_without_the_extension_still_runs() {
    let mut instance = alien(InstanceOptions::new("quiet")).await;
    instance
        .call_handle_message("host", b"go")
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn an_import_nobody_linked_is_still_refused_by_name() {
    // The embedder linked something else: the rocket interface is still missing.
    let engine = Engine::builder(EngineConfig::default().max_instances(4))
        .unwrap()
        .link(|linker| {
            linker
                .instance("example:other/thing@0.1.0")?
                .func_wrap("poke", |_: StoreContextMut<'_, HostState>, (): ()| Ok(()))
        })
        .unwrap()
        .build();
    let err = engine
        .load_component("alien", &guest_bytes("alien_import"))
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Link), "{err}");
    assert_eq!(err.component(), Some("alien"));
    assert!(err.to_string().contains("courier:alien/rocket"), "{err}");
}

#[test]
fn linking_a_courier_function_again_is_an_error() {
    let err = Engine::builder(EngineConfig::default().max_instances(4))
        .unwrap()
        .link(|linker| {
            linker
                .instance("courier:actor/host-services@0.1.0")?
                .func_wrap(
                    "current-time-millis",
                    |_: StoreContextMut<'_, HostState>, (): ()| Ok((0u64,)),
                )
        })
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::HostInterfaces), "{err}");
    assert_eq!(err.component(), None);
}
