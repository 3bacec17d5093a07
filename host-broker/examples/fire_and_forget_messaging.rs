//! Ping sends 10,000 numbered messages to pong, wasm to wasm, through the broker.
//!
//! The host sends one message to `ping` ("10000"); ping's handler calls `send-message`
//! 10,000 times with the numbers 0..10,000; the broker pushes each into pong's
//! `handle-message`. Pong counts them and checks their order; the host asks pong for its
//! figures at the end. Run with `cargo xtask demo`.

use std::time::{Duration, Instant};

use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_test_support::guest_path;

const MESSAGES: u64 = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(EngineConfig::default())?;
    let broker = Broker::new(engine.clone());

    let ping = engine.load_component_file("ping", guest_path("ping"))?;
    let pong = engine.load_component_file("pong", guest_path("pong"))?;
    // Ping sends all its messages within one handler call, so pong's mailbox must hold
    // them all: a smaller one would answer ping with mailbox-full.
    broker
        .spawn(ComponentSpec::new("pong", pong).mailbox_capacity(MESSAGES as usize))
        .await?;
    broker
        .spawn(ComponentSpec::new("ping", ping).may_send("pong"))
        .await?;
    println!(
        "spawned ping and pong ({:?} allocation)",
        engine.allocation()
    );

    let started = Instant::now();
    broker.send("ping", MESSAGES.to_string().into_bytes())?;
    if !broker.quiesce(Duration::from_secs(60)).await {
        return Err("messages still in flight after a minute".into());
    }
    let elapsed = started.elapsed();

    let figures = broker
        .request("pong", Vec::new(), Duration::from_secs(5))
        .await?;
    let received = u64::from_le_bytes(figures[..8].try_into()?);
    let out_of_order = u64::from_le_bytes(figures[8..16].try_into()?);
    println!("pong received {received} of {MESSAGES} messages");
    println!(
        "in order: {}",
        if out_of_order == 0 {
            "yes".to_string()
        } else {
            format!("no, {out_of_order} out of order")
        }
    );
    println!(
        "{:.0} messages per second ({:.2} µs per message, wasm to wasm)",
        MESSAGES as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / MESSAGES as f64
    );

    let books = broker.accounting();
    println!(
        "accounting: {} sent, {} delivered, {} refused, {} dead-lettered",
        books.sent, books.delivered, books.refused, books.dead_lettered
    );
    let report = broker.shutdown(Duration::from_secs(1)).await;
    println!(
        "shutdown: {} components stopped, {} undelivered",
        report.stopped.len(),
        report.undelivered.len()
    );
    Ok(())
}
