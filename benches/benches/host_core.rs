//! One call into a guest through host-core's instance API, against its floors.
//!
//! - native floor: a `Vec<u8>` of 64 bytes from one tokio task to another over mpsc;
//! - wasm floor: a bare wasmtime typed async call of `handle-message` on `echo`, for payloads
//!   of 0 B, 64 B, 4 KiB and 64 KiB;
//! - the cost of one host import: a bare call of `echo`'s `handle-request` with the payload
//!   `self` against the same call on `probe`, whose `self` command calls the `self-id` import
//!   and returns its answer (the difference also holds probe's parsing of its command);
//! - host-core: `Instance::call_handle_message` on `echo` for the same payloads, and
//!   `Instance::call_handle_request` on `probe` with `self`, each against its bare call.

use std::hint::black_box;
use std::time::{Duration, Instant};

use courier_benches::bare::{BareEngine, BareInstance};
use courier_benches::{Figure, Figures, Settings, measure, native, payload, runtime, size_label};
use courier_host_core::{Engine, EngineConfig, InstanceOptions};
use courier_test_support::guest_path;

/// The payload sizes of the per-call benchmarks.
const SIZES: [usize; 4] = [0, 64, 4 << 10, 64 << 10];

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("host_core", &settings);
    let rt = runtime();

    let bare = BareEngine::new(true);
    let mut bare_echo = rt.block_on(bare.load(&guest_path("echo")).instantiate("echo"));
    let mut bare_probe = rt.block_on(bare.load(&guest_path("probe")).instantiate("self"));

    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let load = |name: &str| courier_benches::load(&engine, name);
    let instantiate = |name: &str, id: &str| {
        rt.block_on(load(name).instantiate(InstanceOptions::new(id)))
            .unwrap_or_else(|err| panic!("instantiating {name}: {err}"))
    };
    let mut echo = instantiate("echo", "echo");
    let mut probe = instantiate("probe", "self");

    let mut group = criterion.benchmark_group("host_core");

    let message = payload(64);
    let native = measure(&mut group, "native_floor/mpsc/64 B", &settings, |iters| {
        native::mpsc_messages(&rt, iters, &message)
    });
    figures.push(Figure::time(
        "native_64",
        "native floor: tokio mpsc, 64 B, per message",
        native,
    ));

    for size in SIZES {
        let message = payload(size);
        let label = size_label(size);
        let floor = measure(
            &mut group,
            &format!("wasm_floor/handle_message/{label}"),
            &settings,
            |iters| rt.block_on(bare_echo.time_handle_messages(&message, iters)),
        );
        let courier = measure(
            &mut group,
            &format!("host_core/call_handle_message/{label}"),
            &settings,
            |iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let answer = echo.call_handle_message("host", black_box(&message)).await;
                        answer
                            .expect("echo does not trap")
                            .expect("echo accepts every message");
                    }
                    started.elapsed()
                })
            },
        );
        let floor_key = format!("wasm_{size}");
        let mut floor_figure = Figure::time(
            &floor_key,
            &format!("wasm floor: bare handle-message on echo, {label}"),
            floor,
        );
        if size == 64 {
            floor_figure = floor_figure.vs("native_64");
        }
        figures.push(floor_figure);
        figures.push(
            Figure::time(
                &format!("core_{size}"),
                &format!("host-core: Instance::call_handle_message on echo, {label}"),
                courier,
            )
            .vs(&floor_key),
        );
    }

    let command = b"self";
    let bare_request = |instance: &mut BareInstance, iters: u64| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                let reply = instance.handle_request("host", black_box(command)).await;
                black_box(reply.expect("the request is answered"));
            }
            started.elapsed()
        })
    };
    let echo_self = measure(
        &mut group,
        "wasm_floor/handle_request/echo self",
        &settings,
        |iters| bare_request(&mut bare_echo, iters),
    );
    let probe_self = measure(
        &mut group,
        "wasm_floor/handle_request/probe self",
        &settings,
        |iters| bare_request(&mut bare_probe, iters),
    );
    let core_probe_self = measure(
        &mut group,
        "host_core/call_handle_request/probe self",
        &settings,
        |iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let reply = probe.call_handle_request("host", black_box(command)).await;
                    black_box(reply.expect("probe does not trap").expect("probe answers"));
                }
                started.elapsed()
            })
        },
    );
    group.finish();

    figures.push(Figure::time(
        "echo_self",
        "wasm floor: bare handle-request on echo, `self` (no import)",
        echo_self,
    ));
    figures.push(
        Figure::time(
            "probe_self",
            "bare handle-request on probe, `self` (one self-id import)",
            probe_self,
        )
        .vs("echo_self"),
    );
    figures.push(
        Figure::time(
            "core_probe_self",
            "host-core: Instance::call_handle_request on probe, `self`",
            core_probe_self,
        )
        .vs("probe_self"),
    );
    if let (Some(with), Some(without)) = (probe_self, echo_self) {
        figures.note(if with > without {
            format!(
                "one host import (self-id) plus probe's command parsing cost about {:.0} ns \
                 over echo's bare handle-request",
                with - without
            )
        } else {
            "probe's `self` measured no slower than echo's: the import's cost is within this \
             run's noise"
                .to_string()
        });
    }

    figures.write();
    criterion.final_summary();
    // The runtime outlives the instances whose calls ran on it.
    drop((echo, probe));
    rt.shutdown_timeout(Duration::from_secs(1));
}
