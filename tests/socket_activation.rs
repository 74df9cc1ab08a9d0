//! Socket activation exactly as systemd does it, through `systemd-socket-activate`: the key from
//! a credential directory (stdin is /dev/null) and readiness reported on a notify socket.

mod common;

use common::*;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Activated {
    child: std::process::Child,
    port: u16,
}

impl Drop for Activated {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(worker) = worker_pid_of_opt(self.child.id()) {
                unsafe { libc::kill(worker as i32, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the proxy under systemd-socket-activate, which binds the port now and starts the
/// program when the first connection arrives.
fn activate(credentials: &std::path::Path, notify: &str, extra: &[&str]) -> Activated {
    let port = free_port();
    let mut command = Command::new("systemd-socket-activate");
    command
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=http")
        .arg("-E")
        .arg(format!("CREDENTIALS_DIRECTORY={}", credentials.display()))
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={notify}"))
        .arg(binary())
        .args(extra)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let activated = Activated {
        child: command
            .spawn()
            .expect("systemd-socket-activate (Debian package systemd)"),
        port,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "socket never bound");
        std::thread::sleep(Duration::from_millis(10));
    }
    activated
}

fn expect_ready(socket: &UnixDatagram) {
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 on the notify socket");
    assert_eq!(&buf[..n], b"READY=1");
}

#[tokio::test(flavor = "multi_thread")]
async fn activated_by_systemd_socket_activate_with_a_credential_and_a_path_notify_socket() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{\"ok\":true}")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("openai-api-key"), format!("{TEST_KEY}\n")).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut activated = activate(
        dir.path(),
        notify_path.to_str().unwrap(),
        &[
            "--upstream-url",
            &mock.url("/v1/responses"),
            "--http-shutdown",
        ],
    );
    // systemd-socket-activate starts the program on the first connection, as systemd does.
    let response = http_client()
        .post(format!("http://127.0.0.1:{}/v1/responses", activated.port))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    expect_ready(&notify);
    assert_eq!(
        mock.seen()[0].header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    let stop = http_client()
        .get(format!("http://127.0.0.1:{}/shutdown", activated.port))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 200);
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = activated.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn abstract_notify_socket_and_the_unset_credential_give_503_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("openai-api-key"), "unset").unwrap();
    let name = format!("codex-proxy-test-{}", std::process::id());
    let notify =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let activated = activate(dir.path(), &format!("@{name}"), &[]);
    let response = http_client()
        .post(format!("http://127.0.0.1:{}/v1/responses", activated.port))
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_ready(&notify);
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "api_key_not_configured");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("codex-responses-api-proxy-install-key"));
}

#[test]
fn listen_pid_for_another_process_is_ignored_and_a_port_is_bound() {
    // LISTEN_* meant for someone else must not make us adopt fd 3.
    let dir = tempfile::tempdir().unwrap();
    let info = dir.path().join("info");
    let mut child = Command::new(binary())
        .args(["--server-info", info.to_str().unwrap()])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"sk-x\n").unwrap();
    }
    let (port, _) = wait_for_server_info(&info, &mut child, dir.path());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    if let Some(worker) = worker_pid_of_opt(child.id()) {
        unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_activated_socket_can_be_a_unix_socket() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{\"ok\":true}")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("openai-api-key"), format!("{TEST_KEY}\n")).unwrap();
    let unix_path = dir.path().join("proxy.sock");
    let port = free_port();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-l")
        .arg(&unix_path)
        .arg("--fdname=http:local")
        .arg("-E")
        .arg(format!("CREDENTIALS_DIRECTORY={}", dir.path().display()))
        .arg(binary())
        .args(["--upstream-url", &mock.url("/v1/responses")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !unix_path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "unix socket never bound"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&unix_path)
        .args(["-d", "{}", "http://localhost/v1/responses"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
    assert_eq!(
        mock.seen()[0].header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    if let Some(worker) = worker_pid_of_opt(child.id()) {
        unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}
