//! Messages leaving one real wasm component and arriving in another.

use crate::common::{SECOND, Setup};

/// Pong's figures: how many messages it received and how many arrived out of order.
async fn pong_figures(setup: &Setup, id: &str) -> (u64, u64) {
    let reply = setup
        .broker
        .request(id, Vec::new(), 10 * SECOND)
        .await
        .unwrap();
    let count = u64::from_le_bytes(reply[..8].try_into().unwrap());
    let out_of_order = u64::from_le_bytes(reply[8..16].try_into().unwrap());
    (count, out_of_order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_ping_reach_pong_in_order() {
    let setup = Setup::new();
    setup
        .spawn(setup.spec("pong", "pong").mailbox_capacity(10_000))
        .await;
    setup
        .spawn(setup.spec("ping", "ping").may_send("pong"))
        .await;

    setup.broker.send("ping", b"10000".to_vec()).unwrap();
    setup.assert_accounted().await;

    assert_eq!(pong_figures(&setup, "pong").await, (10_000, 0));
    let pong = setup.broker.metrics("pong").unwrap();
    assert_eq!(
        pong.delivered, 10_001,
        "10,000 messages and the request for the figures"
    );
    assert!(pong.latency.p50.is_some());
    assert_eq!(setup.broker.accounting().dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_components_exchanging_messages_account_for_every_one() {
    let setup = Setup::new();
    // Fifty pings each send 1,000 messages to one of fifty pongs; every pong receives from
    // two pings, so its own count is 2,000 and per-sender order is all it can check.
    for i in 0..50 {
        let pong = setup
            .spec(&format!("pongs/{i}"), "pong")
            .mailbox_capacity(512);
        setup.spawn(pong).await;
    }
    for i in 0..50 {
        let ping = setup
            .spec(&format!("pings/{i}"), "ping")
            .may_send("pongs/*");
        setup.spawn(ping).await;
    }
    // Fifty pongs with mailboxes of 512 and two senders each, sending 1,000 apiece: some
    // sends meet a full mailbox. Those are refused to ping (counted), never lost.
    for i in 0..50 {
        for target in [i, (i + 1) % 50] {
            let order = format!("1000@pongs/{target}");
            setup
                .broker
                .send(&format!("pings/{i}"), order.into_bytes())
                .unwrap();
        }
    }
    setup.assert_accounted().await;
    let books = setup.broker.accounting();
    // 100 orders from the host and 100,000 attempts by the pings.
    assert_eq!(books.sent, 100 + 100_000);
    let mut received = 0;
    for i in 0..50 {
        let (count, out_of_order) = pong_figures(&setup, &format!("pongs/{i}")).await;
        assert_eq!(
            out_of_order, 0,
            "pongs/{i} saw a sender's messages out of order"
        );
        received += count;
    }
    let pong_deliveries: u64 = setup
        .broker
        .all_metrics()
        .iter()
        .filter(|m| m.id.starts_with("pongs/"))
        .map(|m| m.delivered)
        .sum();
    assert_eq!(
        pong_deliveries,
        received + 50,
        "every delivery was counted by a pong"
    );
    assert_eq!(books.refused + received, 100_000, "{books:?}");
}
