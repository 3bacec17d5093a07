//! The native floor: what the same message costs between two tokio tasks, with no wasm.

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

/// Capacity of the floor's channels, the broker's default mailbox capacity.
const CAPACITY: usize = 1024;

/// Send `count` messages of `payload.len()` bytes from one task to another over a bounded
/// tokio mpsc channel and return the time from the first send to the last receive.
///
/// Each message is a fresh `Vec<u8>`, as a message sent through Courier is: the sender
/// allocates it and the receiver drops it.
pub fn mpsc_messages(runtime: &Runtime, count: u64, payload: &[u8]) -> Duration {
    let payload = payload.to_vec();
    runtime.block_on(async move {
        let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(CAPACITY);
        let (started_tx, started_rx) = oneshot::channel();
        let consumer = tokio::spawn(async move {
            let mut received = 0u64;
            let mut bytes = 0usize;
            while received < count {
                match receiver.recv().await {
                    Some(message) => {
                        bytes += message.len();
                        received += 1;
                    }
                    None => break,
                }
            }
            std::hint::black_box(bytes);
            Instant::now()
        });
        let producer = tokio::spawn(async move {
            let _ = started_tx.send(Instant::now());
            for _ in 0..count {
                if sender.send(payload.clone()).await.is_err() {
                    break;
                }
            }
        });
        let started = started_rx.await.expect("the producer starts");
        let ended = consumer.await.expect("the consumer finishes");
        producer.await.expect("the producer finishes");
        ended - started
    })
}

/// How a loop of calls is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// One time for the whole loop: nothing but the calls is timed.
    Total,
    /// Every call timed on its own, for percentiles; costs two clock reads per call.
    Each,
}

impl Timing {
    /// Run `call` `count` times and return the times: one for the loop, or one per call.
    pub async fn run(self, count: u64, mut call: impl AsyncFnMut()) -> Vec<Duration> {
        match self {
            Timing::Total => {
                let started = Instant::now();
                for _ in 0..count {
                    call().await;
                }
                vec![started.elapsed()]
            }
            Timing::Each => {
                let mut times = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let started = Instant::now();
                    call().await;
                    times.push(started.elapsed());
                }
                times
            }
        }
    }
}

/// Make `count` request/reply round trips from one task to another, each a request over a
/// bounded mpsc channel carrying a oneshot for the reply, as the broker's requests do, and
/// return their times.
pub fn mpsc_round_trips(
    runtime: &Runtime,
    count: u64,
    payload: &[u8],
    timing: Timing,
) -> Vec<Duration> {
    let payload = payload.to_vec();
    runtime.block_on(async move {
        type Request = (Vec<u8>, oneshot::Sender<Vec<u8>>);
        let (sender, mut receiver) = mpsc::channel::<Request>(CAPACITY);
        let server = tokio::spawn(async move {
            while let Some((request, reply)) = receiver.recv().await {
                let _ = reply.send(request);
            }
        });
        let client = tokio::spawn(async move {
            // Written out rather than through `Timing::run`: a spawned task must be `Send`,
            // which an async closure borrowing the channel cannot yet promise.
            let round_trip = async |sender: &mpsc::Sender<Request>| {
                let (reply, answer) = oneshot::channel();
                sender
                    .send((payload.clone(), reply))
                    .await
                    .expect("the server is running");
                std::hint::black_box(answer.await.expect("the server answers"));
            };
            let mut times = Vec::new();
            let started = Instant::now();
            for _ in 0..count {
                let call_started = Instant::now();
                round_trip(&sender).await;
                if timing == Timing::Each {
                    times.push(call_started.elapsed());
                }
            }
            if timing == Timing::Total {
                times.push(started.elapsed());
            }
            times
        });
        let times = client.await.expect("the client finishes");
        server
            .await
            .expect("the server ends when the client is gone");
        times
    })
}
