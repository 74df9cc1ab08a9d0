//! The metrics socket (`--metrics-socket`), end to end: the real binary in front of a mock
//! upstream, scraped over its unix socket and read with the official Python Prometheus
//! parsers (`prometheus_client`: the text-format parser, and the OpenMetrics one for
//! scrapers that ask for OpenMetrics). Requests of every kind (a success with usage, a 403, an
//! upstream 500, a limit refusal, an unreachable upstream, a stream and a WebSocket held open)
//! show up with the values they must have. Only root and the metrics group may connect (the
//! file system refuses everyone else with EACCES), and a socket directory that anyone but root
//! controls is refused at start. Needs root (the socket is root's; users are created).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COMPLETED: &str = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"gpt-test\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":100,\"input_tokens_details\":{\"cached_tokens\":40},\"output_tokens\":20,\"output_tokens_details\":{\"reasoning_tokens\":5},\"total_tokens\":120}}}\n\n";

/// One sample as a parser read it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One family as a parser read it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<Sample>,
}

/// What one scrape answered, parsed.
struct Scrape {
    content_type: String,
    families: Vec<Family>,
}

impl Scrape {
    fn family(&self, name: &str) -> &Family {
        self.families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name} in {:#?}", self.families))
    }

    /// The value of the sample named `name` whose labels include `labels` (0 when there is
    /// none: a counter never incremented is not shown).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?}: {matching:#?}");
        matching.first().map_or(0.0, |s| s.value)
    }

    /// The value of the gauge `name` (no labels), which must be shown: a gauge renamed or
    /// missing fails instead of reading as zero.
    fn gauge(&self, name: &str) -> f64 {
        self.family(name);
        self.value(name, &[])
    }
}

/// The socket's directory: root's, mode 0755, so that test users reach the socket itself.
fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("metrics.sock");
    (dir, socket)
}

fn start_proxy(upstream: &str, socket: &Path, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--upstream-url".to_string(),
        upstream.to_string(),
        "--metrics-socket".to_string(),
        socket.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proxy::start_with(ProxyOptions {
        args,
        ..Default::default()
    })
}

/// One HTTP/1.1 request on the metrics socket: (status, content type, body).
fn raw_scrape(socket: &Path, target: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect as root");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status_of(head), content_type, body.to_string())
}

/// Parses `text` with the official Python client's parser: the Prometheus text-format one,
/// or the (stricter) OpenMetrics one.
fn parse(text: &str, openmetrics: bool) -> Vec<Family> {
    let python = std::env::var("OPENAI_SDK_PYTHON")
        .expect("OPENAI_SDK_PYTHON: the test venv's python, with prometheus_client (tests/run-all.sh installs it)");
    let module = if openmetrics {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import json, sys\nfrom {module} import text_string_to_metric_families\n\
         print(json.dumps([{{'name': f.name, 'type': f.type, 'samples': [{{'name': s.name, 'labels': s.labels, 'value': s.value}} for s in f.samples]}} for f in text_string_to_metric_families(sys.stdin.read())]))"
    );
    let mut child = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test venv's python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{module} refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Scrapes in the classic text format (no `Accept`, as curl asks) and parses it.
fn scrape(socket: &Path) -> Scrape {
    let (status, content_type, body) = raw_scrape(socket, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    Scrape {
        content_type,
        families: parse(&body, false),
    }
}

/// Scrapes as Prometheus does (asking for OpenMetrics first) and parses it strictly.
fn scrape_openmetrics(socket: &Path) -> Scrape {
    let (status, content_type, body) = raw_scrape(
        socket,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    Scrape {
        content_type,
        families: parse(&body, true),
    }
}

/// Scrapes until `done` holds (a finished request is counted on the after-response thread,
/// a moment after its response), or panics after 20 s with the last scrape.
fn scrape_until(socket: &Path, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(socket);
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never seen in {:#?}",
            scrape.families
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn total(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_scrape_counts_requests_tokens_refusals_and_upstream_errors() {
    require_root("the metrics socket is root's");
    let mock = MockUpstream::start(|seen| {
        if seen.body.windows(4).any(|w| w == b"boom") {
            Reply::json(
                500,
                r#"{"error":{"message":"upstream broke","type":"server_error","param":null,"code":null}}"#,
            )
        } else {
            Reply::sse(COMPLETED)
        }
    })
    .await;
    let (_dir, socket) = socket_dir();
    let proxy = start_proxy(
        &mock.url("/v1/responses"),
        &socket,
        &["--requests-per-minute", "3"],
    );
    let client = http_client();
    let post = |path: &str, body: &'static str| {
        client
            .post(proxy.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = r#"{"model":"gpt-test","input":"hi","stream":true}"#;
    let boom = r#"{"model":"gpt-test","input":"boom","stream":true}"#;
    let answer = post("/v1/responses", ok).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("response.completed"));
    let answer = post("/v1/responses", boom).await.unwrap();
    assert_eq!(answer.status(), 500);
    answer.bytes().await.unwrap();
    // Refused by the route (never counted against the limit).
    let answer = post("/v1/chat/completions", ok).await.unwrap();
    assert_eq!(answer.status(), 403);
    answer.bytes().await.unwrap();
    let answer = post("/v1/responses", ok).await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.bytes().await.unwrap();
    // The fourth model request in a minute is past --requests-per-minute 3.
    let answer = post("/v1/responses", ok).await.unwrap();
    assert_eq!(answer.status(), 429);
    answer.bytes().await.unwrap();

    let socket_for_scrape = socket.clone();
    let scrape = tokio::task::spawn_blocking(move || {
        scrape_until(&socket_for_scrape, "five requests", |s| {
            total(s, "codex_proxy_requests_total") >= 5.0
        })
    })
    .await
    .unwrap();
    assert!(
        scrape.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        scrape.content_type
    );
    assert_eq!(total(&scrape, "codex_proxy_requests_total"), 5.0);
    // The classic parser names a counter's family without `_total`, and finds its samples
    // in it only when the family is named as they are (not as OpenMetrics names it).
    assert_eq!(scrape.family("codex_proxy_requests").kind, "counter");
    assert_eq!(scrape.family("codex_proxy_requests").samples.len(), 4);
    let requests = |route: &str, status: &str| {
        scrape.value(
            "codex_proxy_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("responses", "200"), 2.0);
    assert_eq!(requests("responses", "500"), 1.0);
    assert_eq!(requests("responses", "429"), 1.0);
    assert_eq!(requests("refused", "403"), 1.0);
    // Tokens of the two successes, by the user the kernel named (root, uid 0).
    assert_eq!(scrape.family("codex_proxy_tokens").kind, "counter");
    let tokens = |kind: &str| {
        scrape.value(
            "codex_proxy_tokens_total",
            &[
                ("user", "root"),
                ("uid", "0"),
                ("model", "gpt-test"),
                ("kind", kind),
            ],
        )
    };
    assert_eq!(tokens("input"), 200.0);
    assert_eq!(tokens("output"), 40.0);
    assert_eq!(
        scrape.value(
            "codex_proxy_limit_refusals_total",
            &[("limit", "requests_per_minute")]
        ),
        1.0
    );
    assert_eq!(total(&scrape, "codex_proxy_limit_refusals_total"), 1.0);
    assert_eq!(
        scrape.value(
            "codex_proxy_upstream_errors_total",
            &[("kind", "status_5xx")]
        ),
        1.0
    );
    assert_eq!(total(&scrape, "codex_proxy_upstream_errors_total"), 1.0);
    // The three requests the upstream answered, timed.
    for histogram in [
        "codex_proxy_upstream_duration_seconds",
        "codex_proxy_upstream_time_to_first_byte_seconds",
    ] {
        assert_eq!(scrape.family(histogram).kind, "histogram");
        let count = scrape.value(&format!("{histogram}_count"), &[("route", "responses")]);
        assert_eq!(count, 3.0, "{histogram}");
        let all = scrape.value(
            &format!("{histogram}_bucket"),
            &[("route", "responses"), ("le", "+Inf")],
        );
        assert_eq!(all, 3.0, "{histogram}");
        let sum = scrape.value(&format!("{histogram}_sum"), &[("route", "responses")]);
        assert!((0.0..60.0).contains(&sum), "{histogram}: {sum}");
    }
    assert_eq!(scrape.gauge("codex_proxy_requests_in_flight"), 0.0);
    assert_eq!(
        scrape.family("codex_proxy_requests_in_flight").kind,
        "gauge"
    );
    assert_eq!(scrape.gauge("codex_proxy_websockets_open"), 0.0);

    // As Prometheus scrapes: OpenMetrics, read by the strict parser, the same values.
    let socket_for_scrape = socket.clone();
    let open = tokio::task::spawn_blocking(move || scrape_openmetrics(&socket_for_scrape))
        .await
        .unwrap();
    assert!(
        open.content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        open.content_type
    );
    assert_eq!(open.family("codex_proxy_requests").kind, "counter");
    assert_eq!(
        open.value(
            "codex_proxy_requests_total",
            &[("route", "responses"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        open.family("codex_proxy_upstream_duration_seconds").kind,
        "histogram"
    );

    // Nothing else is served there.
    let socket_for_scrape = socket.clone();
    let (status, _, body) =
        tokio::task::spawn_blocking(move || raw_scrape(&socket_for_scrape, "/", None))
            .await
            .unwrap();
    assert_eq!(status, 404, "{body}");
    drop(proxy);
}

/// Posts one request the upstream cannot answer: its 502's body, and the scrape once it is
/// counted.
async fn a_502_and_its_scrape(proxy: &Proxy, socket: &Path) -> (String, Scrape) {
    let answer = http_client()
        .post(proxy.url("/v1/responses"))
        .body(r#"{"model":"gpt-test","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    let body = answer.text().await.unwrap();
    let socket = socket.to_owned();
    let scrape = tokio::task::spawn_blocking(move || {
        scrape_until(&socket, "the 502", |s| {
            total(s, "codex_proxy_requests_total") >= 1.0
        })
    })
    .await
    .unwrap();
    (body, scrape)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_counts_as_a_connect_error() {
    require_root("the metrics socket is root's");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (_dir, socket) = socket_dir();
    let proxy = start_proxy(
        &format!("http://127.0.0.1:{port}/v1/responses"),
        &socket,
        &[],
    );
    let (_, scrape) = a_502_and_its_scrape(&proxy, &socket).await;
    assert_eq!(
        scrape.value(
            "codex_proxy_requests_total",
            &[("route", "responses"), ("status", "502")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("codex_proxy_upstream_errors_total", &[("kind", "connect")]),
        1.0
    );
    // No answer from the upstream: no upstream timing.
    assert_eq!(
        scrape.value(
            "codex_proxy_upstream_duration_seconds_count",
            &[("route", "responses")]
        ),
        0.0
    );
}

/// An `https://` upstream that does not speak TLS fails the fast path's handshake: counted
/// as a `tls` error, not a `connect` one.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_tls_handshake_counts_as_a_tls_error() {
    require_root("the metrics socket is root's");
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = plain.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut client, _)) = plain.accept().await {
            let _ = client
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let (_dir, socket) = socket_dir();
    let proxy = start_proxy(
        &format!("https://127.0.0.1:{port}/v1/responses"),
        &socket,
        &[],
    );
    let (body, scrape) = a_502_and_its_scrape(&proxy, &socket).await;
    assert!(body.contains("TLS"), "{body}");
    assert_eq!(
        scrape.value("codex_proxy_upstream_errors_total", &[("kind", "tls")]),
        1.0
    );
    assert_eq!(
        scrape.value("codex_proxy_upstream_errors_total", &[("kind", "connect")]),
        0.0
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_and_websockets_are_counted_while_open() {
    require_root("the metrics socket is root's");
    // The first request gets a stream the test feeds; every later one a whole answer.
    let (feed, chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let chunks = std::sync::Mutex::new(Some(chunks));
    let mock = MockUpstream::start(move |_| match chunks.lock().unwrap().take() {
        Some(chunks) => Reply::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks,
        },
        None => Reply::sse(COMPLETED),
    })
    .await;
    let (_dir, socket) = socket_dir();
    let proxy = start_proxy(&mock.url("/v1/responses"), &socket, &[]);
    let gauges = |socket: PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            let s = scrape(&socket);
            (
                s.value("codex_proxy_requests_in_flight", &[]),
                s.value("codex_proxy_websockets_open", &[]),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(gauges(socket.clone()).await, (0.0, 0.0));

    // A stream in flight.
    let mut stream = http_client()
        .post(proxy.url("/v1/responses"))
        .body(r#"{"model":"gpt-test","input":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    feed.send(bytes::Bytes::from_static(
        b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n",
    ))
    .await
    .unwrap();
    assert!(stream.chunk().await.unwrap().is_some());
    assert_eq!(gauges(socket.clone()).await, (1.0, 0.0));

    // A WebSocket open beside it, with one turn served.
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"response.create","model":"gpt-test","input":"hi"}"#,
    ))
    .await
    .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the turn's events")
            .unwrap()
            .unwrap();
        if message.to_text().unwrap().contains("response.completed") {
            break;
        }
    }
    let socket_for_scrape = socket.clone();
    let scrape = tokio::task::spawn_blocking(move || {
        scrape_until(&socket_for_scrape, "the WebSocket turn", |s| {
            s.value(
                "codex_proxy_requests_total",
                &[("route", "websocket_turn"), ("status", "200")],
            ) == 1.0
        })
    })
    .await
    .unwrap();
    assert_eq!(scrape.value("codex_proxy_websockets_open", &[]), 1.0);
    assert_eq!(scrape.value("codex_proxy_requests_in_flight", &[]), 1.0);
    assert_eq!(
        scrape.value(
            "codex_proxy_requests_total",
            &[("route", "websocket"), ("status", "101")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            "codex_proxy_tokens_total",
            &[("uid", "0"), ("model", "gpt-test"), ("kind", "input")]
        ),
        100.0
    );

    // Both end: the gauges come back to zero.
    ws.close(None).await.unwrap();
    drop(feed);
    while stream.chunk().await.unwrap().is_some() {}
    drop(stream);
    let socket_for_scrape = socket.clone();
    tokio::task::spawn_blocking(move || {
        scrape_until(&socket_for_scrape, "nothing open", |s| {
            s.gauge("codex_proxy_requests_in_flight") == 0.0
                && s.gauge("codex_proxy_websockets_open") == 0.0
        })
    })
    .await
    .unwrap();
}

/// What `connect(2)` on `socket` says when run as `uid` with primary group `gid` (and no
/// other groups): "connected", or the errno.
fn connect_as(uid: u32, gid: u32, socket: &Path) -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import socket, sys\ntry:\n    socket.socket(socket.AF_UNIX).connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(e.errno)",
            socket.to_str().unwrap(),
        ])
        .uid(uid)
        .gid(gid)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_root_and_the_metrics_group_may_connect() {
    require_root("creating users");
    let group = TestGroup::create();
    let reader = TestUser::create_in("mr", Some(&group.0));
    let other = TestUser::create("mo");
    let gid = nix::unistd::Group::from_name(&group.0)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let mock = MockUpstream::start(|_| Reply::sse(COMPLETED)).await;
    let (_dir, socket) = socket_dir();
    let _proxy = start_proxy(
        &mock.url("/v1/responses"),
        &socket,
        &["--metrics-group", &group.0],
    );
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, gid, 0o660)
    );
    // Another user: the file system refuses the connection itself.
    assert_eq!(connect_as(other.uid, 65534, &socket), "13", "EACCES");
    // A member of the metrics group connects and reads the metrics.
    assert_eq!(connect_as(reader.uid, gid, &socket), "connected");
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "--unix-socket"])
        .arg(&socket)
        .arg("http://localhost/metrics")
        .uid(reader.uid)
        .gid(gid)
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(body.contains("codex_proxy_requests_in_flight 0"), "{body}");
    // And root, always.
    assert_eq!(connect_as(0, 0, &socket), "connected");
}

/// Starts the binary with `--metrics-socket socket`, expecting it to refuse to start: its log.
fn refused_start(socket: &Path) -> String {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(binary())
        .args(["--upstream-url", "http://127.0.0.1:9/v1/responses"])
        .arg("--metrics-socket")
        .arg(socket)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{TEST_KEY}\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the proxy started with --metrics-socket {}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!status.success(), "{text}");
    text
}

#[test]
fn a_socket_directory_others_control_is_refused() {
    require_root("creating users");
    let user = TestUser::create("md");
    let outer = tempfile::tempdir().unwrap();
    // The user's own directory.
    let theirs = outer.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(user.uid.into()), None).unwrap();
    let log = refused_start(&theirs.join("metrics.sock"));
    assert!(
        log.contains(&format!("belongs to uid {}", user.uid)),
        "{log}"
    );
    // A directory every user may write.
    let open = outer.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let log = refused_start(&open.join("metrics.sock"));
    assert!(log.contains("writable by users other than root"), "{log}");
    // A link the user planted, pointing at a directory only root controls.
    let good = outer.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let planted = outer.path().join("planted");
    std::os::unix::fs::symlink(&good, &planted).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &planted,
        Some(user.uid.into()),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let log = refused_start(&planted.join("metrics.sock"));
    assert!(log.contains("symbolic link"), "{log}");
    for dir in [&theirs, &open, &good] {
        assert!(!dir.join("metrics.sock").exists());
    }
}
