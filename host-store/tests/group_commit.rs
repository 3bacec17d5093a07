//! Writes that arrive while a commit runs share the next one.

use std::sync::Arc;

use courier_host_store::{Entry, Kind, Store};

use crate::support::fresh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let (store, _dir) = fresh();
    let store = Arc::new(store);
    let appends = 2000;
    let tasks: Vec<_> = (0..appends)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(vec![Entry::new(
                        format!("actor-{}", n % 50),
                        "s",
                        Kind::Message,
                        n.to_string(),
                    )])
                    .await
            })
        })
        .collect();
    for task in tasks {
        let appended = task.await.unwrap().unwrap();
        assert!(appended[0].position().is_some());
    }
    let stats = store.stats();
    assert_eq!(stats.writes, appends);
    assert_eq!(stats.mailbox_entries, appends);
    assert!(
        stats.commits < appends / 4,
        "{} appends took {} commits",
        appends,
        stats.commits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_queue_bound_wait_for_room_and_all_complete() {
    let (store, _dir) = fresh();
    let store = Arc::new(store);
    let appends = 2 * courier_host_store::limits::MAX_QUEUED_WRITES as u64;
    let tasks: Vec<_> = (0..appends)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(vec![Entry::new("a", "s", Kind::Message, n.to_string())])
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.mailbox_entries, appends);
    assert!(
        stats.commits >= 2,
        "the queue held at most half of them at once"
    );
}
