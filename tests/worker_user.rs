//! The worker's user matters: every process of the same uid can stop or kill the worker. At
//! start the supervisor refuses uid 0 and warns, naming the reasons, when the worker user
//! looks human or shared (a person's uid range, a login shell, a home directory it owns,
//! other processes already running as it); a dedicated system account starts quietly.
//! Needs root (it creates users and starts the worker as them), as CI has.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// A user that exists for the duration of a test; `useradd` arguments as given.
struct TestAccount(String);

impl TestAccount {
    fn create(tag: &str, useradd_args: &[&str]) -> TestAccount {
        let name = format!("cxw{tag}{}", std::process::id() % 100_000);
        let status = Command::new("useradd")
            .args(useradd_args)
            .arg(&name)
            .status()
            .expect("useradd");
        assert!(status.success(), "useradd {name}");
        TestAccount(name)
    }
}

impl Drop for TestAccount {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["--remove", &self.0]).status();
    }
}

fn start_as(user: &str, upstream: &MockUpstream) -> Proxy {
    Proxy::start(&upstream.url("/v1/responses"), &["--user", user])
}

const WARNING: &str = "whoever runs as uid";

#[tokio::test(flavor = "multi_thread")]
async fn a_human_or_shared_worker_user_is_warned_about_and_a_dedicated_one_is_not() {
    assert!(
        is_root(),
        "this test creates users and starts the worker as them: run it as root (CI does)"
    );
    let upstream = MockUpstream::start(|_| Reply::json(200, "{}")).await;

    // A person's account: uid from UID_MIN up, a login shell, a home directory.
    let person = TestAccount::create("p", &["--create-home", "--shell", "/bin/bash"]);
    let proxy = start_as(&person.0, &upstream);
    let log = proxy.stderr_once_it_has(WARNING, Duration::from_secs(5));
    let line = log
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning for {}:\n{log}", person.0));
    assert!(line.contains("WARN"), "{line}");
    for reason in [
        "range of people's accounts",
        "login shell /bin/bash",
        "home directory",
    ] {
        assert!(line.contains(reason), "{reason:?} missing: {line}");
    }
    // A warning, not a refusal: the proxy serves.
    let r = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(proxy);

    // A dedicated system account starts without the warning...
    let service = TestAccount::create(
        "s",
        &[
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ],
    );
    let proxy = start_as(&service.0, &upstream);
    let log = proxy.stderr_once_it_has("serving", Duration::from_secs(5));
    assert!(!log.contains(WARNING), "{log}");
    drop(proxy);

    // ...unless something else already runs as its user: that process could stop the worker.
    let shared = TestAccount::create(
        "x",
        &[
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ],
    );
    let squatter = Command::new("setpriv")
        .args([
            "--reuid",
            &shared.0,
            "--regid",
            "nogroup",
            "--clear-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .expect("setpriv (util-linux)");
    let mut squatter = KillOnDrop(squatter);
    std::thread::sleep(Duration::from_millis(100));
    assert!(squatter.0.try_wait().unwrap().is_none(), "setpriv failed");
    let proxy = start_as(&shared.0, &upstream);
    let log = proxy.stderr_once_it_has(WARNING, Duration::from_secs(5));
    assert!(
        log.lines().any(|l| l.contains(WARNING)
            && l.contains("already runs 1 other process(es)")
            && l.contains("sleep")),
        "{log}"
    );
    drop(proxy);
    let _ = squatter.0.kill();

    // Root itself is refused outright.
    let root = Command::new(binary())
        .args([
            "--user",
            "root",
            "--upstream-url",
            &upstream.url("/v1/responses"),
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"sk-x\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!root.status.success());
    let stderr = String::from_utf8_lossy(&root.stderr);
    assert!(
        stderr.contains("refusing to run the worker") && stderr.contains("uid 0"),
        "{stderr}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
