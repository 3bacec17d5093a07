//! Calling real guest components through the instance API.

use courier_host_core::{Engine, EngineConfig, ErrorKind, InstanceOptions};

use crate::common::Setup;

#[tokio::test]
async fn echo_answers_a_request_with_its_payload() {
    let mut instance = Setup::new()
        .instance("echo", InstanceOptions::new("echo"))
        .await;

    let reply = instance
        .call_handle_request("host", b"hello, courier")
        .await
        .unwrap();
    assert_eq!(reply.unwrap(), b"hello, courier");
    instance
        .call_handle_message("host", b"fire")
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn counter_keeps_its_state_over_a_thousand_calls() {
    let setup = Setup::new();
    let counter = setup.load("counter");
    let mut instance = counter
        .instantiate(InstanceOptions::new("counter"))
        .await
        .unwrap();

    for _ in 0..1000 {
        instance
            .call_handle_message("host", b"tick")
            .await
            .unwrap()
            .unwrap();
    }
    let count = instance
        .call_handle_request("host", b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u64::from_le_bytes(count.try_into().unwrap()), 1000);

    // A second instance of the same component has state of its own.
    let mut other = counter
        .instantiate(InstanceOptions::new("counter-2"))
        .await
        .unwrap();
    let count = other
        .call_handle_request("host", b"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u64::from_le_bytes(count.try_into().unwrap()), 0);
}

#[tokio::test]
async fn empty_and_one_mebibyte_payloads_travel_intact() {
    let mut instance = Setup::new()
        .instance("echo", InstanceOptions::new("echo"))
        .await;

    let empty = instance
        .call_handle_request("host", b"")
        .await
        .unwrap()
        .unwrap();
    assert!(empty.is_empty());

    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let reply = instance
        .call_handle_request("host", &big)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.len(), big.len());
    assert!(reply == big, "the 1 MiB payload came back altered");
}

#[tokio::test]
async fn the_pooling_allocator_is_used_by_default() {
    use courier_host_core::Allocation;
    // The fallback exists for sandboxes that refuse the reservation; this machine does not.
    assert_eq!(Setup::new().engine.allocation(), Allocation::Pooling);
    let on_demand = Setup::with(EngineConfig::default().pooling(false));
    assert_eq!(on_demand.engine.allocation(), Allocation::OnDemand);
    assert_echo_answers(&on_demand).await;
}

/// Loads echo on `setup`'s engine and checks one round trip.
async fn assert_echo_answers(setup: &Setup) {
    let mut instance = setup.instance("echo", InstanceOptions::new("echo")).await;
    let reply = instance.call_handle_request("host", b"x").await.unwrap();
    assert_eq!(reply.unwrap(), b"x");
}

#[tokio::test]
async fn compiled_code_is_cached_on_disk_when_asked() {
    let dir = std::env::temp_dir().join(format!("courier-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = EngineConfig::default().max_instances(4).cache_dir(&dir);
    Setup::with(config.clone()).load("echo");
    let files = walk(&dir);
    assert!(
        !files.is_empty(),
        "nothing was written to {}",
        dir.display()
    );

    // A second engine (as in a second run) loads from the cache and still works.
    assert_echo_answers(&Setup::with(config)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[cfg(unix)]
#[test]
fn a_code_cache_that_others_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;

    let dir = std::env::temp_dir().join(format!("courier-open-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Engine::new(EngineConfig::default().max_instances(1).cache_dir(&dir)).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Cache { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("writable by every user (mode 777)"),
        "{err}"
    );

    // A directory the engine creates itself is its owner's alone.
    let fresh = dir.join("fresh");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    Engine::new(EngineConfig::default().max_instances(1).cache_dir(&fresh)).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // One that belongs to someone else is refused too; only root can make one to try.
    if std::os::unix::fs::chown(&fresh, Some(65534), None).is_ok() {
        let err =
            Engine::new(EngineConfig::default().max_instances(1).cache_dir(&fresh)).unwrap_err();
        assert!(err.to_string().contains("belongs to user 65534"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
