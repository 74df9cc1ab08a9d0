//! The process model seen from outside: what the kernel says about the supervisor and the
//! worker (users, capabilities, dumpability, locks, environment). Most checks need root, which
//! CI has; as an ordinary user only the checks that apply are made.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn status_field(pid: u32, name: &str) -> String {
    proc_status(pid)
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

fn core_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn supervisor_and_worker_are_hardened() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec!["--upstream-url".into(), mock.url("/v1/responses")],
        env: vec![
            ("LD_BIND_NOW".into(), "1".into()),
            ("LD_LIBRARY_PATH".into(), "/nonexistent-for-test".into()),
        ],
        ..Default::default()
    });
    let worker = proxy.worker_pid();
    // A request proves the worker is the one serving.
    let answer = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    for pid in [proxy.pid, worker] {
        assert_eq!(core_limit(pid), "0 0", "core limit of {pid}");
        let status = proc_status(pid);
        let locked: u64 = status["VmLck"]
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap();
        assert!(locked > 0, "VmLck of {pid} is {locked}");
        if is_root() {
            // Only root may read the environment of a non-dumpable process.
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            let text = String::from_utf8_lossy(&environ);
            assert!(
                !text.contains("LD_BIND_NOW") && !text.contains("LD_LIBRARY_PATH"),
                "LD_ variable in {pid}: {text:?}"
            );
            assert!(!text.contains(TEST_KEY));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(!String::from_utf8_lossy(&cmdline).contains(TEST_KEY));
        }
    }

    let worker_status = proc_status(worker);
    assert_eq!(worker_status["NoNewPrivs"], "1");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(worker_status[set], "0000000000000000", "worker {set}");
    }
    if is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let uids: Vec<&str> = worker_status["Uid"].split_whitespace().collect();
        assert_eq!(uids, vec![nobody.uid.to_string(); 4], "worker uid");
        let gids: Vec<&str> = worker_status["Gid"].split_whitespace().collect();
        assert_eq!(gids, vec![nobody.gid.to_string(); 4], "worker gid");
        assert_eq!(worker_status["Groups"], nobody.gid.to_string());
        assert_eq!(
            proc_status(proxy.pid)["Uid"].split_whitespace().next(),
            Some("0")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_user_cannot_read_environ_or_ptrace_either_process() {
    require_root("needs root to act as another user");
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let worker = proxy.worker_pid();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for pid in [proxy.pid, worker] {
        let read = std::process::Command::new("cat")
            .arg(format!("/proc/{pid}/environ"))
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .output()
            .unwrap();
        assert!(!read.status.success(), "nobody read /proc/{pid}/environ");
        assert!(read.stdout.is_empty());

        // The child becomes nobody, then tries PTRACE_ATTACH before exec.
        let target = pid as i32;
        let mut attach = std::process::Command::new("true");
        attach.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
        unsafe {
            attach.pre_exec(move || {
                let r = libc::ptrace(libc::PTRACE_ATTACH, target, 0, 0);
                if r == 0 {
                    libc::ptrace(libc::PTRACE_DETACH, target, 0, 0);
                    return Ok(());
                }
                Err(std::io::Error::last_os_error())
            });
        }
        let error = attach.status().expect_err("nobody attached with ptrace");
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EPERM),
            "ptrace {pid}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_worker_user_is_a_clear_startup_error() {
    require_root("--user only applies when started as root");
    let output = std::process::Command::new(binary())
        .args(["--user", "no-such-user-for-test"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"sk-x\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    let root = std::process::Command::new(binary())
        .args(["--user", "root"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!root.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_happens_while_single_threaded() {
    // The supervisor never starts a runtime: it stays at one thread while serving.
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status_field(proxy.pid, "Threads"), "1");
    assert!(
        status_field(proxy.worker_pid(), "Threads")
            .parse::<u32>()
            .unwrap()
            > 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_under_its_seccomp_filter_and_still_resolves_names() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    // A host name, not an address: name resolution must work under the filter.
    let proxy = Proxy::start(
        &format!("http://localhost:{}/v1/responses", mock.addr.port()),
        &[],
    );
    assert_eq!(status_field(proxy.worker_pid(), "Seccomp"), "2");
    assert_eq!(
        status_field(proxy.pid, "Seccomp"),
        "0",
        "the supervisor is not filtered"
    );
    let answer = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let unfiltered = Proxy::start(&mock.url("/v1/responses"), &["--no-syscall-filter"]);
    assert_eq!(status_field(unfiltered.worker_pid(), "Seccomp"), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_works_when_the_supervisor_may_not_signal_the_worker() {
    // Under the packaged unit the supervisor has no CAP_KILL, so it cannot signal the worker
    // (another uid); the stop must travel over the pipe instead.
    require_root("needs root to drop CAP_KILL and change user");
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let mut proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            mock.url("/v1/responses"),
            "--http-shutdown".into(),
        ],
        launcher: vec![
            "setpriv".into(),
            "--bounding-set".into(),
            "-kill".into(),
            "--".into(),
        ],
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let answer = http_client()
        .get(proxy.url("/shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_threads_sets_the_number_of_serving_threads() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let threads = |n: &str| {
        let proxy = Proxy::start(&mock.url("/v1/responses"), &["--worker-threads", n]);
        status_field(proxy.worker_pid(), "Threads")
            .parse::<u32>()
            .unwrap()
    };
    let (one, four) = (threads("1"), threads("4"));
    assert_eq!(four, one + 3, "1 → {one} threads, 4 → {four} threads");
}

/// The `--server-info` attack of a local user: in a world-writable sticky directory, links
/// planted at the temporary names the supervisor might use (the old `.NAME.PID.tmp`, for the
/// next few thousand PIDs) and at the final name, pointing at a root-only file. Root must
/// write through none of them, and the info file must end up root's own regular file.
#[test]
fn server_info_in_a_shared_directory_never_writes_through_planted_links() {
    require_root("the supervisor must run as root for the attack to matter");
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let secret = tempfile::tempdir().unwrap();
    let victim = secret.path().join("shadow");
    std::fs::write(&victim, "root only\n").unwrap();
    let info = shared.path().join("server-info.json");
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last_pid + 1..last_pid + 4000 {
        let planted = shared.path().join(format!(".server-info.json.{pid}.tmp"));
        std::os::unix::fs::symlink(&victim, planted).unwrap();
    }
    let victim_link = shared.path().join("server-info.json.link");
    std::os::unix::fs::symlink(&victim, &victim_link).unwrap();
    std::fs::rename(&victim_link, &info).unwrap();

    let log = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["--upstream-url", "http://127.0.0.1:9/v1/responses"])
        .arg("--server-info")
        .arg(&info)
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{TEST_KEY}\n").as_bytes()).unwrap();
    }
    // Until the supervisor writes it, the final name is the planted link.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::symlink_metadata(&info)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "root only\n",
            "root wrote through a planted link"
        );
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the proxy did not replace the planted link; stderr:\n{}",
            std::fs::read_to_string(log.path().join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, pid) = wait_for_server_info(&info, &mut child, log.path());
    assert_eq!(pid, child.id());
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&info).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the info file is a regular file"
    );
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.mode() & 0o777, 0o644);
}
