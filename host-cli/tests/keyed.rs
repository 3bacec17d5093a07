//! A keyed component under `courier run`: `cart/<key>` over HTTP, written plainly or with its
//! slash encoded, and one row per keyed component in what the runner reports.

use courier_test_support::guest_path;

use crate::run::{Courier, client, get, json, manifest, post, wait_until_served};

#[test]
fn a_keyed_cart_is_reached_per_key_over_http_and_reported_as_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        &format!(
            r#"
[[component]]
id = "cart"
path = "{counter}"
keyed = true
limits = {{ idle = "5m", max_active = 100 }}
"#,
            counter = guest_path("counter").display(),
        ),
    );
    let courier = Courier::start(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", courier.address());
    let agent = client();

    for url in ["cart/8812", "cart/8812", "cart%2F7"] {
        let (status, body) = post(&agent, &format!("{base}/components/{url}/messages"), b"+1");
        assert_eq!(status, 202, "{url}: {}", String::from_utf8_lossy(&body));
    }
    let (status, body) = post(
        &agent,
        &format!("{base}/components/cart/8812/requests"),
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(u64::from_le_bytes(body.try_into().unwrap()), 2);
    let (status, body) = post(&agent, &format!("{base}/components/cart/7/requests"), b"");
    assert_eq!(status, 200);
    assert_eq!(u64::from_le_bytes(body.try_into().unwrap()), 1);

    let (status, body) = post(
        &agent,
        &format!("{base}/components/cart/a%20b/messages"),
        b"",
    );
    assert_eq!(status, 404, "a refused key");
    assert!(body.windows(4).any(|w| w == b"cart"));

    let (status, listed) = get(&agent, &format!("{base}/components"));
    assert_eq!(status, 200);
    let listed = json(listed.as_bytes());
    let rows = listed.as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "one row for the component, none per key: {listed}"
    );
    assert_eq!(rows[0]["id"], "cart");
    assert_eq!(rows[0]["keyed"]["active"], 2, "{listed}");
    assert_eq!(rows[0]["keyed"]["activations"], 2, "{listed}");
    assert_eq!(rows[0]["delivered"], 5, "{listed}");

    let (status, metrics) = get(&agent, &format!("{base}/metrics"));
    assert_eq!(status, 200);
    assert!(
        metrics.contains("courier_keyed_active_keys{component=\"cart\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("cart/8812"), "no series per key");
}

/// The count in a Prometheus line `name{component="cart"} N`, if it is there.
fn series(metrics: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}{{component=\"cart\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[test]
fn messages_stored_for_a_durable_key_survive_a_sigkill_and_are_handled_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        &format!(
            r#"
[runtime]
cache_dir = "{{cache}}"
drain = "1s"

[[component]]
id = "cart"
path = "{keeper}"
keyed = true
durable = true
limits = {{ deadline = "5s" }}
"#,
            keeper = guest_path("keeper").display(),
        ),
    );
    let args = ["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let mut courier = Courier::start(&args);
    let base = format!("http://{}", courier.address());
    let agent = client();

    // The key's instance sleeps 200 ms in each save of its state (after every message), so
    // most of what is accepted below is stored and still waiting when the run is killed.
    let (status, body) = post(
        &agent,
        &format!("{base}/components/cart/8812/requests"),
        b"save:sleep:200",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    const SENT: u64 = 20;
    for _ in 0..SENT {
        let (status, body) = post(
            &agent,
            &format!("{base}/components/cart/8812/messages"),
            b"item",
        );
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    }
    courier.kill();

    let courier = Courier::start(&args);
    let base = format!("http://{}", courier.address());
    // The key is activated at recovery, before anything is sent to it, and handles what
    // the killed run had accepted.
    let started = std::time::Instant::now();
    loop {
        let (status, metrics) = get(&agent, &format!("{base}/metrics"));
        assert_eq!(status, 200);
        if series(&metrics, "courier_keyed_activations_total") == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the key was not activated at recovery: {metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Each accepted message once: the state holds every payload ("item", 4 bytes each).
    let (status, body) = post(
        &agent,
        &format!("{base}/components/cart/8812/requests"),
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        u64::from_le_bytes(body.try_into().unwrap()),
        SENT * 4,
        "every 202 handled once, across the kill\nstdout:\n{}",
        courier.stdout()
    );
}

const LATTICE_CART: &str = r#"
[runtime]
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "carts"
host = "{host}"
servers = ["{nats}"]

[[component]]
id = "cart"
path = "{counter}"
keyed = true
replicas = true
"#;

/// Two `courier run` hosts serving `cart` over a real nats-server: every key runs on one of
/// them, and an HTTP client reaches it through either, its messages before its request.
#[test]
fn keys_of_a_cart_on_two_hosts_are_reached_over_http_through_either_host() {
    let nats = courier_test_support::nats::NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let body = |host: &str| {
        LATTICE_CART
            .replace("{nats}", &nats.url())
            .replace("{host}", host)
    };
    let (file_a, file_b) = (
        manifest(dir_a.path(), &body("a")),
        manifest(dir_b.path(), &body("b")),
    );
    let listen = ["--listen", "127.0.0.1:0"];
    let a = Courier::start(&[&["run", file_a.to_str().unwrap()][..], &listen[..]].concat());
    let b = Courier::start(&[&["run", file_b.to_str().unwrap()][..], &listen[..]].concat());
    let (address_a, address_b) = (a.address(), b.address());
    let (base_a, base_b) = (format!("http://{address_a}"), format!("http://{address_b}"));
    // Each places keys over both only once it hears the other serve `cart`.
    wait_until_served(&address_a, "cart");
    wait_until_served(&address_b, "cart");
    let agent = client();
    let keys = 40;
    for key in 0..keys {
        for _ in 0..2 {
            let url = format!("{base_a}/components/cart/{key}/messages");
            let (status, body) = post(&agent, &url, b"+1");
            assert_eq!(status, 202, "{url}: {}", String::from_utf8_lossy(&body));
        }
    }
    for key in 0..keys {
        // From host a first: its messages to the key were sent before, so they are in.
        for base in [&base_a, &base_b] {
            let url = format!("{base}/components/cart/{key}/requests");
            let (status, body) = post(&agent, &url, b"");
            assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
            assert_eq!(u64::from_le_bytes(body.try_into().unwrap()), 2, "{url}");
        }
    }
    let active = |base: &str| {
        let (status, listed) = get(&agent, &format!("{base}/components"));
        assert_eq!(status, 200);
        let listed = json(listed.as_bytes());
        listed[0]["keyed"]["active"].as_u64().unwrap()
    };
    let (on_a, on_b) = (active(&base_a), active(&base_b));
    assert_eq!(
        on_a + on_b,
        keys,
        "each key on one host: a {on_a}, b {on_b}"
    );
    assert!(on_a > 0 && on_b > 0, "spread over both: a {on_a}, b {on_b}");
}
