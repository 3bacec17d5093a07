//! The HTTP server's bounds, against a real broker and real sockets: a client that is slow
//! with its headers or its body, or that opens connections and leaves them idle, cannot hold
//! the ingress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use courier_cli::ingress::{IngressConfig, router};
use courier_cli::server::{ServerLimits, serve};
use courier_host_broker::{Broker, ComponentSpec};
use courier_host_core::{Engine, EngineConfig};
use courier_test_support::guest_path;

const LIMIT: Duration = Duration::from_millis(300);

/// Reads until the server closes the connection or five seconds pass; returns what it sent
/// and how long it took to close.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let engine = Engine::new(EngineConfig::default().max_instances(4)).unwrap();
    let broker = Broker::new(engine.clone());
    let echo = engine
        .load_component_file("echo", guest_path("echo"))
        .unwrap();
    broker
        .spawn(ComponentSpec::new("echo", echo))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = ServerLimits::default()
        .header_timeout(LIMIT)
        .body_timeout(LIMIT)
        .max_connections(3);
    let app = router(broker.clone(), IngressConfig::new(address));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, limits, async {
        let _ = stopped.await;
    }));
    let host = format!("Host: {address}\r\n");

    let outcome = tokio::task::spawn_blocking(move || {
        // Headers that never end: the connection is closed after the header timeout.
        let mut slow_headers = TcpStream::connect(address).unwrap();
        write!(slow_headers, "POST /components/echo/requests HTTP/1.1\r\n{host}").unwrap();
        let (_, took) = read_until_closed(&mut slow_headers);
        assert!(took < Duration::from_secs(3), "slow headers held for {took:?}");

        // A body that stops half-way: the request fails after the body timeout.
        let mut slow_body = TcpStream::connect(address).unwrap();
        write!(
            slow_body,
            "POST /components/echo/requests HTTP/1.1\r\n{host}Content-Length: 100\r\n\r\nhalf"
        )
        .unwrap();
        let (answer, took) = read_until_closed(&mut slow_body);
        assert!(took < Duration::from_secs(3), "slow body held for {took:?}");
        assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

        // Three idle connections take every slot (they are accepted in the order they
        // connected): a fourth is closed without an answer, though it asks properly.
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(address).unwrap()).collect();
        let mut extra = TcpStream::connect(address).unwrap();
        let _ = write!(
            extra,
            "POST /components/echo/requests HTTP/1.1\r\n{host}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let (answer, _) = read_until_closed(&mut extra);
        assert!(answer.is_empty(), "answered over the cap: {answer:?}");

        // Once the idle ones are cut off by the header timeout, the ingress answers again.
        std::thread::sleep(LIMIT * 3);
        drop(idle);
        let mut fine = TcpStream::connect(address).unwrap();
        write!(
            fine,
            "POST /components/echo/requests HTTP/1.1\r\n{host}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        .unwrap();
        let (answer, _) = read_until_closed(&mut fine);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome.unwrap();
}
