//! Test harness shared by the black-box tests: a real hyper upstream on loopback that records
//! what reaches it, the real proxy binary started as a child process, and a raw HTTP/1.1
//! client for request targets that ordinary clients refuse to send.
#![allow(dead_code)]

pub mod egress_proxy;
pub mod users;
pub mod ws_upstream;
#[allow(unused_imports)]
pub use egress_proxy::EgressProxy;
#[allow(unused_imports)]
pub use users::{curl_as, TestGroup, TestUser};
#[allow(unused_imports)]
pub use ws_upstream::{WsSeen, WsUpstream};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const TEST_KEY: &str = "sk-test_KEY-0123456789abcdefSECRET";

/// One request as the mock upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<binary>").to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }
}

/// What the mock answers.
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Chunks are sent as the test pushes them; dropping the sender ends the body.
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: mpsc::Receiver<Bytes>,
    },
    /// Never answers (for timeouts).
    Stall,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }
    pub fn sse(body: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct MockUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Incremented when a streamed response body is dropped by hyper (client side gone).
    pub stream_closed: Arc<std::sync::atomic::AtomicUsize>,
    /// WebSocket upgrades asked of this HTTP-only mock (answered 404, not in `seen`).
    pub upgrades_refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl MockUpstream {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> MockUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stream_closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let upgrades_refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, closed2, upgrades2) = (
            seen.clone(),
            stream_closed.clone(),
            upgrades_refused.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, handler, closed, upgrades) = (
                    seen2.clone(),
                    handler.clone(),
                    closed2.clone(),
                    upgrades2.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (seen, handler, closed, upgrades) = (
                            seen.clone(),
                            handler.clone(),
                            closed.clone(),
                            upgrades.clone(),
                        );
                        async move {
                            // An HTTP-only server: a WebSocket upgrade is not one of its routes.
                            if req.headers().contains_key(hyper::header::UPGRADE) {
                                upgrades.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return Ok(build_reply(
                                    Reply::json(404, r#"{"error":{"message":"Not found","type":"invalid_request_error"}}"#),
                                    closed,
                                )
                                .await);
                            }
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let request = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(request.clone());
                            let reply = handler(&request);
                            Ok::<_, std::convert::Infallible>(build_reply(reply, closed).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockUpstream {
            addr,
            seen,
            stream_closed,
            upgrades_refused,
        }
    }

    /// A mock whose one SSE answer is fed, chunk by chunk, through the returned sender;
    /// dropping the sender ends the body.
    pub async fn streaming() -> (MockUpstream, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let rx = Mutex::new(Some(rx));
        let mock = MockUpstream::start(move |_| Reply::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: rx.lock().unwrap().take().expect("one stream"),
        })
        .await;
        (mock, tx)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// Counts the drop of a streamed body: hyper drops it when the downstream connection goes.
struct DropCounter(Arc<std::sync::atomic::AtomicUsize>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn build_reply(
    reply: Reply,
    closed: Arc<std::sync::atomic::AtomicUsize>,
) -> Response<MockBody> {
    let (status, headers, body): (u16, Vec<(String, String)>, MockBody) = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (status, headers, Full::new(body).boxed()),
        Reply::Stream {
            status,
            headers,
            chunks,
        } => {
            let counter = DropCounter(closed);
            let stream =
                futures_util::stream::unfold((chunks, counter), |(mut rx, c)| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), (rx, c)))
                });
            (status, headers, StreamBody::new(stream).boxed())
        }
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            unreachable!()
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        response.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    response
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_codex-responses-api-proxy")
}

/// The real binary, started with the key on stdin.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
    pub pid: u32,
    pub dir: tempfile::TempDir,
}

pub struct ProxyOptions<'a> {
    pub args: Vec<String>,
    pub key: Option<&'a str>,
    pub env: Vec<(String, String)>,
    /// A command the binary is started through (e.g. `setpriv …`), empty for none.
    pub launcher: Vec<String>,
}

impl Default for ProxyOptions<'_> {
    fn default() -> Self {
        ProxyOptions {
            args: vec![],
            key: Some(TEST_KEY),
            env: vec![],
            launcher: vec![],
        }
    }
}

impl Proxy {
    /// Starts the proxy in strict mode in front of `upstream_url`.
    pub fn start(upstream_url: &str, extra: &[&str]) -> Proxy {
        let mut args = vec!["--upstream-url".to_string(), upstream_url.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proxy::start_with(ProxyOptions {
            args,
            ..Default::default()
        })
    }

    pub fn start_with(options: ProxyOptions) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let info = dir.path().join("server-info.json");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = match options.launcher.split_first() {
            Some((program, launcher_args)) => {
                let mut command = Command::new(program);
                command.args(launcher_args).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        command
            .args(&options.args)
            .arg("--server-info")
            .arg(&info)
            .env_remove("OPENAI_API_KEY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = command.spawn().expect("start the proxy binary");
        {
            let mut stdin = child.stdin.take().unwrap();
            if let Some(key) = options.key {
                stdin.write_all(format!("{key}\n").as_bytes()).unwrap();
            }
        }
        let (port, pid) = wait_for_server_info(&info, &mut child, dir.path());
        Proxy {
            child,
            port,
            pid,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The log once it contains `needle` (lines reach stderr in batches, a moment late), or
    /// as it is after `limit`.
    pub fn stderr_once_it_has(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.stderr();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker's pid (the supervisor's only child).
    pub fn worker_pid(&self) -> u32 {
        worker_pid_of(self.pid)
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid as i32, signal);
        }
    }

    /// Waits for the supervisor to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let worker = worker_pid_of_opt(self.pid);
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(worker) = worker {
                unsafe {
                    libc::kill(worker as i32, libc::SIGKILL);
                }
            }
        }
    }
}

pub fn wait_for_server_info(info: &Path, child: &mut Child, dir: &Path) -> (u16, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(info) {
            let v: serde_json::Value = serde_json::from_str(&text).expect("server-info is JSON");
            return (
                v["port"].as_u64().unwrap() as u16,
                v["pid"].as_u64().unwrap() as u32,
            );
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "proxy exited early with {status}; stderr:\n{}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not write --server-info"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn worker_pid_of_opt(supervisor: u32) -> Option<u32> {
    let path = format!("/proc/{supervisor}/task/{supervisor}/children");
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn worker_pid_of(supervisor: u32) -> u32 {
    worker_pid_of_opt(supervisor).expect("supervisor has a worker child")
}

/// Sends raw bytes and returns the whole answer (until the server closes or 5 s pass).
pub fn raw_request(port: u16, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response in a raw answer.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Fields of a /proc/PID/status file.
pub fn proc_status(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// For tests that need root: they fail (never skip) without it, since CI runs as root.
pub fn require_root(what: &str) {
    assert!(is_root(), "this test needs root ({what}); run it as root");
}
