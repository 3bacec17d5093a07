//! Requests over the store's bounds are refused, naming the bound, and store nothing.

use std::time::SystemTime;

use bytes::Bytes;
use courier_host_store::limits::{
    MAX_ID_BYTES, MAX_PAYLOAD_BYTES, MAX_STATE_BYTES, MAX_TIMERS_PER_ACTOR,
};
use courier_host_store::{Batch, Bound, Entry, Kind, Outgoing, Store, StoreError, Timer};

use crate::support::{entry, fresh};

fn bound_of(err: StoreError) -> (Bound, usize, usize) {
    let text = err.to_string();
    match err {
        StoreError::TooLarge {
            bound,
            found,
            limit,
            path,
        } => {
            assert!(text.contains(&path.display().to_string()), "{text}");
            (bound, found, limit)
        }
        other => panic!("expected TooLarge, got {other}"),
    }
}

#[tokio::test]
async fn ids_payloads_states_and_timers_over_their_bounds_are_refused() {
    let (store, _dir) = fresh();
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let fits = "x".repeat(MAX_ID_BYTES);

    let err = store.append(vec![entry(&long, "s", 1)]).await.unwrap_err();
    assert_eq!(bound_of(err), (Bound::Id, MAX_ID_BYTES + 1, MAX_ID_BYTES));
    let err = store.append(vec![entry("a", &long, 1)]).await.unwrap_err();
    assert_eq!(bound_of(err).0, Bound::Id);
    store.append(vec![entry(&fits, &fits, 1)]).await.unwrap();

    let huge = Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1]);
    // One entry over the bound refuses the whole append: nothing of it is stored.
    let err = store
        .append(vec![
            entry("a", "s", 1),
            Entry::new("a", "s", Kind::Message, huge.clone()),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        bound_of(err),
        (Bound::Payload, MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES)
    );
    assert!(store.load("a").await.unwrap().mailbox.is_empty());

    let mut batch = Batch::new("a");
    batch.state = Some(Bytes::from(vec![0u8; MAX_STATE_BYTES + 1]));
    let err = store.commit(batch).await.unwrap_err();
    assert_eq!(
        bound_of(err),
        (Bound::State, MAX_STATE_BYTES + 1, MAX_STATE_BYTES)
    );

    let mut batch = Batch::new("a");
    batch.produced = vec![Outgoing::new("b", Kind::Message, huge)];
    assert_eq!(
        bound_of(store.commit(batch).await.unwrap_err()).0,
        Bound::Payload
    );
    let mut batch = Batch::new("a");
    batch.produced = vec![Outgoing::new(long.clone(), Kind::Message, &b""[..])];
    assert_eq!(
        bound_of(store.commit(batch).await.unwrap_err()).0,
        Bound::Id
    );
    assert!(store.load("a").await.unwrap().outbox.is_empty());

    let timer = |name: String| Timer {
        actor: "a".to_string(),
        name,
        due: SystemTime::now(),
        period: None,
        payload: Bytes::new(),
    };
    assert_eq!(
        bound_of(store.put_timer(timer(long)).await.unwrap_err()).0,
        Bound::Id
    );
    let puts: Vec<_> = (0..MAX_TIMERS_PER_ACTOR)
        .map(|n| store.put_timer(timer(n.to_string())))
        .collect();
    for put in puts {
        put.await.unwrap();
    }
    // Re-scheduling a name it has is not one more.
    store.put_timer(timer("0".to_string())).await.unwrap();
    let err = store
        .put_timer(timer("one more".to_string()))
        .await
        .unwrap_err();
    assert_eq!(
        bound_of(err),
        (
            Bound::TimersPerActor,
            MAX_TIMERS_PER_ACTOR + 1,
            MAX_TIMERS_PER_ACTOR
        )
    );
    assert_eq!(store.timers("a").await.unwrap().len(), MAX_TIMERS_PER_ACTOR);
}
