//! Benchmark load generator (not a test): one client, one request at a time, alternating
//! between targets request by request, for the latency tail at concurrency 1.
//!
//! ```text
//! cargo run --release --example bench_alternating_client -- SECONDS BODY NAME=PORT[:KEY]...
//! ```
//!
//! Why: on a shared, noisy machine a stall of the whole machine lands on whichever target is
//! being measured at that moment. `wrk` measures targets one after another, so two targets'
//! p99 at c1 differ by the machine's moments as much as by the targets. Here every cycle sends
//! one request to each target, in a new random order each cycle, so the same moments fall on
//! all of them alike, and each target follows every other one equally often (work a target
//! does after its response lands on the others evenly).
//!
//! Each target has one keep-alive connection (reopened, untimed, if the target closes it).
//! Every request is `POST /v1/responses` with BODY and, where given, `Authorization: Bearer
//! KEY`; its latency runs from the first byte written to the last byte of the response read
//! (its chunked or length-delimited body complete). A response other than 200, malformed
//! framing or a broken connection counts as an error. At the end one JSON line is printed:
//! `{"seconds":S,"cycles":C,"targets":[{"name":…,"requests":…,"errors":…,"body_min":…,
//! "body_max":…,"p50_us":…,"p90_us":…,"p99_us":…,"p999_us":…,"max_us":…,"mean_us":…},…]}`
//! (`body_min`/`body_max`: the smallest and largest decoded body, for checking that every
//! target relayed the same response).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Target {
    name: String,
    port: u16,
    request: Vec<u8>,
    connection: Option<TcpStream>,
    buffer: Vec<u8>,
    latencies_ns: Vec<u64>,
    errors: u64,
    body_min: usize,
    body_max: usize,
}

/// How a response ended: whether the connection may carry the next request.
enum Ending {
    KeepAlive,
    Close,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: bench_alternating_client SECONDS BODY NAME=PORT[:KEY]...");
        std::process::exit(2);
    }
    let seconds: f64 = args[0].parse().expect("SECONDS is a number");
    let body = &args[1];
    let mut targets: Vec<Target> = args[2..]
        .iter()
        .map(|spec| parse_target(spec, body))
        .collect();

    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut cycles = 0usize;
    let mut order: Vec<usize> = (0..targets.len()).collect();
    // Seeded from the clock (an odd number: xorshift must not start at zero).
    let mut random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    while Instant::now() < deadline {
        // Fisher-Yates with xorshift64: a new order every cycle.
        for i in (1..order.len()).rev() {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            order.swap(i, (random % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            one_request(&mut targets[i]);
        }
        cycles += 1;
    }

    let summaries: Vec<String> = targets.iter_mut().map(summary).collect();
    println!(
        "{{\"seconds\":{seconds},\"cycles\":{cycles},\"targets\":[{}]}}",
        summaries.join(",")
    );
}

fn parse_target(spec: &str, body: &str) -> Target {
    let (name, rest) = spec.split_once('=').expect("a target is NAME=PORT[:KEY]");
    let (port, key) = match rest.split_once(':') {
        Some((port, key)) => (port, Some(key)),
        None => (rest, None),
    };
    let port: u16 = port.parse().expect("PORT is a port number");
    let mut request = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    Target {
        name: name.to_string(),
        port,
        request: request.into_bytes(),
        connection: None,
        buffer: Vec::with_capacity(64 * 1024),
        latencies_ns: Vec::with_capacity(1 << 20),
        errors: 0,
        body_min: usize::MAX,
        body_max: 0,
    }
}

fn one_request(target: &mut Target) {
    if target.connection.is_none() {
        match TcpStream::connect(("127.0.0.1", target.port)) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                target.connection = Some(stream);
            }
            Err(_) => {
                target.errors += 1;
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        }
    }
    let stream = target.connection.as_mut().expect("connected above");
    target.buffer.clear();
    let start = Instant::now();
    let result = stream
        .write_all(&target.request)
        .map_err(|_| "write failed")
        .and_then(|()| read_response(stream, &mut target.buffer));
    let elapsed = start.elapsed();
    match result {
        Ok((ending, body_len)) => {
            target.latencies_ns.push(elapsed.as_nanos() as u64);
            target.body_min = target.body_min.min(body_len);
            target.body_max = target.body_max.max(body_len);
            if let Ending::Close = ending {
                target.connection = None;
            }
        }
        Err(_) => {
            target.errors += 1;
            target.connection = None;
        }
    }
}

/// Reads one whole 200 response from `stream`: how it ended and its decoded body's length.
fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<(Ending, usize), &'static str> {
    let (head_len, chunked, length, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buffer).map_err(|_| "bad response head")? {
            httparse::Status::Complete(head_len) => {
                if response.code != Some(200) {
                    return Err("status other than 200");
                }
                let mut chunked = false;
                let mut length = None;
                let mut close = response.version == Some(0);
                for header in response.headers.iter() {
                    let value = std::str::from_utf8(header.value).map_err(|_| "bad header")?;
                    let has = |token: &str| {
                        value
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case(token))
                    };
                    if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = has("chunked");
                    } else if header.name.eq_ignore_ascii_case("content-length") {
                        length = Some(value.trim().parse::<usize>().map_err(|_| "bad length")?);
                    } else if header.name.eq_ignore_ascii_case("connection") {
                        if has("close") {
                            close = true;
                        } else if has("keep-alive") {
                            close = false;
                        }
                    }
                }
                break (head_len, chunked, length, close);
            }
            httparse::Status::Partial => fill(stream, buffer)?,
        }
    };
    let ending = if close {
        Ending::Close
    } else {
        Ending::KeepAlive
    };
    if chunked {
        let mut at = head_len;
        let mut body_len = 0usize;
        loop {
            let line_end = find_line_end(stream, buffer, at)?;
            let line = &buffer[at..line_end];
            let digits = line.split(|&b| b == b';').next().unwrap_or(b"");
            if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err("bad chunk size");
            }
            let digits = std::str::from_utf8(digits).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(digits, 16).map_err(|_| "bad chunk size")?;
            at = line_end + 2;
            if size == 0 {
                // Trailer fields (none expected) up to the empty line.
                loop {
                    let end = find_line_end(stream, buffer, at)?;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            while buffer.len() < at + size + 2 {
                fill(stream, buffer)?;
            }
            if &buffer[at + size..at + size + 2] != b"\r\n" {
                return Err("chunk data not followed by CRLF");
            }
            body_len += size;
            at += size + 2;
        }
        if buffer.len() != at {
            return Err("bytes after the response");
        }
        Ok((ending, body_len))
    } else if let Some(length) = length {
        while buffer.len() < head_len + length {
            fill(stream, buffer)?;
        }
        if buffer.len() != head_len + length {
            return Err("bytes after the response");
        }
        Ok((ending, length))
    } else {
        Err("response without a length or chunked body")
    }
}

/// Where the line that starts at `at` ends (its CRLF), reading more as needed.
fn find_line_end(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    at: usize,
) -> Result<usize, &'static str> {
    loop {
        if let Some(offset) = find_crlf(&buffer[at..]) {
            return Ok(at + offset);
        }
        if buffer.len() - at > 4096 {
            return Err("line too long");
        }
        fill(stream, buffer)?;
    }
}

fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), &'static str> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) => Err("connection closed mid-response"),
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(_) => Err("read failed"),
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

fn summary(target: &mut Target) -> String {
    let latencies = &mut target.latencies_ns;
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1e3
    };
    let mean = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().sum::<u64>() as f64 / latencies.len() as f64 / 1e3
    };
    format!(
        "{{\"name\":\"{}\",\"requests\":{},\"errors\":{},\"body_min\":{},\"body_max\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1}}}",
        target.name,
        latencies.len(),
        target.errors,
        if target.body_min == usize::MAX { 0 } else { target.body_min },
        target.body_max,
        percentile(50.0),
        percentile(90.0),
        percentile(99.0),
        percentile(99.9),
        percentile(100.0),
        mean
    )
}
