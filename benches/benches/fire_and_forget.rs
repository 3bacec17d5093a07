//! Fire-and-forget messages through the broker, against their floors.
//!
//! - native floor: a `Vec<u8>` of 64 bytes from one tokio task to another over mpsc;
//! - wasm floor: a bare call of `echo`'s `handle-message`, for the payload sizes below;
//! - ping to pong, wasm to wasm: the host sends `N` (decimal text) to `ping`, whose handler
//!   calls `send-message` N times to `pong` with an 8-byte payload; one iteration is the whole
//!   batch, timed until the broker has nothing in flight. Per message it is compared with
//!   twice the wasm floor at 8 B (the sender's `send-message` plus the receiver's
//!   `handle-message`, docs/design.md §7);
//! - the same batch with no runtime: bare `ping` whose `send-message` calls bare `pong`'s
//!   `handle-message` inline;
//! - host to `counter` through `Broker::send` with payloads of 0 B, 64 B, 4 KiB and 64 KiB
//!   (ping's payload is fixed at 8 bytes, so the payload sizes are measured from the host),
//!   each against the wasm floor at the same size.

use std::time::{Duration, Instant};

use courier_benches::bare::BareEngine;
use courier_benches::{
    Figure, Figures, Settings, Target, guest_built, measure, native, payload, runtime, settle,
    size_label,
};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_test_support::guest_path;

/// Messages ping sends per batch.
const PING_BATCH: u64 = 10_000;
/// The size of ping's messages: a u64 sequence number.
const PING_PAYLOAD: usize = 8;
/// Payload sizes of the host-to-counter messages, with the batch for each: fewer of the
/// largest, so a batch queues at most 64 MiB.
const SIZES: [(usize, u64); 4] = [
    (0, 10_000),
    (64, 10_000),
    (4 << 10, 10_000),
    (64 << 10, 1_000),
];
/// Long enough for any batch; a batch that takes longer has found a bug.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("fire_and_forget", &settings);
    let rt = runtime();

    let bare = BareEngine::new(true);
    let mut bare_echo = rt.block_on(bare.load(&guest_path("echo")).instantiate("echo"));

    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let broker = Broker::new(engine.clone());
    let load = |name: &str| courier_benches::load(&engine, name);
    let spawn = |spec: ComponentSpec| {
        let id = spec.id().clone();
        rt.block_on(broker.spawn(spec))
            .unwrap_or_else(|err| panic!("spawning {id}: {err}"));
    };
    let largest_batch = SIZES.iter().map(|(_, batch)| *batch).max().unwrap_or(1);
    // Room in bytes for two of the largest batches: an actor gives a batch's bytes back once
    // it has handled the whole batch, a moment after the broker counts the last delivery, so
    // a batch sent as soon as the previous one is counted delivered may find some of it still
    // charged (an actor's worker descheduled in that moment, on a two-core box).
    let largest_bytes = SIZES
        .iter()
        .map(|(size, batch)| *size as u64 * batch)
        .max()
        .unwrap_or(0);
    spawn(
        ComponentSpec::new("counter", load("counter"))
            .mailbox_capacity(largest_batch as usize)
            .mailbox_bytes(2 * largest_bytes),
    );
    let ping_pong = guest_built("ping") && guest_built("pong");
    if ping_pong {
        spawn(ComponentSpec::new("pong", load("pong")).mailbox_capacity(PING_BATCH as usize));
        spawn(ComponentSpec::new("ping", load("ping")).may_send("pong"));
    }

    let mut group = criterion.benchmark_group("fire_and_forget");

    let message = payload(64);
    group.throughput(criterion::Throughput::Elements(1));
    let native = measure(&mut group, "native_floor/mpsc/64 B", &settings, |iters| {
        native::mpsc_messages(&rt, iters, &message)
    });
    figures.push(Figure::time(
        "native_64",
        "native floor: tokio mpsc, 64 B, per message",
        native,
    ));

    let mut floor_sizes: Vec<usize> = vec![PING_PAYLOAD];
    floor_sizes.extend(SIZES.iter().map(|(size, _)| *size));
    for size in floor_sizes {
        let message = payload(size);
        let label = size_label(size);
        let floor = measure(
            &mut group,
            &format!("wasm_floor/handle_message/{label}"),
            &settings,
            |iters| rt.block_on(bare_echo.time_handle_messages(&message, iters)),
        );
        figures.push(Figure::time(
            &format!("wasm_{size}"),
            &format!("wasm floor: bare handle-message on echo, {label}"),
            floor,
        ));
    }

    let ping_label = format!("ping to pong, {PING_PAYLOAD} B, batches of {PING_BATCH}");
    if ping_pong {
        group.throughput(criterion::Throughput::Elements(PING_BATCH));
        let count = PING_BATCH.to_string().into_bytes();

        let mut bare_ping = rt.block_on(bare.load(&guest_path("ping")).instantiate("ping"));
        bare_ping.connect(rt.block_on(bare.load(&guest_path("pong")).instantiate("pong")));
        let inline = measure(&mut group, "bare/ping_pong_inline", &settings, |iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let answer = bare_ping.handle_message("host", &count).await;
                    answer.expect("ping accepts its count");
                }
                started.elapsed()
            })
        });

        let mut batches = 0u64;
        let courier = measure(&mut group, "broker/ping_pong", &settings, |iters| {
            let started = Instant::now();
            for _ in 0..iters {
                broker
                    .send("ping", count.clone())
                    .expect("ping's mailbox has room");
                settle(&broker, BATCH_TIMEOUT);
            }
            batches += iters;
            started.elapsed()
        });

        let per_message = |batch: Option<f64>| batch.map(|ns| ns / PING_BATCH as f64);
        figures.push(
            Figure::time(
                "bare_ping_pong",
                &format!("bare ping to pong inline (no runtime), {PING_PAYLOAD} B, per message"),
                per_message(inline),
            )
            .vs_times(&format!("wasm_{PING_PAYLOAD}"), 2.0),
        );
        figures.push(
            Figure::time(
                "ping_pong",
                &format!("{ping_label}, per message"),
                per_message(courier),
            )
            .vs_times(&format!("wasm_{PING_PAYLOAD}"), 2.0)
            .target(Target::RatioAtMost(1.5)),
        );
        figures.push(
            Figure::rate(
                "ping_pong_rate",
                &format!("{ping_label}, throughput (msg/s)"),
                per_message(courier).map(|ns| 1e9 / ns),
            )
            .target(Target::AtLeast(1e6)),
        );
        check_pong(&rt, &broker, batches * PING_BATCH, &mut figures);
    } else {
        figures.note(
            "ping or pong is not built (run `cargo xtask build-guests`): ping to pong not measured",
        );
        figures.push(Figure::time(
            "ping_pong",
            &format!("{ping_label}, per message (ping/pong not built)"),
            None,
        ));
    }

    for (size, batch) in SIZES {
        // One buffer shared by every message of the batch, as a host that forwards what it
        // received would: a send costs a reference count, and the one copy is into the guest.
        let message = bytes::Bytes::from(payload(size));
        let label = size_label(size);
        group.throughput(criterion::Throughput::Elements(batch));
        let courier = measure(
            &mut group,
            &format!("broker/host_to_counter/{label}"),
            &settings,
            |iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    for _ in 0..batch {
                        broker
                            .send("counter", message.clone())
                            .expect("counter's mailbox holds a batch");
                    }
                    settle(&broker, BATCH_TIMEOUT);
                }
                started.elapsed()
            },
        );
        figures.push(
            Figure::time(
                &format!("host_counter_{size}"),
                &format!("host to counter, Broker::send, {label}, batches of {batch}, per message"),
                courier.map(|ns| ns / batch as f64),
            )
            .vs(&format!("wasm_{size}")),
        );
    }
    group.finish();

    let books = broker.accounting();
    if books.refused + books.dead_lettered > 0 {
        figures.note(format!(
            "the broker refused {} and dead-lettered {} messages: the figures above are suspect",
            books.refused, books.dead_lettered
        ));
    }
    figures.write();
    criterion.final_summary();
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
}

/// Ask pong what it received and note it if that is not every message ping was asked to
/// send, in order.
fn check_pong(rt: &tokio::runtime::Runtime, broker: &Broker, expected: u64, figures: &mut Figures) {
    let reply = rt.block_on(broker.request("pong", Vec::new(), Duration::from_secs(5)));
    let field = |reply: &[u8], at: usize| {
        reply
            .get(at..at + 8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let figures_of_pong = reply
        .ok()
        .and_then(|reply| Some((field(&reply, 0)?, field(&reply, 8)?)));
    match figures_of_pong {
        Some((received, 0)) if received == expected => {}
        Some((received, out_of_order)) => figures.note(format!(
            "pong received {received} messages ({out_of_order} out of order) where ping was \
             asked to send {expected}"
        )),
        None => figures.note("pong did not report its count"),
    }
}
