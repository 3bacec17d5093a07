//! Traces end to end: two `courier run` processes in a lattice over a real nats-server,
//! exporting over OTLP/HTTP to a receiver in the test that decodes the real protobuf
//! `ExportTraceServiceRequest`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use crate::run::{Courier, STOP_TIMEOUT, client, manifest, post, wait_until_served};

/// One span as the receiver got it, with the host whose resource it came under.
#[derive(Debug, Clone)]
struct Received {
    host: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on a free loopback port: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered with an empty `ExportTraceServiceResponse`.
struct OtlpReceiver {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    posts: Arc<Mutex<usize>>,
    _runtime: tokio::runtime::Runtime,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(0));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let (kept, counted) = (spans.clone(), posts.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let (kept, counted) = (kept.clone(), counted.clone());
                async move {
                    *counted.lock().unwrap() += 1;
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("the exporter posts a valid ExportTraceServiceRequest");
                    let mut kept = kept.lock().unwrap();
                    for resource in request.resource_spans {
                        let resource_attributes =
                            text(&resource.resource.map(|r| r.attributes).unwrap_or_default());
                        let host = resource_attributes
                            .get("service.instance.id")
                            .cloned()
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                kept.push(Received {
                                    host: host.clone(),
                                    trace_id: span.trace_id,
                                    span_id: span.span_id,
                                    parent_span_id: span.parent_span_id,
                                    name: span.name,
                                    attributes: text(&span.attributes),
                                });
                            }
                        }
                    }
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        OtlpReceiver {
            address,
            spans,
            posts,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The spans of trace `trace_id` once there are at least `count`, waiting up to a
    /// generous minute for the exports.
    fn wait_for_trace(&self, trace_id: &[u8], count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span.trace_id == trace_id)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans of trace {} arrived: {spans:#?}\nall: {:#?}",
                spans.len(),
                hex(trace_id),
                self.spans.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

const HOST_A: &str = r#"
[runtime]
listen = "127.0.0.1:1"
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "traces"
host = "a"
servers = ["{nats}"]

[telemetry]
endpoint = "{otlp}"
sampling = 1.0

[[component]]
id = "front"
path = "{probe}"
capabilities = { request = ["middle"] }

[[component]]
id = "back"
path = "{probe}"
expose = true
"#;

/// Host B records only what a sampled trace asks of it: it starts no traces of its own.
const HOST_B: &str = r#"
[runtime]
listen = "127.0.0.1:1"
cache_dir = "{cache}"
drain = "1s"

[lattice]
name = "traces"
host = "b"
servers = ["{nats}"]

[telemetry]
endpoint = "{otlp}"
sampling = 0.0

[[component]]
id = "middle"
path = "{probe}"
capabilities = { request = ["back"] }
expose = true
"#;

/// POST a request with the given headers; status and body.
fn post_with_headers(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let agent = client();
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send(body).expect("the ingress answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_vec().unwrap())
}

#[test]
fn a_request_across_three_components_on_two_hosts_is_one_trace_linked_hop_by_hop() {
    let nats = courier_test_support::nats::NatsServer::start();
    let otlp = OtlpReceiver::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fill = |body: &str| {
        body.replace("{nats}", &nats.url())
            .replace("{otlp}", &otlp.url())
    };
    let file_a = manifest(dir_a.path(), &fill(HOST_A));
    let file_b = manifest(dir_b.path(), &fill(HOST_B));
    let listen = ["--listen", "127.0.0.1:0"];
    let mut b = Courier::start(&[&["run", file_b.to_str().unwrap()][..], &listen[..]].concat());
    let address_b = b.address();
    let mut a = Courier::start(&[&["run", file_a.to_str().unwrap()][..], &listen[..]].concat());
    let address_a = a.address();
    assert!(a.stdout().contains("exporting spans to"), "{}", a.stdout());
    wait_until_served(&address_a, "middle");
    wait_until_served(&address_b, "back");

    // front (host a) asks middle (host b), which asks back (host a), which prints a line.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let (status, reply) = post_with_headers(
        &format!("http://{address_a}/components/front/requests"),
        &[("traceparent", &traceparent)],
        b"ask:middle:ask:back:print:traced-hello",
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&reply).as_ref()),
        (200, "ok")
    );

    let spans = otlp.wait_for_trace(&unhex(trace_id), 3);
    assert_eq!(spans.len(), 3, "one span per handler call: {spans:#?}");
    let of = |component: &str| {
        spans
            .iter()
            .find(|span| span.attributes["courier.component"] == component)
            .unwrap_or_else(|| panic!("no span of `{component}`: {spans:#?}"))
    };
    let (front, middle, back) = (of("front"), of("middle"), of("back"));
    // Parent to child, hop by hop: the HTTP client's span, then each handler's.
    assert_eq!(hex(&front.parent_span_id), client_span);
    assert_eq!(middle.parent_span_id, front.span_id);
    assert_eq!(back.parent_span_id, middle.span_id);
    // Across both hosts, each exporting its own.
    assert_eq!(
        [&front.host, &middle.host, &back.host],
        ["a", "b", "a"],
        "{spans:#?}"
    );
    for span in [front, middle, back] {
        assert_eq!(span.name, "handle request");
        assert_eq!(span.attributes["courier.kind"], "request");
        assert_eq!(span.attributes["courier.outcome"], "ok");
        assert_eq!(span.attributes["courier.reply_bytes"], "2", "`ok`");
        assert_eq!(span.span_id.len(), 8);
    }
    assert_eq!(front.attributes["courier.sender"], "host");
    assert_eq!(middle.attributes["courier.sender"], "front");
    assert_eq!(back.attributes["courier.sender"], "middle");
    assert_eq!(
        back.attributes["courier.payload_bytes"],
        "print:traced-hello".len().to_string()
    );

    // The line back printed carries the trace it was printed in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        if let Some(line) = a
            .stderr()
            .lines()
            .find(|line| line.contains("traced-hello"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "back's line never reached the log: {}",
            a.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains(trace_id), "{line}");

    // A traceparent of the wrong shape is ignored: host a starts a trace of its own.
    let uppercase = traceparent.to_uppercase();
    let (status, _) = post_with_headers(
        &format!("http://{address_a}/components/front/requests"),
        &[("traceparent", &uppercase)],
        b"self",
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        let found = otlp
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|span| span.trace_id != unhex(trace_id))
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "no new trace was started");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(fresh.attributes["courier.component"], "front");
    assert!(fresh.parent_span_id.is_empty(), "{fresh:#?}");
    assert_ne!(hex(&fresh.trace_id), trace_id);

    a.terminate();
    b.terminate();
    assert!(a.wait(STOP_TIMEOUT).success(), "{}", a.stderr());
    assert!(b.wait(STOP_TIMEOUT).success(), "{}", b.stderr());
}

#[test]
fn without_a_telemetry_section_nothing_is_exported() {
    let otlp = OtlpReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let file = manifest(
        dir.path(),
        r#"
[runtime]
listen = "127.0.0.1:1"
cache_dir = "{cache}"
drain = "1s"

[[component]]
id = "front"
path = "{probe}"
capabilities = { request = ["back"] }

[[component]]
id = "back"
path = "{probe}"
"#,
    );
    // The OpenTelemetry variables name the receiver: still, no section, no export.
    let url = otlp.url();
    let traces = format!("{url}/v1/traces");
    let mut courier = Courier::start_with_env(
        &["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", Path::new(&url)),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Path::new(&traces)),
        ],
    );
    let address = courier.address();
    assert!(!courier.stdout().contains("exporting spans"));
    let agent = client();
    for _ in 0..20 {
        let (status, reply) = post_with_headers(
            &format!("http://{address}/components/front/requests"),
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            b"ask:back:self",
        );
        assert_eq!((status, reply.as_slice()), (200, &b"back"[..]));
    }
    let (status, _) = post(
        &agent,
        &format!("http://{address}/components/front/requests"),
        b"self",
    );
    assert_eq!(status, 200);
    // A run that exported would post what it held before it exits.
    courier.terminate();
    assert!(courier.wait(STOP_TIMEOUT).success(), "{}", courier.stderr());
    assert_eq!(*otlp.posts.lock().unwrap(), 0);
    assert!(otlp.spans.lock().unwrap().is_empty());
}
