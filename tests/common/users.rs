//! Real local users and groups for the tests that check who is calling (they need root, which
//! CI has): created with `useradd`/`groupadd`, removed when dropped, and `curl` run as one.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// A system user (no home, no login shell) that exists for the duration of a test.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    pub fn create(tag: &str) -> TestUser {
        Self::create_in(tag, None)
    }

    /// A user that is also a member of `group`.
    pub fn create_in(tag: &str, group: Option<&str>) -> TestUser {
        let name = format!("cxt{tag}{}", std::process::id() % 100_000);
        let mut useradd = Command::new("useradd");
        useradd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if let Some(group) = group {
            useradd.args(["--groups", group]);
        }
        let status = useradd.arg(&name).status().expect("useradd");
        assert!(status.success(), "useradd {name} (the test needs root)");
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        TestUser { name, uid }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// A system group that exists for the duration of a test.
pub struct TestGroup(pub String);

impl TestGroup {
    pub fn create() -> TestGroup {
        let name = format!("cxtgroup{}", std::process::id() % 100_000);
        assert!(Command::new("groupadd")
            .args(["--system", &name])
            .status()
            .unwrap()
            .success());
        TestGroup(name)
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.0).status();
    }
}

/// `curl` run as `uid` (group nobody), giving up after 10 s; returns (status code, body).
pub fn curl_as(uid: u32, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--noproxy", "*"])
        .args(["--max-time", "10"])
        .args(args)
        .uid(uid)
        .gid(65534)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
