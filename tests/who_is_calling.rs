//! Who is calling: two real local users (created here; needs root, as in CI) call the real
//! binary over TCP loopback and over its unix socket. The log names each caller, the
//! allow-list admits one and refuses the other, token totals match what the upstream
//! reported, and the limits answer 429.
//! Every loopback address form (IPv4, IPv4-mapped IPv6 on either end, `::1`) names the same
//! user, and a caller the kernel cannot name is the one shared user "unknown", limited too.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::Command;

const COMPLETED: &str = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"gpt-test\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":100,\"input_tokens_details\":{\"cached_tokens\":40},\"output_tokens\":20,\"output_tokens_details\":{\"reasoning_tokens\":5},\"total_tokens\":120}}}\n\n";

#[tokio::test(flavor = "multi_thread")]
async fn identity_allow_list_accounting_and_limits_with_two_real_users() {
    require_root("creating users");
    let group = TestGroup::create();
    let alice = TestUser::create_in("a", Some(&group.0));
    let bob = TestUser::create("b");
    let mock = MockUpstream::start(|_| Reply::sse(COMPLETED)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("proxy.sock");
    // The socket's directory must be reachable by the test users.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            mock.url("/v1/responses"),
            "--unix-socket".into(),
            socket.to_str().unwrap().into(),
            "--allow-groups".into(),
            group.0.clone(),
            "--state-directory".into(),
            state.to_str().unwrap().into(),
            "--requests-per-minute".into(),
            "3".into(),
            "--http-shutdown".into(),
        ],
        ..Default::default()
    });
    let tcp_url = proxy.url("/v1/responses");
    let body = r#"{"model":"gpt-test","input":"hi","stream":true}"#;

    // Alice (in the group) over TCP and over the unix socket.
    let (status, text) = curl_as(alice.uid, &["-d", body, &tcp_url]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("response.completed"));
    let (status, _) = curl_as(
        alice.uid,
        &[
            "--unix-socket",
            socket.to_str().unwrap(),
            "-d",
            body,
            "http://localhost/v1/responses",
        ],
    );
    assert_eq!(status, 200);

    // Bob (not in the group) is refused on both, with a reason, and nothing goes upstream.
    let upstream_before = mock.seen().len();
    let (status, text) = curl_as(bob.uid, &["-d", body, &tcp_url]);
    assert_eq!(status, 403);
    assert!(
        text.contains(&bob.name) && text.contains(&group.0),
        "{text}"
    );
    let (status, _) = curl_as(
        bob.uid,
        &[
            "--unix-socket",
            socket.to_str().unwrap(),
            "http://localhost/v1/models",
        ],
    );
    assert_eq!(status, 403);
    assert_eq!(mock.seen().len(), upstream_before);

    // Alice's third request in the minute passes, the fourth is limited.
    let (status, _) = curl_as(alice.uid, &["-d", body, &tcp_url]);
    assert_eq!(status, 200);
    let output = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--noproxy",
            "*",
            "-d",
            body,
            &tcp_url,
        ])
        .uid(alice.uid)
        .gid(65534)
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 429"), "{headers}");
    assert!(headers.contains("retry-after: "), "{headers}");

    // Root is not in the group either: even /shutdown is refused.
    let refused = http_client()
        .get(proxy.url("/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    proxy.signal(libc::SIGTERM);
    proxy.wait_exit(std::time::Duration::from_secs(10));

    // The log names each caller with uid and user name.
    let log = proxy.stderr();
    let alice_lines = log
        .lines()
        .filter(|l| l.contains(&format!("client_uid={}", alice.uid)))
        .count();
    assert!(alice_lines >= 3, "{log}");
    assert!(log.contains(&format!("client_user={}", alice.name)));
    assert!(log.contains(&format!("client_uid={}", bob.uid)));

    // Totals per user match what the upstream reported: 3 completed requests for alice.
    let report = Command::new(binary())
        .args([
            "--state-directory",
            state.to_str().unwrap(),
            "usage",
            "--since",
            "-1h",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let totals: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let alice_totals = totals
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["uid"] == alice.uid)
        .unwrap_or_else(|| {
            let store = std::fs::read_to_string(state.join("usage.jsonl")).unwrap_or_default();
            panic!("no totals for alice in {totals}; store:\n{store}")
        });
    assert_eq!(alice_totals["input_tokens"], 300);
    assert_eq!(alice_totals["output_tokens"], 60);
    assert_eq!(alice_totals["cached_tokens"], 120);
    assert_eq!(alice_totals["reasoning_tokens"], 15);
    let table = Command::new(binary())
        .args(["--state-directory", state.to_str().unwrap(), "usage"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains(&alice.name));
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_survive_a_worker_restart() {
    let mock = MockUpstream::start(|_| Reply::sse(COMPLETED)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = |state: &std::path::Path| {
        vec![
            "--upstream-url".to_string(),
            mock.url("/v1/responses"),
            "--state-directory".into(),
            state.to_str().unwrap().into(),
            "--tokens-per-day".into(),
            "200".into(),
        ]
    };
    let first = Proxy::start_with(ProxyOptions {
        args: args(&state),
        ..Default::default()
    });
    for _ in 0..2 {
        let r = http_client()
            .post(first.url("/v1/responses"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    // A request's usage is recorded shortly after its response (by the worker's
    // after-response thread); `first` is killed, not stopped, so wait for both records.
    let usage_file = state.join("usage.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&usage_file).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "usage was not recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(first);
    // 240 tokens used today: a new service refuses the next request.
    let second = Proxy::start_with(ProxyOptions {
        args: args(&state),
        ..Default::default()
    });
    let r = http_client()
        .post(second.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The usage records once there are `count` of them (they are written a moment after each
/// response, by the worker's after-response thread).
fn usage_records(state: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(state.join("usage.jsonl")).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if records.len() >= count || std::time::Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A client that dials `[::ffff:127.0.0.1]` has an IPv6 socket while the proxy's IPv4
/// listener sees plain 127.0.0.1; a listener bound to `[::ffff:127.0.0.1]` sees mapped
/// addresses; `[::1]` is IPv6 throughout. The proxy listens on all three (socket activation,
/// as a systemd unit with several `ListenStream=` would), and one real user's requests over
/// every form are counted for that user — in usage.jsonl and against `--requests-per-minute`.
#[tokio::test(flavor = "multi_thread")]
async fn every_loopback_address_form_counts_for_the_caller() {
    assert!(
        is_root(),
        "this test creates a user: run it as root (CI does)"
    );
    let carol = TestUser::create("c");
    let mock = MockUpstream::start(|_| Reply::sse(COMPLETED)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (v4, mapped_listener, v6) = (free_port(), free_port(), free_port());
    // systemd-socket-activate starts the proxy at the first connection: make one.
    let wake = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // Held open until the proxy serves, so that the worker can tell who it is.
            if let Ok(held) = std::net::TcpStream::connect(("127.0.0.1", v4)) {
                return held;
            }
            assert!(std::time::Instant::now() < deadline, "never listened");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    let proxy = Proxy::start_with(ProxyOptions {
        launcher: vec![
            "systemd-socket-activate".into(),
            "-l".into(),
            format!("127.0.0.1:{v4}"),
            "-l".into(),
            format!("[::ffff:127.0.0.1]:{mapped_listener}"),
            "-l".into(),
            format!("[::1]:{v6}"),
        ],
        args: vec![
            "--upstream-url".into(),
            mock.url("/v1/responses"),
            "--state-directory".into(),
            state.to_str().unwrap().into(),
            "--requests-per-minute".into(),
            "5".into(),
        ],
        ..Default::default()
    });
    drop(wake.join().unwrap());
    let body = r#"{"model":"gpt-test","input":"hi","stream":true}"#;
    let urls = [
        format!("http://127.0.0.1:{v4}/v1/responses"),
        format!("http://[::ffff:127.0.0.1]:{v4}/v1/responses"),
        format!("http://127.0.0.1:{mapped_listener}/v1/responses"),
        format!("http://[::ffff:127.0.0.1]:{mapped_listener}/v1/responses"),
        format!("http://[::1]:{v6}/v1/responses"),
    ];
    for url in &urls {
        let (status, text) = curl_as(carol.uid, &["-g", "-d", body, url]);
        assert_eq!(status, 200, "{url}: {text}");
    }
    // The sixth request in the minute is refused, whichever form it comes over.
    for url in &urls {
        let (status, text) = curl_as(carol.uid, &["-g", "-d", body, url]);
        assert_eq!(status, 429, "{url} escaped the limit: {text}");
    }
    let records = usage_records(&state, urls.len());
    assert_eq!(records.len(), urls.len(), "{records:?}");
    for record in &records {
        assert_eq!(
            record["uid"], carol.uid,
            "counted for someone else: {record}"
        );
    }
    let log = proxy.stderr_once_it_has("limited", std::time::Duration::from_secs(10));
    assert!(
        !log.contains("cannot tell which local user"),
        "a caller was unknown:\n{log}"
    );
}

/// A caller the kernel cannot name — here one whose socket no process holds any more by the
/// time the worker asks (its client was killed while its request sat in the queue; the
/// orphaned socket still delivers the request's head) — is the one shared user "unknown":
/// never root, never someone else, and held to the same per-user limits, apart from the
/// users the kernel does name.
#[tokio::test(flavor = "multi_thread")]
async fn an_unidentifiable_caller_is_the_shared_unknown_user_and_limited() {
    assert!(
        is_root(),
        "this test creates a user and stops the worker: run it as root (CI does)"
    );
    let dave = TestUser::create("d");
    let mock = MockUpstream::start(|_| Reply::sse(COMPLETED)).await;
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            mock.url("/v1/responses"),
            "--requests-per-minute".into(),
            "2".into(),
            "--idle-timeout".into(),
            "2".into(),
        ],
        ..Default::default()
    });
    // With the worker stopped, three clients connect and start a request with a large body;
    // each is killed while its write is blocked, so its socket becomes an orphan that no
    // process holds (the kernel still sends what was queued, head first).
    let worker = proxy.worker_pid();
    unsafe { libc::kill(worker as i32, libc::SIGSTOP) };
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'POST /v1/responses HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nContent-Type: application/json\\r\\nContent-Length: 30000000\\r\\n\\r\\n' >&3; head -c 30000000 /dev/zero >&3",
        port = proxy.port
    );
    for _ in 0..3 {
        let status = Command::new("timeout")
            .args(["1", "bash", "-c", &script])
            .uid(dave.uid)
            .gid(65534)
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(124),
            "the client was meant to be killed while writing"
        );
    }
    // The killed clients' processes (bash and its `head`) must be gone before the worker
    // looks: a socket still held by a dying process would be named as dave's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let runs_as_dave = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            // A zombie has closed its sockets already (and may never be reaped here).
            std::fs::read_to_string(entry.path().join("status")).is_ok_and(|status| {
                !status.lines().any(|line| line.starts_with("State:\tZ"))
                    && status.lines().any(|line| {
                        line.starts_with("Uid:")
                            && line.split_whitespace().nth(1) == Some(&dave.uid.to_string())
                    })
            })
        })
    };
    while runs_as_dave() {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed clients did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(worker as i32, libc::SIGCONT) };
    let log = proxy.stderr_once_it_has("limited", std::time::Duration::from_secs(15));
    let limited: Vec<&str> = log.lines().filter(|l| l.contains("limited")).collect();
    assert_eq!(
        limited.len(),
        1,
        "the third unknown request was not limited:\n{log}"
    );
    assert!(limited[0].contains("client_user=unknown"), "{log}");
    assert_eq!(
        log.matches("cannot tell which local user opened a connection")
            .count(),
        3,
        "{log}"
    );
    assert!(
        !log.contains("client_user=root"),
        "an unknown caller counted as root:\n{log}"
    );
    assert!(
        !log.contains(&format!("client_user={}", dave.name)),
        "a caller the kernel could not name was taken for dave:\n{log}"
    );
    // Dave, whom the kernel does name, has his own two requests.
    for _ in 0..2 {
        let (status, text) = curl_as(dave.uid, &["-d", "{}", &proxy.url("/v1/responses")]);
        assert_eq!(status, 200, "{text}");
    }
    assert!(
        mock.seen().len() == 2,
        "an unknown request reached the upstream"
    );
}
