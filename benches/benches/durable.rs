//! Durable components: the latency of one accepted message against one fsync on this disk.
//!
//! - fsync floor: write 16 bytes in place (at the start of a file that already holds them,
//!   so its size never changes) and `sync_data` it, one after another: the least a durable
//!   write costs on this disk. Growing the file instead adds a metadata commit to each;
//! - store floor: `RedbStore::append` of one entry, one after another (one redb commit, one
//!   fsync each, with no Courier code above it). Its entries are never consumed, so its
//!   table grows through the run, where the counter's stays small;
//! - Courier: `Broker::send_durable` of one message to a durable `counter`, one after
//!   another: admitted, appended, queued, answered; meanwhile the counter's actor handles the
//!   messages and commits its batches, which share the store's writer with the appends.
//!
//! The files live under `target/`, on the disk the repository is on: a temporary folder may
//! be a RAM disk, whose fsync costs nothing.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_benches::{Figure, Figures, Settings, guest_built, measure, runtime, settle};
use courier_host_broker::{Broker, BrokerConfig, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_host_store::{Entry, Kind, RedbStore, Store};

fn main() {
    let settings = Settings::from_env();
    let mut criterion = settings.criterion();
    let mut figures = Figures::new("durable", &settings);
    if !guest_built("counter") {
        figures.note("counter is not built (run `cargo xtask build-guests`)");
        figures.write();
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/durable-bench")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&root).expect("making the bench folder");
    let rt = runtime();

    let mut group = criterion.benchmark_group("durable");
    let mut file = std::fs::File::create(root.join("floor")).expect("making the fsync file");
    file.write_all(&[0; 16]).unwrap();
    file.sync_all().unwrap();
    let fsync = measure(&mut group, "floor/fsync", &settings, |iters| {
        let started = Instant::now();
        for i in 0..iters {
            let mut record = [0; 16];
            record[..8].copy_from_slice(&i.to_le_bytes());
            file.write_all_at(&record, 0).unwrap();
            file.sync_data().unwrap();
        }
        started.elapsed()
    });

    let store = RedbStore::open_in_dir(root.join("store")).expect("opening the floor's store");
    let append = measure(&mut group, "floor/store_append", &settings, |iters| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                let entry = Entry::new("counter", "host", Kind::Message, &b"+1"[..]);
                store.append(vec![entry]).await.expect("stored");
            }
            started.elapsed()
        })
    });
    drop(store);

    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in_dir(root.join("broker")).expect("opening the broker's store"));
    let engine = Engine::new(EngineConfig::default()).expect("building the engine");
    let broker = Broker::with_config(engine.clone(), BrokerConfig::default().store(store));
    let counter = courier_benches::load(&engine, "counter");
    rt.block_on(
        broker.spawn(
            ComponentSpec::new("counter", counter)
                .durable(true)
                .mailbox_capacity(1 << 16),
        ),
    )
    .expect("spawning the durable counter");
    let accepted = measure(&mut group, "broker/send_durable", &settings, |iters| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..iters {
                broker
                    .send_durable("counter", &b"+1"[..])
                    .await
                    .expect("accepted");
            }
            started.elapsed()
        })
    });
    group.finish();
    settle(&broker, Duration::from_secs(60));
    rt.block_on(broker.shutdown(Duration::from_secs(5)));
    drop(broker);

    figures.push(Figure::time(
        "fsync",
        "fsync floor: write 16 B in place and sync_data, one after another",
        fsync,
    ));
    figures.push(
        Figure::time(
            "store_append",
            "store floor: RedbStore::append of one entry, one after another",
            append,
        )
        .vs("fsync"),
    );
    figures.push(
        Figure::time(
            "send_durable",
            "Courier: Broker::send_durable of one message to a durable counter, one after another",
            accepted,
        )
        .vs("fsync"),
    );
    figures.write();
    criterion.final_summary();
    let _ = std::fs::remove_dir_all(&root);
}
