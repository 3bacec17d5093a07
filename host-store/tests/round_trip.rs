//! Every operation, written and read back, across a reopen where it matters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_host_store::limits::{MAX_DEAD_LETTER_PAYLOAD_BYTES, MAX_DEAD_LETTERS};
use courier_host_store::{
    Appended, Batch, DeadLetter, Entry, Kind, Outgoing, RedbStore, Store, Timer, TimerChange,
};

use crate::support::{entry, fresh, number};

#[tokio::test]
async fn appended_entries_come_back_in_order_after_reopen() {
    let (store, dir) = fresh();
    let appended = store
        .append(vec![
            entry("a", "s", 1),
            Entry::new("a", "host", Kind::Request, &b"no seq"[..]),
            entry("b", "s", 1),
            entry("a", "s", 2),
        ])
        .await
        .unwrap();
    let positions: Vec<u64> = appended.iter().map(|a| a.position().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let a = store.load("a").await.unwrap();
    type Row<'a> = (u64, &'a str, Option<u64>, Kind, &'a [u8]);
    let got: Vec<Row> = a
        .mailbox
        .iter()
        .map(|e| (e.position, e.sender.as_str(), e.seq, e.kind, &e.payload[..]))
        .collect();
    assert_eq!(
        got,
        vec![
            (positions[0], "s", Some(1), Kind::Message, &b"1"[..]),
            (positions[1], "host", None, Kind::Request, &b"no seq"[..]),
            (positions[3], "s", Some(2), Kind::Message, &b"2"[..]),
        ]
    );
    assert_eq!(store.load("b").await.unwrap().mailbox.len(), 1);
    assert_eq!(store.stats().mailbox_entries, 4);

    // Positions keep growing after a reopen: a later entry never sorts before an earlier one.
    let later = store.append(vec![entry("a", "s", 3)]).await.unwrap();
    assert!(later[0].position().unwrap() > positions[3]);
    let a = store.load("a").await.unwrap();
    assert_eq!(a.mailbox.last().unwrap().seq, Some(3));
}

#[tokio::test]
async fn a_sequence_number_already_held_is_a_duplicate() {
    let (store, dir) = fresh();
    let first = store
        .append(vec![
            entry("a", "s", 5),
            entry("a", "s", 5),
            entry("a", "t", 5),
        ])
        .await
        .unwrap();
    assert!(matches!(first[0], Appended::Stored { .. }));
    assert_eq!(
        first[1],
        Appended::Duplicate,
        "the same number in one append"
    );
    assert!(
        matches!(first[2], Appended::Stored { .. }),
        "another sender's number is its own"
    );
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let again = store
        .append(vec![
            entry("a", "s", 4),
            entry("a", "s", 5),
            entry("a", "s", 6),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], Appended::Duplicate, "an older number");
    assert_eq!(
        again[1],
        Appended::Duplicate,
        "the same number after a reopen"
    );
    assert!(matches!(again[2], Appended::Stored { .. }));
    // Entries without a number are never duplicates.
    let plain = Entry::new("a", "s", Kind::Message, &b"x"[..]);
    let plain = store.append(vec![plain.clone(), plain]).await.unwrap();
    assert!(plain.iter().all(|a| a.position().is_some()));

    // The mark outlives the entry: consuming it does not let it in again.
    let loaded = store.load("a").await.unwrap();
    let mut batch = Batch::new("a");
    batch.consumed = loaded.mailbox.iter().map(|e| e.position).collect();
    store.commit(batch).await.unwrap();
    let after = store.append(vec![entry("a", "s", 6)]).await.unwrap();
    assert_eq!(after[0], Appended::Duplicate);
}

#[tokio::test]
async fn a_commit_consumes_saves_state_and_fills_the_outbox_in_one_transaction() {
    let (store, dir) = fresh();
    let appended = store
        .append((1..=3).map(|n| entry("ping", "host", n)).collect())
        .await
        .unwrap();

    let mut batch = Batch::new("ping");
    batch.consumed = vec![
        appended[0].position().unwrap(),
        appended[1].position().unwrap(),
    ];
    batch.state = Some(Bytes::from_static(b"handled 2"));
    batch.produced = vec![
        Outgoing::new("pong", Kind::Message, &b"1"[..]),
        Outgoing::new("news", Kind::Publication, &b"2"[..]),
    ];
    let committed = store.commit(batch).await.unwrap();
    assert_eq!(committed.produced.len(), 2);
    assert!(committed.produced[0] < committed.produced[1]);
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let ping = store.load("ping").await.unwrap();
    assert_eq!(ping.state.as_deref(), Some(&b"handled 2"[..]));
    assert_eq!(ping.mailbox.len(), 1);
    assert_eq!(number(&ping.mailbox[0].payload), 3);
    let outbox: Vec<(u64, &str, Kind, &[u8])> = ping
        .outbox
        .iter()
        .map(|o| (o.seq, o.destination.as_str(), o.kind, &o.payload[..]))
        .collect();
    assert_eq!(
        outbox,
        vec![
            (committed.produced[0], "pong", Kind::Message, &b"1"[..]),
            (committed.produced[1], "news", Kind::Publication, &b"2"[..]),
        ]
    );

    // A commit that leaves the state as it is.
    let mut batch = Batch::new("ping");
    batch.consumed = vec![ping.mailbox[0].position];
    store.commit(batch).await.unwrap();
    let ping = store.load("ping").await.unwrap();
    assert_eq!(ping.state.as_deref(), Some(&b"handled 2"[..]));
    assert!(ping.mailbox.is_empty());
    assert_eq!(store.stats().mailbox_entries, 0);
    assert_eq!(store.stats().outbox_entries, 2);
}

#[tokio::test]
async fn delivered_outbox_entries_are_removed_and_sequence_numbers_only_grow() {
    let (store, _dir) = fresh();
    let mut batch = Batch::new("ping");
    batch.produced = (0..3)
        .map(|n| Outgoing::new("pong", Kind::Message, Bytes::from(n.to_string())))
        .collect();
    let first = store.commit(batch).await.unwrap().produced;

    let mut batch = Batch::new("ping");
    batch.delivered = vec![first[0], first[1]];
    batch.produced = vec![Outgoing::new("pong", Kind::Message, &b"3"[..])];
    let second = store.commit(batch).await.unwrap().produced;
    assert!(second[0] > first[2]);

    let outbox: Vec<u64> = store
        .load("ping")
        .await
        .unwrap()
        .outbox
        .iter()
        .map(|o| o.seq)
        .collect();
    assert_eq!(outbox, vec![first[2], second[0]]);

    // Forgotten and made again, the actor's numbers still only grow: receivers keep the
    // highest number they saw from it.
    store.forget("ping").await.unwrap();
    let mut batch = Batch::new("ping");
    batch.produced = vec![Outgoing::new("pong", Kind::Message, &b"4"[..])];
    let third = store.commit(batch).await.unwrap().produced;
    assert!(third[0] > second[0]);
}

#[tokio::test]
async fn recovery_gives_every_actor_its_unconsumed_entries_in_order() {
    let (store, dir) = fresh();
    // Interleaved appends to many actors, some consumed, from concurrent callers.
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for actor in 0..20u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("actor-{actor}");
            let mut positions = Vec::new();
            for seq in 1..=30 {
                let appended = store.append(vec![entry(&name, "s", seq)]).await.unwrap();
                positions.push(appended[0].position().unwrap());
            }
            let mut batch = Batch::new(&name);
            batch.consumed = positions[..actor as usize].to_vec();
            batch.state = Some(Bytes::from(actor.to_string()));
            store.commit(batch).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let actors = store.actors().await.unwrap();
    assert_eq!(actors.len(), 20);
    for actor in 0..20u64 {
        let name = format!("actor-{actor}");
        assert!(actors.contains(&name));
        let recovered = store.load(&name).await.unwrap();
        let seqs: Vec<u64> = recovered.mailbox.iter().map(|e| e.seq.unwrap()).collect();
        assert_eq!(seqs, (actor + 1..=30).collect::<Vec<_>>(), "{name}");
        assert_eq!(number(recovered.state.as_deref().unwrap()), actor);
    }
}

#[tokio::test]
async fn forget_removes_everything_of_one_actor_only() {
    let (store, _dir) = fresh();
    for actor in ["a", "ab", "b"] {
        store.append(vec![entry(actor, "s", 1)]).await.unwrap();
        let mut batch = Batch::new(actor);
        batch.state = Some(Bytes::from_static(b"state"));
        batch.produced = vec![Outgoing::new("x", Kind::Message, &b"o"[..])];
        store.commit(batch).await.unwrap();
        store.put_timer(timer(actor, "tick", None)).await.unwrap();
    }
    store.forget("a").await.unwrap();

    assert_eq!(store.actors().await.unwrap(), vec!["ab", "b"]);
    let a = store.load("a").await.unwrap();
    assert_eq!(a, Default::default());
    for actor in ["ab", "b"] {
        let kept = store.load(actor).await.unwrap();
        assert_eq!(kept.mailbox.len(), 1, "{actor}");
        assert_eq!(kept.outbox.len(), 1, "{actor}");
        assert_eq!(kept.timers.len(), 1, "{actor}");
        assert!(kept.state.is_some(), "{actor}");
    }
    // Its marks went too: the same numbers are new again.
    let again = store.append(vec![entry("a", "s", 1)]).await.unwrap();
    assert!(again[0].position().is_some());
    assert_eq!(store.stats().mailbox_entries, 3);
    assert_eq!(store.stats().outbox_entries, 2);
}

fn timer(actor: &str, name: &str, period: Option<Duration>) -> Timer {
    Timer {
        actor: actor.to_string(),
        name: name.to_string(),
        due: UNIX_EPOCH + Duration::from_millis(1_900_000_000_123),
        period,
        payload: Bytes::from(format!("{actor}/{name}")),
    }
}

#[tokio::test]
async fn timers_are_put_replaced_listed_and_cancelled() {
    let (store, dir) = fresh();
    store.put_timer(timer("a", "once", None)).await.unwrap();
    store
        .put_timer(timer("a", "tick", Some(Duration::from_secs(1))))
        .await
        .unwrap();
    store
        .put_timer(timer("a", "tick", Some(Duration::from_secs(5))))
        .await
        .unwrap();
    store.put_timer(timer("b", "tick", None)).await.unwrap();
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let timers = store.timers("a").await.unwrap();
    assert_eq!(
        timers,
        vec![
            timer("a", "once", None),
            timer("a", "tick", Some(Duration::from_secs(5)))
        ]
    );
    assert_eq!(store.load("a").await.unwrap().timers, timers);
    assert!(store.cancel_timer("a", "once").await.unwrap());
    assert!(!store.cancel_timer("a", "once").await.unwrap());
    assert_eq!(store.timers("a").await.unwrap().len(), 1);
    assert_eq!(store.timers("b").await.unwrap().len(), 1);
}

#[tokio::test]
async fn timer_changes_commit_with_their_batch_and_its_state() {
    let (store, dir) = fresh();
    store.put_timer(timer("a", "once", None)).await.unwrap();
    let stored = store.append(vec![entry("a", "s", 1)]).await.unwrap();
    let mut batch = Batch::new("a");
    batch.consumed.push(stored[0].position().unwrap());
    batch.state = Some(Bytes::from_static(b"after"));
    // The actor field of a timer in a batch is not read: the batch's actor owns it.
    batch.timers = vec![
        TimerChange::Put(timer("someone else", "tick", Some(Duration::from_secs(1)))),
        TimerChange::Cancel("once".to_string()),
        TimerChange::Cancel("never was".to_string()),
    ];
    store.commit(batch).await.unwrap();
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let a = store.load("a").await.unwrap();
    assert_eq!(a.state.as_deref(), Some(&b"after"[..]));
    assert!(a.mailbox.is_empty());
    let mut tick = timer("a", "tick", Some(Duration::from_secs(1)));
    tick.payload = Bytes::from("someone else/tick");
    assert_eq!(a.timers, vec![tick]);
    assert!(store.timers("someone else").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_timer_is_never_read_back_earlier_than_it_was_put() {
    let (store, _dir) = fresh();
    let due = UNIX_EPOCH + Duration::from_nanos(1_900_000_000_123_000_001);
    let mut early = timer("a", "t", None);
    early.due = due;
    store.put_timer(early).await.unwrap();
    let kept = store.timers("a").await.unwrap();
    assert!(kept[0].due >= due, "{:?} < {due:?}", kept[0].due);
    assert_eq!(
        kept[0].due,
        UNIX_EPOCH + Duration::from_millis(1_900_000_000_124)
    );
}

fn letter(n: usize, payload: Bytes) -> DeadLetter {
    DeadLetter {
        sender: "sender".to_string(),
        target: format!("target-{n}"),
        kind: Kind::Request,
        payload_len: payload.len() as u64,
        payload,
        reason: "the handler trapped".to_string(),
        at: SystemTime::UNIX_EPOCH + Duration::from_millis(n as u64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_bounded_the_oldest_dropped_and_counted() {
    let (store, dir) = fresh();
    let big = Bytes::from(vec![7u8; 5000]);
    store.dead_letter(letter(0, big)).await.unwrap();
    let store = std::sync::Arc::new(store);
    let writes: Vec<_> = (1..=MAX_DEAD_LETTERS)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.dead_letter(letter(n, Bytes::new())).await })
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    drop(store);

    let store = RedbStore::open_in_dir(dir.path()).unwrap();
    let kept = store.dead_letters().await.unwrap();
    assert_eq!(kept.letters.len(), MAX_DEAD_LETTERS);
    assert_eq!(kept.dropped, 1);
    assert!(kept.letters.iter().all(|l| l.target != "target-0"));

    // The payload is cut, its length kept.
    store
        .dead_letter(letter(1, Bytes::from(vec![1u8; 5000])))
        .await
        .unwrap();
    let kept = store.dead_letters().await.unwrap();
    let last = kept.letters.last().unwrap();
    assert_eq!(last.payload.len(), MAX_DEAD_LETTER_PAYLOAD_BYTES);
    assert_eq!(last.payload_len, 5000);
    assert_eq!(last.reason, "the handler trapped");
    assert_eq!(last.kind, Kind::Request);
    assert_eq!(last.at, SystemTime::UNIX_EPOCH + Duration::from_millis(1));
    assert_eq!(kept.dropped, 2);
}

#[tokio::test]
async fn stats_count_entries_commits_and_the_file() {
    let (store, _dir) = fresh();
    assert_eq!(store.stats().commits, 0);
    let appended = store
        .append(vec![entry("a", "s", 1), entry("a", "s", 2)])
        .await
        .unwrap();
    let mut batch = Batch::new("a");
    batch.consumed = vec![appended[0].position().unwrap()];
    batch.produced = vec![Outgoing::new("b", Kind::Message, &b"x"[..])];
    store.commit(batch).await.unwrap();

    let stats = store.stats();
    assert_eq!(stats.mailbox_entries, 1);
    assert_eq!(stats.outbox_entries, 1);
    assert_eq!(stats.commits, 2);
    assert_eq!(stats.writes, 2);
    assert!(stats.last_commit > Duration::ZERO);
    assert!(stats.mean_commit > Duration::ZERO);
    assert!(stats.file_bytes > 0);
}
