//! Loads the echo and counter components and shows messages going in and replies coming out.
//!
//! Run with `cargo xtask demo`, which builds the guests first.

use std::time::{Duration, Instant};

use courier_host_core::{Engine, EngineConfig, InstanceOptions};
use courier_test_support::guest_path;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(EngineConfig::default())?;
    println!("engine ready ({:?} allocation)", engine.allocation());

    let started = Instant::now();
    let echo = engine.load_component_file("echo", guest_path("echo"))?;
    let counter = engine.load_component_file("counter", guest_path("counter"))?;
    println!("loaded echo and counter in {:?}", started.elapsed());

    let options = |id: &str| InstanceOptions::new(id).deadline(Duration::from_millis(100));
    let mut echo = echo.instantiate(options("echo")).await?;
    let mut counter = counter.instantiate(options("counter")).await?;

    for text in ["hello", "courier", ""] {
        let reply = echo.call_handle_request("demo", text.as_bytes()).await?;
        match reply {
            Ok(bytes) => println!(
                "echo    <- {text:?}  -> {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(err) => println!("echo    <- {text:?}  -> handler error {err:?}"),
        }
    }

    let started = Instant::now();
    let messages = 10_000;
    for _ in 0..messages {
        counter.call_handle_message("demo", b"tick").await??;
    }
    let elapsed = started.elapsed();
    let count = counter.call_handle_request("demo", b"").await??;
    let count = u64::from_le_bytes(count.as_slice().try_into()?);
    println!(
        "counter <- {messages} messages in {elapsed:?} ({:.0} ns each); it counted {count}",
        elapsed.as_nanos() as f64 / f64::from(messages)
    );
    Ok(())
}
