//! A disk that fills fails writes with `Full`, and nothing acknowledged before is lost.

use bytes::Bytes;
use courier_host_store::{Entry, Kind, RedbStore, Store, StoreError};

use crate::support::{PATH_ENV, child_role, lines_with, number, spawn_child};

const LIMIT_ENV: &str = "COURIER_STORE_FILE_LIMIT";

/// Child: under a file size limit, append 32 KiB entries until the store says it is full.
#[test]
fn child_filling_the_disk() {
    if child_role().as_deref() != Some("full") {
        return;
    }
    let limit: u64 = std::env::var(LIMIT_ENV).unwrap().parse().unwrap();
    // A write past RLIMIT_FSIZE fails with EFBIG once SIGXFSZ, which would kill the process,
    // is ignored: the same error path as a full disk.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit), 0);
    }
    let store = RedbStore::open(std::env::var(PATH_ENV).unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let payload = vec![b'x'; 32 * 1024];
        for seq in 1.. {
            let mut entry = Entry::new("a", "s", Kind::Message, payload.clone()).with_seq(seq);
            entry.payload = Bytes::from([seq.to_string().as_bytes(), b":", &payload].concat());
            match store.append(vec![entry]).await {
                Ok(_) => println!("ack {seq}"),
                Err(err) => {
                    let full = matches!(err, StoreError::Full { .. });
                    println!("error {} {err}", if full { "full" } else { "other" });
                    // The store takes nothing more, and says so the same way.
                    let again = store.append(vec![Entry::new("a", "s", Kind::Message, &b"x"[..])]);
                    let again = again.await.unwrap_err();
                    println!("again {}", matches!(again, StoreError::Full { .. }));
                    break;
                }
            }
        }
    });
    println!("done");
}

fn seq_of(payload: &[u8]) -> u64 {
    let end = payload.iter().position(|&b| b == b':').unwrap();
    number(&payload[..end])
}

#[test]
fn a_full_disk_fails_writes_with_full_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(courier_host_store::FILE_NAME);
    drop(RedbStore::open(&path).unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    let limit = size + 2 * 1024 * 1024;

    let limit = [(LIMIT_ENV, limit.to_string())];
    let mut child = spawn_child("full::child_filling_the_disk", "full", &path, &limit);
    let lines = lines_with(child.stdout.take().unwrap(), "");
    let status = child.wait().unwrap();
    assert!(status.success(), "the child failed: {lines:?}");
    let error = lines
        .iter()
        .find(|l| l.starts_with("error "))
        .expect("the store filled");
    assert!(error.starts_with("error full "), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(lines.contains(&"again true".to_string()), "{lines:?}");
    let acked: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(acked.len() > 10, "only {} entries fit", acked.len());

    let store = RedbStore::open(&path).expect("the store opens again without the limit");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stored: Vec<u64> = runtime
        .block_on(store.load("a"))
        .unwrap()
        .mailbox
        .iter()
        .map(|e| seq_of(&e.payload))
        .collect();
    assert_eq!(stored, acked, "every acknowledged entry, and only those");
    // And it takes writes again.
    runtime
        .block_on(store.append(vec![Entry::new("a", "s", Kind::Message, &b"more"[..])]))
        .unwrap();
}
