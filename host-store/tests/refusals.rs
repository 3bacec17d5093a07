//! A store that cannot be opened is refused, naming the file and the cause, and the file is
//! left as it was: never replaced by an empty store.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use courier_host_store::{FILE_NAME, RedbStore, Store, StoreError};

use crate::support::{PATH_ENV, child_role, entry, spawn_child, wait_for_line};

/// A store with a few entries in it, closed; its file.
fn written_store(dir: &Path) -> PathBuf {
    let store = RedbStore::open_in_dir(dir).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for seq in 1..=20 {
            let mut e = entry("a", "s", seq);
            e.payload = format!("payload-marker-{seq:04}").into();
            store.append(vec![e]).await.unwrap();
        }
    });
    dir.join(FILE_NAME)
}

/// Open `path`, expecting a refusal that names the file.
fn refused(path: &Path) -> StoreError {
    let err = RedbStore::open(path).expect_err("the store is refused");
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "the error names the file: {text}"
    );
    assert_eq!(err.path(), path);
    err
}

/// Open `path`, expecting a refusal, and the file to be exactly as it was: a file redb cannot
/// read is not repaired, rewritten or replaced. (A readable redb file may have its integrity
/// check recorded in its header.)
fn refused_unchanged(path: &Path) -> StoreError {
    let before = fs::read(path).unwrap();
    let err = refused(path);
    if fs::read(path).unwrap() != before {
        panic!("the refused file {} was changed", path.display());
    }
    err
}

#[test]
fn a_file_of_garbage_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&path, garbage).unwrap();
    let err = refused_unchanged(&path);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn a_truncated_file_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_store(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    for keep in [len / 2, 100] {
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(keep).unwrap();
        drop(file);
        let err = refused_unchanged(&path);
        assert!(
            matches!(err, StoreError::Corrupt { .. }),
            "cut to {keep}: {err}"
        );
    }
}

#[test]
fn flipped_bytes_in_stored_records_are_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_store(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let marker = b"payload-marker-0007";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the payload is in the file");
    bytes[at + 3] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let err = refused_unchanged(&path);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn a_store_from_a_newer_format_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_store(dir.path());
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut meta = txn.open_table(meta).unwrap();
            meta.insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = refused(&path);
    assert!(
        matches!(
            err,
            StoreError::Version {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("format version 99"), "{err}");
}

#[test]
fn a_redb_file_that_is_not_a_store_is_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let other: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("other");
            txn.open_table(other).unwrap().insert("x", 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = refused(&path);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not a Courier store"), "{err}");
}

#[test]
fn a_store_open_in_this_process_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let err = RedbStore::open_in_dir(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&store.path().display().to_string())
    );
    drop(store);
    RedbStore::open_in_dir(dir.path()).expect("free again once the first is dropped");
}

/// Child: hold the store open until killed.
#[test]
fn child_holding_the_store() {
    if child_role().as_deref() != Some("hold") {
        return;
    }
    let store = RedbStore::open(std::env::var(PATH_ENV).unwrap()).unwrap();
    println!("open");
    std::thread::sleep(Duration::from_secs(60));
    drop(store);
}

#[test]
fn a_store_open_in_another_process_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_store(dir.path());
    let mut child = spawn_child("refusals::child_holding_the_store", "hold", &path, &[]);
    let _reader = wait_for_line(child.stdout.take().unwrap(), "open");
    let err = refused(&path);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another process"), "{err}");

    // Once the other process is gone, the store opens with everything in it.
    let store = RedbStore::open(&path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let a = runtime.block_on(store.load("a")).unwrap();
    assert_eq!(a.mailbox.len(), 20);
}
