//! Guests that misbehave are stopped with an error that says how, and poison only themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier_host_core::{EngineConfig, ErrorKind, InstanceOptions};

use crate::common::Setup;

/// Runs `test` on a runtime of its own and fails if it has not finished within a minute.
///
/// A guest that is not interrupted never yields, so a tokio timeout could not fire: only a
/// separate thread can notice that the deadline mechanism failed.
fn with_watchdog<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(test());
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => worker.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The test panicked: re-raise its panic here.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the guest was not interrupted: the test was still running after 60 s")
        }
    }
}

#[test]
fn a_looping_handler_is_interrupted_at_its_deadline_while_another_instance_answers() {
    with_watchdog(|| async {
        let setup = Setup::new();
        let deadline = Duration::from_millis(100);
        let looper = InstanceOptions::new("looper").deadline(deadline);
        let mut looping = setup.instance("looper", looper).await;
        let mut answering = setup.instance("echo", InstanceOptions::new("echo")).await;

        let looper_done = AtomicBool::new(false);
        let (outcome, answered) = tokio::join!(
            async {
                let outcome = looping.call_handle_message("host", b"spin").await;
                looper_done.store(true, Ordering::SeqCst);
                outcome
            },
            async {
                let mut answered = 0u32;
                while !looper_done.load(Ordering::SeqCst) {
                    let reply = answering.call_handle_request("host", b"ping").await;
                    assert_eq!(reply.unwrap().unwrap(), b"ping");
                    answered += 1;
                    tokio::task::yield_now().await;
                }
                answered
            }
        );

        let err = outcome.unwrap_err();
        let ErrorKind::DeadlineExceeded {
            deadline: d,
            backtrace,
        } = err.kind()
        else {
            panic!("expected a deadline error, got {err}");
        };
        assert_eq!(err.component(), Some("looper"));
        assert_eq!(*d, deadline);
        // The epoch trap carries a wasm backtrace; the host's fallback for a guest parked in
        // a host call does not. A backtrace proves the running wasm itself was interrupted.
        assert!(
            backtrace.is_some(),
            "interrupted by the fallback, not the epoch: {err}"
        );
        assert!(err.to_string().contains("deadline of 100 ms"), "{err}");
        assert!(
            answered > 0,
            "the echo instance was starved while looper ran"
        );

        // The neighbour is unaffected afterwards too.
        let reply = answering.call_handle_request("host", b"still here").await;
        assert_eq!(reply.unwrap().unwrap(), b"still here");
    });
}

#[test]
fn a_poisoned_instance_refuses_further_calls() {
    with_watchdog(|| async {
        let setup = Setup::new();
        let mut instance = setup
            .instance(
                "looper",
                InstanceOptions::new("looper").deadline(Duration::from_millis(20)),
            )
            .await;
        assert!(instance.call_handle_message("host", b"").await.is_err());
        assert!(instance.is_poisoned());

        let err = instance.call_handle_request("host", b"").await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("deadline of 20 ms"), "{err}");
        assert!(!err.is_trap(), "refusing a call is not a new trap");
    });
}

#[tokio::test]
async fn a_memory_bomb_stops_at_its_cap() {
    let setup = Setup::new();
    let mut instance = setup
        .instance(
            "memhog",
            InstanceOptions::new("memhog").memory_limit(16 << 20),
        )
        .await;
    let err = instance.call_handle_message("host", b"").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MemoryLimitExceeded { limit, .. } if *limit == 16 << 20),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("`memhog` exceeded its memory limit of 16 MiB"),
        "{err}"
    );
    assert!(instance.is_poisoned());
}

#[tokio::test]
async fn a_panic_becomes_an_error_carrying_the_panic_text() {
    let setup = Setup::new();
    let mut instance = setup
        .instance("panicker", InstanceOptions::new("panicker"))
        .await;
    let err = instance
        .call_handle_message("host", b"boom")
        .await
        .unwrap_err();
    let ErrorKind::Panicked { message, .. } = err.kind() else {
        panic!("expected a panic error, got {err}");
    };
    assert_eq!(message, "panicker refuses: boom");
    assert!(
        err.to_string()
            .starts_with("component `panicker` panicked: \"panicker refuses: boom\"")
    );
}

#[tokio::test]
async fn an_unreachable_trap_is_reported_as_a_trap() {
    let setup = Setup::new();
    let mut instance = setup.instance("probe", InstanceOptions::new("probe")).await;
    let err = instance
        .call_handle_request("host", b"trap")
        .await
        .unwrap_err();
    let ErrorKind::Trapped { trap, backtrace } = err.kind() else {
        panic!("expected a trap error, got {err}");
    };
    assert!(trap.contains("unreachable"), "{trap}");
    assert!(backtrace.is_some());
    assert!(instance.is_poisoned());
}

#[tokio::test]
async fn fuel_bounds_a_call_when_the_engine_meters_it() {
    let metered = Setup::with(EngineConfig::default().max_instances(4).fuel(true));
    let mut instance = metered
        .instance("looper", InstanceOptions::new("looper").fuel(1_000_000))
        .await;
    let err = instance.call_handle_message("host", b"").await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::FuelExhausted {
                fuel: 1_000_000,
                ..
            }
        ),
        "{err}"
    );

    // Without metering, asking for fuel is a configuration error, not a silent no-op.
    let plain = Setup::new();
    let looper = plain.load("looper");
    let err = looper
        .instantiate(InstanceOptions::new("looper").fuel(10))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Config { .. }), "{err}");
}

#[test]
fn a_guest_that_splits_its_waiting_into_short_sleeps_still_meets_its_deadline() {
    with_watchdog(|| async {
        let setup = Setup::new();
        let deadline = Duration::from_millis(300);
        let options = InstanceOptions::new("sleepy").deadline(deadline);
        let mut instance = setup.instance("hostile", options).await;
        // A hundred sleeps of 45 ms, each shorter than the 50 ms a guest may sit in one host
        // call past its deadline before it is abandoned: 4.5 s if nothing added them up.
        let started = std::time::Instant::now();
        let err = instance
            .call_handle_message("host", b"sleep-loop:45:100")
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err.kind(), ErrorKind::DeadlineExceeded { .. }),
            "{err}"
        );
        // The bound is the deadline, one more sleep and a tick; the margin is for a busy
        // machine's sleeps, which overshoot.
        assert!(
            took < deadline + Duration::from_secs(1),
            "ended after {took:?}"
        );
        println!("sleep-loop guest: deadline {deadline:?}, ended after {took:?}");
    });
}

/// An engine for more instances than 4 GiB reservations leave room for reserves only the
/// largest memory for each, and its compiled code checks every access against that bound.
/// The slots of the pool then lie a few MiB apart: without the checks, an address past one
/// instance's memory would read the next instance's.
#[tokio::test]
async fn a_dense_engine_keeps_each_instance_inside_its_own_memory() {
    const MEMORY: usize = 16 << 20;
    let config = EngineConfig::default()
        .max_instances(17_000)
        .max_memory_bytes(MEMORY);
    assert_eq!(config.get_memory_reservation(), MEMORY as u64);
    let setup = Setup::with(config);
    let hostile = setup.load("hostile");
    let instance = |id: &str| hostile.instantiate(InstanceOptions::new(id));

    // The neighbours: every slot within reach of the addresses below holds an instance
    // whose memory starts with mapped pages.
    let mut neighbours = Vec::new();
    for n in 0..4 {
        neighbours.push(
            instance(&format!("neighbour-{n}"))
                .await
                .expect("instantiates"),
        );
    }
    let mut reader = instance("reader").await.expect("instantiates");
    let inside = reader.call_handle_request("host", b"peek:1024").await;
    let byte = inside.expect("its own memory").expect("answered");
    assert_eq!(byte.len(), 1);

    // The reservation and wasmtime's 32 MiB guard after it make one slot.
    let slot = MEMORY as u64 + (32 << 20);
    for address in [
        MEMORY as u64,
        slot + 1024,
        2 * slot + 1024,
        4 * slot + 1024,
        u64::from(u32::MAX),
    ] {
        let mut reader = instance("reader").await.expect("instantiates");
        let command = format!("peek:{address}");
        let err = reader
            .call_handle_request("host", command.as_bytes())
            .await
            .expect_err("a read outside its memory traps");
        let ErrorKind::Trapped { trap, .. } = err.kind() else {
            panic!("peek at {address}: expected a trap, got {err}");
        };
        assert!(trap.contains("out of bounds memory access"), "{trap}");
    }
    drop(neighbours);
}
