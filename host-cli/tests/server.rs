//! The HTTP server's bounds, against a real broker and real sockets: a client that is slow
//! with its headers or its body, or that opens connections and leaves them idle, cannot hold
//! the ingress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use courier_cli::ingress::{IngressConfig, router};
use courier_cli::server::{DEFAULT_HEADER_TIMEOUT, ServerLimits, serve};
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

/// An ingress over a real broker running `echo`, served with `limits` until the sender is
/// used or dropped.
async fn echo_server(
    limits: ServerLimits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    echo_server_with(limits, |config| config).await
}

/// [`echo_server`] with the ingress configured by `configure`.
async fn echo_server_with(
    limits: ServerLimits,
    configure: impl FnOnce(IngressConfig) -> IngressConfig,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
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
    let app = router(broker.clone(), configure(IngressConfig::new(address)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, limits, async {
        let _ = stopped.await;
    }));
    (address, stop, server)
}

/// A request to `echo` that asks the server to close the connection after answering.
fn echo_request(host: &str) -> String {
    format!(
        "POST /components/echo/requests HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let limits = ServerLimits::default()
        .header_timeout(LIMIT)
        .body_timeout(LIMIT)
        .max_connections(3);
    let (address, stop, server) = echo_server(limits).await;
    let host = format!("Host: {address}\r\n");

    let outcome = tokio::task::spawn_blocking(move || {
        // Headers that never end: the connection is closed after the header timeout.
        let mut slow_headers = TcpStream::connect(address).unwrap();
        write!(
            slow_headers,
            "POST /components/echo/requests HTTP/1.1\r\n{host}"
        )
        .unwrap();
        let (_, took) = read_until_closed(&mut slow_headers);
        assert!(
            took < Duration::from_secs(3),
            "slow headers held for {took:?}"
        );

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

        // Three idle connections take every slot, and a fourth sheds the one idle longest:
        // it is answered.
        let idle: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        let mut extra = TcpStream::connect(address).unwrap();
        write!(extra, "{}", echo_request(&address.to_string())).unwrap();
        let (answer, _) = read_until_closed(&mut extra);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        drop(idle);

        // Once the idle ones are cut off by the header timeout, the ingress answers again.
        std::thread::sleep(LIMIT * 3);
        let mut fine = TcpStream::connect(address).unwrap();
        write!(fine, "{}", echo_request(&address.to_string())).unwrap();
        let (answer, _) = read_until_closed(&mut fine);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_newcomer_is_closed_only_when_every_connection_has_a_request_in_flight() {
    // A body timeout long enough that the requests below stay in flight throughout.
    let limits = ServerLimits::default()
        .body_timeout(Duration::from_secs(20))
        .max_connections(3);
    let (address, stop, server) = echo_server(limits).await;
    let host = format!("Host: {address}\r\n");

    let outcome = tokio::task::spawn_blocking(move || {
        // Three requests whose bodies stop half-way: their headers are complete, so each is
        // in flight and none is shed.
        let busy: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut stream = TcpStream::connect(address).unwrap();
                write!(
                    stream,
                    "POST /components/echo/requests HTTP/1.1\r\n{host}Content-Length: 100\r\n\r\nhalf"
                )
                .unwrap();
                stream
            })
            .collect();
        // Until the server has read their headers they count as idle: give it the time.
        std::thread::sleep(Duration::from_millis(500));
        let mut extra = TcpStream::connect(address).unwrap();
        let _ = write!(extra, "{}", echo_request(&address.to_string()));
        let (answer, _) = read_until_closed(&mut extra);
        assert!(answer.is_empty(), "answered over the cap: {answer:?}");

        // Once one of them ends, there is room again.
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut fine = TcpStream::connect(address).unwrap();
            let _ = write!(fine, "{}", echo_request(&address.to_string()));
            let (answer, _) = read_until_closed(&mut fine);
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "no room after the requests ended");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_lock_a_real_client_out() {
    // The defaults: 256 connections, 10 s for a request's headers.
    let (address, stop, server) = echo_server(ServerLimits::default()).await;

    let outcome = tokio::task::spawn_blocking(move || {
        // 500 connections that each send half a request line and fall silent, all held open
        // until the end.
        let flood: Vec<TcpStream> = (0..500)
            .map(|_| {
                let mut stream = TcpStream::connect(address).unwrap();
                let _ = stream.write_all(b"POST /compo");
                stream
            })
            .collect();
        let started = Instant::now();
        let mut client = TcpStream::connect(address).unwrap();
        write!(client, "{}", echo_request(&address.to_string())).unwrap();
        let (answer, took) = read_until_closed(&mut client);
        assert!(answer.starts_with("HTTP/1.1 200"), "not served: {answer:?}");
        assert!(answer.ends_with("hello"), "{answer}");
        // Served while the flood held its connections, well before the header timeout
        // would have freed a place.
        assert!(
            started.elapsed() < DEFAULT_HEADER_TIMEOUT / 2,
            "served after {took:?}"
        );
        drop(flood);
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome.unwrap();
}

/// Sends `component` as the new version of `echo` with the token `t`; the answer.
fn upgrade_echo(address: std::net::SocketAddr, component: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /components/echo/upgrade HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        component.len()
    )
    .unwrap();
    stream.write_all(component).unwrap();
    read_until_closed(&mut stream).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_past_its_compile_time_bound_is_answered_and_its_compile_keeps_the_slot() {
    let (address, stop, server) = echo_server_with(ServerLimits::default(), |config| {
        config
            .token(Some("t".into()))
            .compile_timeout(Duration::from_millis(200))
    })
    .await;
    let outcome = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let answer = upgrade_echo(address, &crate::slow_to_compile_component());
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("compile-timeout"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The compile cannot be interrupted: it keeps the one slot until it ends.
        let counter = std::fs::read(guest_path("counter")).unwrap();
        let answer = upgrade_echo(address, &counter);
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(answer.contains("upgrade-busy"), "{answer}");
    })
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome.unwrap();
}
