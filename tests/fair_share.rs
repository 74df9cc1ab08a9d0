//! Hostile local users against the real binary: one user holding more connections than their
//! share while another user is served, and many large unfinished bodies against the memory
//! budget for buffered request bodies.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// The worker's resident memory, from /proc/PID/status.
fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Reads what the server sent until it closes or is silent for `limit`.
fn read_answer(stream: &mut std::net::TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_large_unfinished_bodies_stay_within_the_body_memory_budget() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    // One user (this test) may use the whole budget here, so that the global budget is the
    // one reached.
    let budget = (256 * MIB).to_string();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &[
            "--max-buffered-bodies",
            &budget,
            "--max-buffered-bodies-per-user",
            &budget,
            "--idle-timeout",
            "120",
        ],
    );
    let worker = proxy.worker_pid();
    let idle_rss = rss_bytes(worker);
    let body_len = 30 * MIB;
    let port = proxy.port;
    // 40 attackers, each sending a 30 MiB body but its last byte, on its own thread.
    let (refused_tx, refused_rx) = std::sync::mpsc::channel::<(Duration, String)>();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
    let attackers: Vec<_> = (0..40)
        .map(|_| {
            let (refused_tx, hold_tx) = (refused_tx.clone(), hold_tx.clone());
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let head = format!(
                    "POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n"
                );
                let started = Instant::now();
                stream.write_all(head.as_bytes()).unwrap();
                // A body that does not fit is refused from its declared length, at once.
                let answer = read_answer(&mut stream, Duration::from_millis(1500));
                if !answer.is_empty() {
                    refused_tx.send((started.elapsed(), answer)).unwrap();
                    return;
                }
                let chunk = vec![b'a'; MIB];
                let mut sent = 0;
                while sent < body_len - 1 {
                    let n = chunk.len().min(body_len - 1 - sent);
                    stream.write_all(&chunk[..n]).unwrap();
                    sent += n;
                }
                hold_tx.send(stream).unwrap();
            })
        })
        .collect();
    drop((refused_tx, hold_tx));
    for attacker in attackers {
        attacker.join().unwrap();
    }
    let held: Vec<std::net::TcpStream> = hold_rx.iter().collect();
    let refused: Vec<(Duration, String)> = refused_rx.iter().collect();
    let peak_rss = rss_bytes(worker);
    eprintln!(
        "idle RSS {} MiB, with {} bodies held and {} refused: {} MiB",
        idle_rss / MIB,
        held.len(),
        refused.len(),
        peak_rss / MIB
    );
    assert!(peak_rss < 512 * MIB, "worker RSS {} MiB", peak_rss / MIB);
    assert_eq!(held.len(), 8, "bodies held within 256 MiB");
    assert_eq!(refused.len(), 32);
    for (took, answer) in &refused {
        assert!(*took < Duration::from_secs(2), "refused after {took:?}");
        assert_eq!(status_of(answer), 503, "{answer}");
        assert!(answer.contains("body_memory_full"), "{answer}");
    }
    // Another request that does not fit is refused at once instead of hanging.
    let started = Instant::now();
    let mut other = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    other
        .write_all(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n{")
        .unwrap();
    let answer = read_answer(&mut other, Duration::from_secs(5));
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A small request still fits and is served.
    let ok = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(mock.seen().iter().all(|s| s.body.len() < 100));

    // The attackers leave: the memory goes back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let rss = rss_bytes(worker);
        if rss < idle_rss + 64 * MIB || Instant::now() > deadline {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("after the attackers left: {} MiB", after / MIB);
    assert!(
        after < idle_rss + 64 * MIB,
        "RSS {} MiB after the attack (idle {} MiB, peak {} MiB)",
        after / MIB,
        idle_rss / MIB,
        peak_rss / MIB
    );
    let log = proxy.stderr_once_it_has("refused: request bodies fill", Duration::from_secs(5));
    assert!(
        log.matches("refused: request bodies fill").count() <= 3,
        "refusals are logged at most once a second: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_share_of_body_memory_is_answered_503_when_full_and_413_when_exceeded() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--max-buffered-bodies-per-user", "1000"],
    );
    let head = |len: usize| {
        format!("POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n{{")
    };
    // Larger than the whole share: 413 at once.
    let mut larger = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    larger.write_all(head(2000).as_bytes()).unwrap();
    let answer = read_answer(&mut larger, Duration::from_secs(5));
    assert_eq!(status_of(&answer), 413, "{answer}");
    // One unfinished 600-byte body holds 600 of the 1,000 bytes: a second gets 503 at once.
    let mut first = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    first.write_all(head(600).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut second = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    second.write_all(head(600).as_bytes()).unwrap();
    let answer = read_answer(&mut second, Duration::from_secs(5));
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("body_memory_share_full"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Once the first body is complete and answered, its memory is free again.
    first.write_all(&[b' '; 599]).unwrap();
    let answer = read_answer(&mut first, Duration::from_secs(2));
    assert_eq!(status_of(&answer), 200, "{answer}");
    let ok = http_client()
        .post(proxy.url("/v1/responses"))
        .body(format!("{{{}}}", " ".repeat(900)))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// What the attacker's connections came to, as its child process counted them.
#[derive(Debug)]
struct AttackCounts {
    /// Connections with a complete head and an unfinished body, still open and unanswered.
    held_with_body: u32,
    /// Idle connections still open and unanswered.
    held_idle: u32,
    /// Connections answered 429.
    refused_429: u32,
}

/// A child process running as `uid` that opens `with_body` connections to the unix socket
/// at `socket`, each sending a complete head and the first byte of a 1,000-byte body, then
/// `idle` connections that send nothing, and holds them all until the returned pipe is
/// closed. It only makes system calls between fork and exit.
struct Attacker {
    pid: libc::pid_t,
    release: std::os::fd::OwnedFd,
    counts: AttackCounts,
}

const MAX_ATTACK: usize = 1024;

impl Attacker {
    fn start(uid: u32, socket: &std::path::Path, with_body: usize, idle: usize) -> Attacker {
        use std::os::fd::FromRawFd;
        assert!(with_body + idle <= MAX_ATTACK);
        let head = b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{";
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = std::os::unix::ffi::OsStrExt::as_bytes(socket.as_os_str());
        assert!(path.len() < address.sun_path.len());
        for (i, b) in path.iter().enumerate() {
            address.sun_path[i] = *b as libc::c_char;
        }
        let (mut ready, mut release) = ([0i32; 2], [0i32; 2]);
        unsafe {
            assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(release.as_mut_ptr()), 0);
        }
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // The child: system calls only.
            unsafe {
                libc::close(ready[0]);
                libc::close(release[1]);
                if libc::syscall(libc::SYS_setgid, 65534) != 0
                    || libc::syscall(libc::SYS_setuid, uid) != 0
                {
                    libc::_exit(2);
                }
                let mut fds = [-1i32; MAX_ATTACK];
                let open = |fds: &mut [i32; MAX_ATTACK], from: usize, to: usize, send: bool| {
                    for fd in fds.iter_mut().take(to).skip(from) {
                        let s =
                            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                        let connected = libc::connect(
                            s,
                            (&address as *const libc::sockaddr_un).cast(),
                            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                        ) == 0;
                        if connected && send {
                            libc::write(s, head.as_ptr().cast(), head.len());
                        }
                        *fd = if connected { s } else { -1 };
                    }
                };
                // Open and unanswered, answered 429, (closed or never connected).
                let count = |fds: &[i32]| {
                    let (mut held, mut refused) = (0u32, 0u32);
                    for &fd in fds {
                        if fd < 0 {
                            continue;
                        }
                        let mut buf = [0u8; 16];
                        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK);
                        if n < 0 && *libc::__errno_location() == libc::EAGAIN {
                            held += 1;
                        } else if n >= 12 && &buf[..12] == b"HTTP/1.1 429" {
                            refused += 1;
                        }
                    }
                    (held, refused)
                };
                let pause = libc::timespec {
                    tv_sec: 2,
                    tv_nsec: 0,
                };
                open(&mut fds, 0, with_body, true);
                libc::nanosleep(&pause, std::ptr::null_mut());
                let (held_with_body, refused_a) = count(&fds[..with_body]);
                open(&mut fds, with_body, with_body + idle, false);
                libc::nanosleep(&pause, std::ptr::null_mut());
                let (held_idle, refused_b) = count(&fds[with_body..with_body + idle]);
                let report = [held_with_body, held_idle, refused_a + refused_b];
                libc::write(ready[1], report.as_ptr().cast(), 12);
                let mut byte = 0u8;
                libc::read(release[0], (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        unsafe {
            libc::close(ready[1]);
            libc::close(release[0]);
        }
        let mut report = [0u8; 12];
        let mut ready_pipe = unsafe { std::fs::File::from_raw_fd(ready[0]) };
        ready_pipe
            .read_exact(&mut report)
            .expect("the attacker reports its connections");
        let word = |i: usize| u32::from_ne_bytes(report[i * 4..i * 4 + 4].try_into().unwrap());
        Attacker {
            pid,
            release: unsafe { std::os::fd::OwnedFd::from_raw_fd(release[1]) },
            counts: AttackCounts {
                held_with_body: word(0),
                held_idle: word(1),
                refused_429: word(2),
            },
        }
    }

    /// Lets go of every connection and reaps the child.
    fn stop(self) {
        drop(self.release);
        let mut status = 0;
        unsafe {
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_holding_more_connections_than_their_share_locks_no_one_out() {
    assert!(
        is_root(),
        "this test creates users and must run as root (as in CI)"
    );
    let attacker = TestUser::create("x");
    let victim = TestUser::create("v");
    let mock = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let socket = dir.path().join("proxy.sock");
    // 256 open files: the derived caps are 24 connections per user, 6 of them unfinished.
    // Without them, the attacker's 300 connections alone exhaust the worker's descriptors.
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            mock.url("/v1/responses"),
            "--unix-socket".into(),
            socket.to_str().unwrap().into(),
        ],
        launcher: vec!["prlimit".into(), "--nofile=256:256".into()],
        ..Default::default()
    });
    let log = proxy.stderr_once_it_has("fair shares", Duration::from_secs(5));
    assert!(
        log.contains("24 connection(s) per user, 6 unfinished request(s) per user"),
        "{log}"
    );
    let held = Attacker::start(attacker.uid, &socket, 300, 300);
    eprintln!("attacker: {:?}", held.counts);

    // The other user is served, over the unix socket and over TCP, while the attacker holds
    // everything they could open.
    let started = Instant::now();
    let (status, text) = curl_as(
        victim.uid,
        &[
            "--unix-socket",
            socket.to_str().unwrap(),
            "-d",
            "{}",
            "http://localhost/v1/responses",
        ],
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = curl_as(victim.uid, &["-d", "{}", &proxy.url("/v1/responses")]);
    assert_eq!(status, 200, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The attacker kept no more than their share: 6 unfinished requests, 24 connections.
    let counts = &held.counts;
    assert_eq!(counts.held_with_body, 6, "{counts:?}");
    assert_eq!(counts.held_with_body + counts.held_idle, 24, "{counts:?}");
    assert!(counts.refused_429 > 0, "{counts:?}");
    held.stop();

    // Refusals are logged, but not one line each.
    let log = proxy.stderr_once_it_has("too many open connections", Duration::from_secs(5));
    // The unfinished requests were counted against the attacker's own uid (the caller of the
    // request, not the unknown bucket).
    let attacker_line = format!(
        "refused: too many unfinished requests of this user (uid {};",
        attacker.uid
    );
    assert!(log.contains(&attacker_line), "{log}");
    let lines = log.matches("refused: too many").count();
    assert!((1..=10).contains(&lines), "{lines} refusal lines: {log}");
}
