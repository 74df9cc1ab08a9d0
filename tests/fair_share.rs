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
