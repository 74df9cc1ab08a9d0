//! Key rotation without dropping streams, black-box: the real binary (as root) with a control
//! socket, the `rotate-key` subcommand and SIGHUP, in front of the tests' own upstream that
//! accepts either key and can hold a stream open. A stream and a WebSocket turn started with
//! key A span the rotation to key B and complete intact; what comes after reaches the upstream
//! with key B; bad keys and peers that are not root are refused while the old key keeps
//! serving; neither key shows in the log or in any process's command line or environment.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const KEY_A: &str = TEST_KEY;
const KEY_B: &str = "sk-rotated_NEW-KEY-9876543210zyxwvuSECRET";

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A whole Responses stream (SSE) for response `id`.
fn events(id: &str) -> String {
    [
        format!("event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"{id}\",\"status\":\"in_progress\",\"output\":[]}}}}\n\n"),
        format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"hello from {id}\"}}\n\n"),
        format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"{id}\",\"status\":\"completed\",\"output\":[],\"usage\":{{\"input_tokens\":3,\"output_tokens\":2,\"total_tokens\":5}}}}}}\n\n"),
    ]
    .concat()
}

/// An upstream that accepts key A or key B (401 otherwise). The first request it sees is
/// answered with a held stream fed through the returned sender when `hold_first`; every other
/// request gets a whole stream at once.
async fn upstream(hold_first: bool) -> (MockUpstream, Option<mpsc::Sender<Bytes>>) {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let held = Mutex::new(hold_first.then_some(rx));
    let count = std::sync::atomic::AtomicUsize::new(0);
    let mock = MockUpstream::start(move |seen| {
        let auth = seen.header("authorization").unwrap_or_default();
        if auth != bearer(KEY_A) && auth != bearer(KEY_B) {
            return Reply::json(
                401,
                r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
            );
        }
        if let Some(chunks) = held.lock().unwrap().take() {
            return Reply::Stream {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                chunks,
            };
        }
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Reply::sse(&events(&format!("resp_{n}")))
    })
    .await;
    (mock, hold_first.then_some(tx))
}

/// The proxy with key A on stdin and a control socket in a directory of its own (created by
/// the proxy inside a fresh root-owned temporary directory, kept as long as the proxy).
struct WithSocket {
    proxy: Proxy,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn proxy_with_control_socket(mock: &MockUpstream, extra: &[&str]) -> WithSocket {
    require_root("the control socket belongs to root");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("control.sock");
    let mut args: Vec<String> = vec![
        "--upstream-url".into(),
        mock.url("/v1/responses"),
        "--verbose".into(),
        "--control-socket".into(),
        socket.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proxy = Proxy::start_with(ProxyOptions {
        args,
        ..Default::default()
    });
    WithSocket {
        proxy,
        socket,
        _dir: dir,
    }
}

/// Runs `codex-responses-api-proxy rotate-key` with `key` on stdin (as `uid` when given);
/// returns (exit code, stderr).
fn rotate_key(socket: &Path, key: &str, uid: Option<u32>) -> (i32, String) {
    let mut command = Command::new(binary());
    command
        .args(["rotate-key", "--control-socket"])
        .arg(socket)
        .env_remove("CODEX_PROXY_CONTROL_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        command.uid(uid).gid(65534);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends a raw request on the control socket and returns the answer line.
fn control_request(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

async fn post(proxy: &Proxy, body: &str) -> reqwest::Response {
    http_client()
        .post(proxy.url("/v1/responses"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// A whole request through the proxy; returns the body.
async fn complete_request(proxy: &Proxy) -> String {
    let response = post(proxy, r#"{"model":"m","input":"hi","stream":true}"#).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The supervisor's children (its workers).
fn workers_of(supervisor: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits until the supervisor has exactly one worker left (the replaced one has drained).
fn wait_for_one_worker(proxy: &Proxy) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let workers = workers_of(proxy.pid);
        if workers.len() == 1 {
            return workers[0];
        }
        assert!(
            Instant::now() < deadline,
            "still {workers:?}; log:\n{}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Neither key may be in the log or in the command line or environment of any process.
fn assert_no_key_anywhere(proxy: &Proxy) {
    let log = proxy.stderr_once_it_has("replaced worker finished", Duration::from_secs(5));
    for key in [KEY_A, KEY_B] {
        assert!(!log.contains(key), "a key is in the log:\n{log}");
        let secret_part = &key[key.len() - 12..];
        assert!(!log.contains(secret_part), "part of a key is in the log");
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue; // the test itself holds both keys
        }
        for file in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            for key in [KEY_A, KEY_B] {
                assert!(!text.contains(key), "a key is in /proc/{pid}/{file}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_spans_a_rotation_and_completes_and_later_requests_use_the_new_key() {
    let (mock, chunks) = upstream(true).await;
    let chunks = chunks.unwrap();
    let WithSocket {
        proxy,
        socket,
        _dir,
    } = proxy_with_control_socket(&mock, &["--shutdown-grace", "30"]);
    let old_worker = proxy.worker_pid();
    let mut held = post(&proxy, r#"{"model":"m","input":"long","stream":true}"#).await;
    assert_eq!(held.status(), 200);
    let whole = events("resp_held");
    let parts: Vec<&str> = whole.split_inclusive("\n\n").collect();
    chunks.send(Bytes::from(parts[0].to_owned())).await.unwrap();
    let mut received = held.chunk().await.unwrap().unwrap().to_vec();

    let (code, stderr) = rotate_key(&socket, KEY_B, None);
    assert_eq!(
        code,
        0,
        "rotate-key failed: {stderr}\nlog:\n{}",
        proxy.stderr()
    );
    let workers = workers_of(proxy.pid);
    assert_eq!(workers.len(), 2, "the old worker drains beside the new one");
    assert!(workers.contains(&old_worker));

    // A request after the rotation goes to the new worker, with key B.
    let body = complete_request(&proxy).await;
    assert!(body.contains("response.completed"), "{body}");
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("authorization"), Some(bearer(KEY_A)));
    assert_eq!(seen[1].header("authorization"), Some(bearer(KEY_B)));

    // The held stream (key A, old worker) goes on and completes intact.
    for part in &parts[1..] {
        chunks.send(Bytes::from(part.to_string())).await.unwrap();
    }
    drop(chunks);
    while let Some(chunk) = held.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(received).unwrap(), whole);

    // Then the old worker exits; the new one serves on, still with key B.
    let new_worker = wait_for_one_worker(&proxy);
    assert_ne!(new_worker, old_worker);
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_B))
    );
    assert_no_key_anywhere(&proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_turn_in_flight_finishes_after_a_rotation() {
    let (mock, chunks) = upstream(true).await;
    let chunks = chunks.unwrap();
    let WithSocket {
        proxy,
        socket,
        _dir,
    } = proxy_with_control_socket(&mock, &["--shutdown-grace", "30"]);
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let create =
        r#"{"type":"response.create","model":"m","stream":true,"store":false,"input":"hi"}"#;
    ws.send(Message::text(create)).await.unwrap();
    let whole = events("resp_ws");
    let parts: Vec<&str> = whole.split_inclusive("\n\n").collect();
    chunks.send(Bytes::from(parts[0].to_owned())).await.unwrap();
    let first = next_text(&mut ws).await;
    assert!(first.contains("response.created"), "{first}");

    let (code, stderr) = rotate_key(&socket, KEY_B, None);
    assert_eq!(code, 0, "rotate-key failed: {stderr}");

    for part in &parts[1..] {
        chunks.send(Bytes::from(part.to_string())).await.unwrap();
    }
    drop(chunks);
    let mut texts = vec![first];
    while !texts.last().unwrap().contains("response.completed") {
        texts.push(next_text(&mut ws).await);
    }
    assert!(texts.iter().any(|t| t.contains("hello from resp_ws")));
    let turns_upstream: Vec<_> = mock
        .seen()
        .iter()
        .map(|s| s.header("authorization"))
        .collect();
    assert_eq!(turns_upstream, vec![Some(bearer(KEY_A))]);

    // A new socket is served by the new worker, with key B.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(create)).await.unwrap();
    while !next_text(&mut ws).await.contains("response.completed") {}
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_B))
    );
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a message");
        match message {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_key_or_request_is_refused_and_the_old_key_keeps_working() {
    let (mock, _) = upstream(false).await;
    let WithSocket {
        proxy,
        socket,
        _dir,
    } = proxy_with_control_socket(&mock, &[]);
    let worker = proxy.worker_pid();
    // The client checks the key before sending it…
    let (code, stderr) = rotate_key(&socket, "sk-bad key", None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("characters other than"), "{stderr}");
    // …and the supervisor checks whatever arrives.
    let answer = control_request(&socket, b"rotate-key\nsk-\"quoted\"\n");
    assert!(answer.starts_with("error: "), "{answer}");
    assert!(
        !answer.contains("quoted"),
        "the answer repeats the key: {answer}"
    );
    let answer = control_request(&socket, b"rotate-key\n\n");
    assert!(
        answer.starts_with("error: the API key is empty"),
        "{answer}"
    );
    let answer = control_request(&socket, b"give-me-the-key\n");
    assert!(answer.starts_with("error: unknown command"), "{answer}");
    let answer = control_request(
        &socket,
        &[b"rotate-key\n".as_slice(), &[b'a'; 2000]].concat(),
    );
    assert!(
        answer.starts_with("error: the API key is longer"),
        "{answer}"
    );
    assert_eq!(workers_of(proxy.pid), vec![worker]);
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_A))
    );
    // Handing over the key in use changes nothing.
    let (code, stderr) = rotate_key(&socket, KEY_A, None);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(workers_of(proxy.pid), vec![worker]);
    // And a good key still rotates after all that.
    let answer = control_request(&socket, format!("rotate-key\n{KEY_B}\n").as_bytes());
    assert_eq!(answer, "ok\n");
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_B))
    );
    let log = proxy.stderr();
    assert!(!log.contains("quoted") && !log.contains(KEY_B), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_is_not_root_is_refused() {
    let (mock, _) = upstream(false).await;
    let WithSocket {
        proxy,
        socket,
        _dir,
    } = proxy_with_control_socket(&mock, &[]);
    let user = TestUser::create("rot");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    // Let the user reach the directory: the socket's own mode keeps it out…
    let run_dir = socket.parent().unwrap();
    for dir in [run_dir, run_dir.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (code, stderr) = rotate_key(&socket, KEY_B, Some(user.uid));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("only root may rotate the key"), "{stderr}");
    // …and were the socket opened to everyone, the supervisor asks the kernel who is calling.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, stderr) = rotate_key(&socket, KEY_B, Some(user.uid));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("permission denied: only root may use the control socket"),
        "{stderr}"
    );
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_A))
    );
    let log = proxy.stderr_once_it_has("refused a peer that is not root", Duration::from_secs(5));
    assert!(log.contains(&format!("peer_uid={}", user.uid)), "{log}");
}

#[test]
fn a_control_socket_in_a_directory_others_may_write_is_refused() {
    require_root("the control socket belongs to root");
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let output = Command::new(binary())
        .args(["--control-socket"])
        .arg(dir.path().join("control.sock"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"sk-x\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("must be a directory owned by root and writable by no one else"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reads_the_credential_again_and_rotates() {
    require_root("the proxy runs as root");
    let (mock, _) = upstream(false).await;
    let credentials = tempfile::tempdir().unwrap();
    let credential = credentials.path().join("openai-api-key");
    std::fs::write(&credential, format!("{KEY_A}\n")).unwrap();
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            mock.url("/v1/responses"),
            "--verbose".into(),
        ],
        key: None,
        env: vec![(
            "CREDENTIALS_DIRECTORY".into(),
            credentials.path().display().to_string(),
        )],
        ..Default::default()
    });
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_A))
    );
    let first_worker = proxy.worker_pid();

    // A bad key in the file: refused, the old key stays.
    std::fs::write(&credential, "not a key\n").unwrap();
    proxy.signal(libc::SIGHUP);
    let log = proxy.stderr_once_it_has("the current key stays in use", Duration::from_secs(10));
    assert!(log.contains("the current key stays in use"), "{log}");
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_A))
    );

    std::fs::write(&credential, format!("{KEY_B}\n")).unwrap();
    proxy.signal(libc::SIGHUP);
    let log = proxy.stderr_once_it_has("key rotated", Duration::from_secs(10));
    assert!(log.contains("key rotated"), "{log}");
    let new_worker = wait_for_one_worker(&proxy);
    assert_ne!(new_worker, first_worker);
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_B))
    );
    assert_no_key_anywhere(&proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_drain_waits_for_every_worker() {
    let (mock, chunks) = upstream(true).await;
    let chunks = chunks.unwrap();
    let WithSocket {
        mut proxy,
        socket,
        _dir,
    } = proxy_with_control_socket(&mock, &["--shutdown-grace", "30"]);
    let mut held = post(&proxy, r#"{"model":"m","input":"long","stream":true}"#).await;
    let whole = events("resp_held");
    let parts: Vec<&str> = whole.split_inclusive("\n\n").collect();
    chunks.send(Bytes::from(parts[0].to_owned())).await.unwrap();
    let mut received = held.chunk().await.unwrap().unwrap().to_vec();
    assert_eq!(rotate_key(&socket, KEY_B, None).0, 0);
    proxy.signal(libc::SIGTERM);
    // Both workers stop accepting; the supervisor waits for the stream in the old one.
    let log = proxy.stderr_once_it_has("stopping: SIGTERM", Duration::from_secs(5));
    assert!(log.contains("stopping: SIGTERM"), "{log}");
    assert!(proxy.child.try_wait().unwrap().is_none());
    for part in &parts[1..] {
        chunks.send(Bytes::from(part.to_string())).await.unwrap();
    }
    drop(chunks);
    while let Some(chunk) = held.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(received).unwrap(), whole);
    let status = proxy.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
    assert!(!socket.exists(), "the control socket is removed on exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_worker_that_cannot_start_leaves_the_old_one_serving() {
    let (mock, _) = upstream(false).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let WithSocket {
        proxy,
        socket,
        _dir,
    } = proxy_with_control_socket(&mock, &["--state-directory", state_dir.to_str().unwrap()]);
    let worker = proxy.worker_pid();
    complete_request(&proxy).await;
    // The running worker holds its usage store open; a new one (the worker user) could not
    // open it any more, and so cannot start.
    let usage = state_dir.join("usage.jsonl");
    assert!(usage.exists());
    nix::unistd::chown(&usage, Some(0.into()), Some(0.into())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&usage, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (code, stderr) = rotate_key(&socket, KEY_B, None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the new worker exited before serving")
            && stderr.contains("the current key stays in use"),
        "{stderr}"
    );
    assert_eq!(wait_for_one_worker(&proxy), worker);
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_A))
    );
    let log = proxy.stderr_once_it_has("key rotation failed", Duration::from_secs(5));
    assert!(log.contains("cannot open the usage store"), "{log}");
    assert!(!log.contains(KEY_B));
    // Once the cause is gone, the same key rotates.
    std::fs::remove_file(&usage).unwrap();
    let (code, stderr) = rotate_key(&socket, KEY_B, None);
    assert_eq!(code, 0, "{stderr}");
    complete_request(&proxy).await;
    assert_eq!(
        mock.seen().last().unwrap().header("authorization"),
        Some(bearer(KEY_B))
    );
}
