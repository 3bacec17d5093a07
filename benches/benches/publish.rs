//! Publications from the host to 1, 10 and 100 subscribers, against the wasm floor.
//!
//! Each subscriber is a `counter` spawned with `.subscribe("bench")`, on a broker of its own
//! per subscriber count. One iteration is a batch of publications, timed until the broker has
//! nothing in flight; the figure is the cost of one publication (its delivery to every
//! subscriber included), compared with as many bare `handle-message` calls on `echo`.

use std::time::{Duration, Instant};

use courier_benches::bare::BareEngine;
use courier_benches::{Figure, Figures, Settings, measure, payload, runtime, settle};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_test_support::guest_path;

const TOPIC: &str = "bench";
/// Publications per iteration; every subscriber's mailbox holds a whole batch.
const BATCH: u64 = 1_000;
/// The payload of each publication.
const PAYLOAD: usize = 8;
const SUBSCRIBERS: [u32; 3] = [1, 10, 100];
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("publish", &settings);
    let rt = runtime();
    let message = payload(PAYLOAD);

    let bare = BareEngine::new(true);
    let mut bare_echo = rt.block_on(bare.load(&guest_path("echo")).instantiate("echo"));

    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let counter = courier_benches::load(&engine, "counter");

    let mut group = criterion.benchmark_group("publish");
    let floor = measure(
        &mut group,
        "wasm_floor/handle_message/8 B",
        &settings,
        |iters| rt.block_on(bare_echo.time_handle_messages(&message, iters)),
    );
    figures.push(Figure::time(
        "wasm_8",
        "wasm floor: bare handle-message on echo, 8 B",
        floor,
    ));

    for subscribers in SUBSCRIBERS {
        let broker = Broker::new(engine.clone());
        rt.block_on(async {
            for n in 0..subscribers {
                let spec = ComponentSpec::new(format!("counter-{n}"), counter.clone())
                    .subscribe(TOPIC)
                    .mailbox_capacity(BATCH as usize);
                broker.spawn(spec).await.expect("spawning a subscriber");
            }
        });
        group.throughput(criterion::Throughput::Elements(BATCH));
        let batch = measure(
            &mut group,
            &format!("broker/publish/{subscribers} subscribers"),
            &settings,
            |iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        let reached = broker.publish(TOPIC, message.clone());
                        assert!(
                            matches!(reached, Ok(n) if n == subscribers),
                            "every subscriber should have room, got {reached:?}"
                        );
                    }
                    settle(&broker, BATCH_TIMEOUT);
                }
                started.elapsed()
            },
        );
        figures.push(
            Figure::time(
                &format!("publish_{subscribers}"),
                &format!(
                    "publish from the host to {subscribers} counter(s), batches of {BATCH}, \
                     per publication"
                ),
                batch.map(|ns| ns / BATCH as f64),
            )
            .vs_times("wasm_8", f64::from(subscribers)),
        );
        rt.block_on(broker.shutdown(Duration::from_secs(5)));
    }
    group.finish();

    figures.write();
    criterion.final_summary();
}
