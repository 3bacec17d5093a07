//! The store's cost against its floors, measured in the same run.
//!
//! - fsync floor: write 4 KiB to a file and `fdatasync` it, on the disk the store uses;
//! - raw redb: the same mailbox records (same keys, same value bytes) inserted in one redb
//!   transaction per batch and committed, with no Courier code;
//! - Courier: `RedbStore::append` of the same batches (one call per batch, one sender whose
//!   sequence numbers are checked), awaited until durable.
//!
//! Batches of 1, 16 and 256 records of 64-byte payloads. Every figure is the median time per
//! batch; the report prints each with its ratio to the figure it is compared with, and writes
//! them to `target/bench-results/store.tsv` in the format `bench-report` reads.
//! `COURIER_BENCH_QUICK=1` (what `cargo xtask bench --quick` sets) takes the short run.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_host_store::{Entry, Kind, RedbStore, Store};
use criterion::Criterion;
use redb::TableDefinition;

const BATCHES: [usize; 3] = [1, 16, 256];
const PAYLOAD: usize = 64;
const ACTOR: &str = "bench/pong";
const SENDER: &str = "bench/ping";

/// The store's mailbox table, as raw redb sees it.
const MAILBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mailbox");

struct Settings {
    quick: bool,
    sample_size: usize,
    recording: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("COURIER_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let args: Vec<String> = std::env::args().collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        Settings {
            quick,
            sample_size: if quick { 10 } else { 100 },
            recording: has("--bench") && !has("--test") && !has("--list"),
        }
    }

    fn criterion(&self) -> Criterion {
        let criterion = Criterion::default().without_plots();
        let criterion = if self.quick {
            criterion
                .sample_size(self.sample_size)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_millis(1200))
                .nresamples(10_000)
        } else {
            criterion.sample_size(self.sample_size)
        };
        criterion.configure_from_args()
    }
}

/// Median time per iteration of the last `samples` calls criterion made, in nanoseconds.
fn measure(
    c: &mut Criterion,
    id: &str,
    settings: &Settings,
    mut routine: impl FnMut(u64) -> Duration,
) -> Option<f64> {
    let calls = Arc::new(Mutex::new(Vec::<f64>::new()));
    let kept = Arc::clone(&calls);
    c.bench_function(id, move |b| {
        b.iter_custom(|iters| {
            let elapsed = routine(iters);
            kept.lock()
                .unwrap()
                .push(elapsed.as_nanos() as f64 / iters.max(1) as f64);
            elapsed
        })
    });
    if !settings.recording {
        return None;
    }
    let calls = calls.lock().unwrap();
    median(calls[calls.len().saturating_sub(settings.sample_size)..].to_vec())
}

/// The workspace's target folder, where the figures go and where the files are made: on the
/// disk a host's data folder would be on.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// The value the store writes for one entry: kind, has-seq, seq, sender, payload.
fn record_value(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut value = vec![0u8, 1];
    value.extend_from_slice(&seq.to_le_bytes());
    value.push(SENDER.len() as u8);
    value.extend_from_slice(SENDER.as_bytes());
    value.extend_from_slice(payload);
    value
}

struct Figure {
    key: String,
    label: String,
    nanos: Option<f64>,
    vs: Option<String>,
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion();
    let work = tempfile::tempdir_in({
        let dir = target_dir();
        std::fs::create_dir_all(&dir).expect("the target folder");
        dir
    })
    .expect("a folder for the benchmark's files");
    let payload = vec![b'p'; PAYLOAD];
    let mut figures = Vec::new();

    // The floor: one 4 KiB write and one fdatasync.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(work.path().join("fsync"))
        .unwrap();
    let page = vec![1u8; 4096];
    let fsync = measure(&mut c, "store/fsync", &settings, |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            file.seek(SeekFrom::Start(0)).unwrap();
            file.write_all(&page).unwrap();
            file.sync_data().unwrap();
        }
        start.elapsed()
    });
    figures.push(Figure {
        key: "fsync".into(),
        label: "fsync floor: 4 KiB write + fdatasync".into(),
        nanos: fsync,
        vs: None,
    });

    // Raw redb: the same records, the same batches, no Courier code.
    let db = raw_database(&work.path().join("raw.redb"));
    let mut next = 1u64;
    for batch in BATCHES {
        let raw = measure(
            &mut c,
            &format!("store/raw-redb/{batch}"),
            &settings,
            |iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let values: Vec<(u64, Vec<u8>)> = (0..batch)
                        .map(|_| {
                            next += 1;
                            (next, record_value(next, &payload))
                        })
                        .collect();
                    let start = Instant::now();
                    let txn = db.begin_write().unwrap();
                    {
                        let mut table = txn.open_table(MAILBOX).unwrap();
                        for (position, value) in &values {
                            table.insert((ACTOR, *position), value.as_slice()).unwrap();
                        }
                    }
                    txn.commit().unwrap();
                    elapsed += start.elapsed();
                }
                elapsed
            },
        );
        figures.push(Figure {
            key: format!("raw-{batch}"),
            label: format!("raw redb, {batch} records of {PAYLOAD} B per commit"),
            nanos: raw,
            vs: Some("fsync".into()),
        });
    }
    drop(db);

    // Courier: RedbStore::append of the same batches.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = RedbStore::open_in_dir(work.path().join("courier")).unwrap();
    let payload = Bytes::from(payload);
    let mut seq = 0u64;
    for batch in BATCHES {
        let courier = measure(
            &mut c,
            &format!("store/append/{batch}"),
            &settings,
            |iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let entries: Vec<Entry> = (0..batch)
                        .map(|_| {
                            seq += 1;
                            Entry::new(ACTOR, SENDER, Kind::Message, payload.clone()).with_seq(seq)
                        })
                        .collect();
                    let start = Instant::now();
                    let appended = runtime.block_on(store.append(entries)).unwrap();
                    elapsed += start.elapsed();
                    assert_eq!(appended.len(), batch);
                }
                elapsed
            },
        );
        figures.push(Figure {
            key: format!("append-{batch}"),
            label: format!("RedbStore::append, {batch} entries of {PAYLOAD} B per call"),
            nanos: courier,
            vs: Some(format!("raw-{batch}")),
        });
    }
    c.final_summary();

    // The same three, interleaved: each round times one fsync, then each batch size raw and
    // through the store back to back, so a disk that slows down for a while (other work on
    // a shared machine) slows both sides of each ratio alike. Then the same in memory
    // (tmpfs, where an fsync costs nothing): what is left is the code's own cost.
    // A criterion filter that left out every figure above leaves these out too.
    let measured = figures.iter().any(|f| f.nanos.is_some());
    if settings.recording && measured {
        let rounds = if settings.quick { 40 } else { 300 };
        let on_disk = tempfile::tempdir_in(work.path()).unwrap();
        interleaved(&mut figures, on_disk.path(), "disk", rounds, &runtime);
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let in_memory = tempfile::tempdir_in(shm).unwrap();
            interleaved(
                &mut figures,
                in_memory.path(),
                "tmpfs",
                rounds * 10,
                &runtime,
            );
        }
    }
    if measured {
        report(&settings, &figures);
    }
}

/// Time `rounds` rounds of: one fsync, then each batch size through raw redb and through the
/// store, in files under `dir`.
fn interleaved(
    figures: &mut Vec<Figure>,
    dir: &Path,
    name: &str,
    rounds: usize,
    runtime: &tokio::runtime::Runtime,
) {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("fsync"))
        .unwrap();
    let page = vec![1u8; 4096];
    let db = raw_database(&dir.join("raw.redb"));
    let store = RedbStore::open_in_dir(dir.join("courier")).unwrap();
    let payload = Bytes::from(vec![b'p'; PAYLOAD]);
    let mut next = 0u64;
    let mut fsyncs = Vec::new();
    let mut raw: Vec<Vec<f64>> = vec![Vec::new(); BATCHES.len()];
    let mut courier: Vec<Vec<f64>> = vec![Vec::new(); BATCHES.len()];
    for _ in 0..rounds {
        let start = Instant::now();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(&page).unwrap();
        file.sync_data().unwrap();
        fsyncs.push(start.elapsed().as_nanos() as f64);
        for (i, batch) in BATCHES.into_iter().enumerate() {
            let first = next;
            let values: Vec<(u64, Vec<u8>)> = (first..first + batch as u64)
                .map(|n| (n, record_value(n, &payload)))
                .collect();
            let start = Instant::now();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(MAILBOX).unwrap();
                for (position, value) in &values {
                    table.insert((ACTOR, *position), value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            raw[i].push(start.elapsed().as_nanos() as f64);

            let entries: Vec<Entry> = (first..first + batch as u64)
                .map(|n| Entry::new(ACTOR, SENDER, Kind::Message, payload.clone()).with_seq(n + 1))
                .collect();
            let start = Instant::now();
            runtime.block_on(store.append(entries)).unwrap();
            courier[i].push(start.elapsed().as_nanos() as f64);
            next += batch as u64;
        }
    }
    let fsync_key = format!("{name}-fsync");
    figures.push(Figure {
        key: fsync_key.clone(),
        label: format!("{name}, interleaved ({rounds} rounds): fsync"),
        nanos: median(fsyncs),
        vs: None,
    });
    for (i, batch) in BATCHES.into_iter().enumerate() {
        let ratios: Vec<f64> = courier[i].iter().zip(&raw[i]).map(|(c, r)| c / r).collect();
        let ratio = median(ratios).unwrap_or(f64::NAN);
        figures.push(Figure {
            key: format!("{name}-raw-{batch}"),
            label: format!("{name}, interleaved: raw redb, {batch} per commit"),
            nanos: median(raw[i].clone()),
            vs: Some(fsync_key.clone()),
        });
        figures.push(Figure {
            key: format!("{name}-append-{batch}"),
            label: format!(
                "{name}, interleaved: RedbStore::append, {batch} per call (median ratio of rounds {ratio:.2}x)"
            ),
            nanos: median(courier[i].clone()),
            vs: Some(format!("{name}-raw-{batch}")),
        });
    }
}

/// A redb database configured as `RedbStore` configures its own (the cache size is the one
/// setting that differs from redb's defaults and matters to a commit).
fn raw_database(path: &Path) -> redb::Database {
    redb::Database::builder()
        .set_cache_size(64 * 1024 * 1024)
        .create(path)
        .unwrap()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Print the figures with their ratios, and write them for `bench-report`.
fn report(settings: &Settings, figures: &[Figure]) {
    if !settings.recording {
        return;
    }
    let value = |key: &str| figures.iter().find(|f| f.key == key).and_then(|f| f.nanos);
    let mut table = String::from("\nstore: median per batch\n");
    let mut tsv = format!(
        "# bench store\n# settings {} ({} samples)\n",
        if settings.quick { "quick" } else { "full" },
        settings.sample_size
    );
    for figure in figures {
        let ratio = match (&figure.vs, figure.nanos) {
            (Some(vs), Some(nanos)) => value(vs).map(|base| format!("{:.2}x {vs}", nanos / base)),
            _ => None,
        };
        let _ = writeln!(
            table,
            "  {:<100} {:>10} {}",
            figure.label,
            figure
                .nanos
                .map_or_else(|| "-".to_string(), |n| format!("{:.1} µs", n / 1000.0)),
            ratio.unwrap_or_default()
        );
        let _ = writeln!(
            tsv,
            "{}\t{}\t{}\tns\t{}\t{}\t",
            figure.key,
            figure.label,
            figure
                .nanos
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            figure.vs.as_deref().unwrap_or(""),
            if figure.vs.is_some() { "1" } else { "" }
        );
    }
    println!("{table}");
    let dir = target_dir().join("bench-results");
    let path = dir.join("store.tsv");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, tsv)) {
        Ok(()) => println!("figures written to {}", path.display()),
        Err(err) => eprintln!("could not write {}: {err}", path.display()),
    }
}
