//! Exchange dumps (`--dump-dir`), in the reference proxy's file shape: each exchange becomes
//! `NNNNNN-MILLIS-request.json` (`method`, `url`, `headers` as `{name, value}` pairs, `body`:
//! the JSON it held, else its text), written once the response's head is there, and
//! `NNNNNN-MILLIS-response.json` (`status`, `headers`, `body`, and how the body ended in
//! `termination`), written once the response body ends or is dropped. Both also carry the
//! caller's `uid`; a WebSocket turn's request is dumped as the POST it is served as, marked
//! `"websocket": true`; a relayed turn (strict mode's relay) as the handshake's `GET` with the
//! `response.create` message as its body, and its response's body is the upstream's events
//! for that response, one message a line.
//!
//! Owns: the dump directory's descriptor (opened and checked by root, the worker user's, mode
//! 0700), the numbering, the caps (`--dump-max-files`, `--dump-max-bytes`: the oldest files
//! go first), the per-user filter (`--dump-user`) and the redaction: `Authorization`,
//! `Proxy-Authorization`, `Api-Key`, `X-Api-Key` and every `*cookie*` header become
//! `[REDACTED]`, and the upstream key (and the credential a request went upstream with) is
//! cleaned out of every other header, the URL and both bodies (`upstream::redact`). Files are
//! created relative to the directory's descriptor with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode
//! 0600, so a planted name is never written through. Formatting and writing run after the
//! response, on the after-response thread (`logging::defer`); with dumping off nothing here
//! runs at all.
//!
//! Uses: `crate::logging`, `crate::worker::server`, `crate::worker::upstream` and bytes,
//! http_body_util, hyper, nix, serde, serde_json, tracing.

use crate::worker::server::http::{Body, BoxError};
use crate::worker::upstream::{redact, SentCredential};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::Response;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// What a redacted header value becomes (the reference's marker).
const REDACTED: &str = "[REDACTED]";

/// Most bytes of one body kept in a dump (a quarter of `--dump-max-bytes` when that is less);
/// the rest is left out and the dump says `body_truncated`.
const BODY_LIMIT: usize = 8 << 20;

/// The dump settings, parsed by the worker.
pub(crate) struct DumpSettings {
    pub directory: OwnedFd,
    pub max_files: usize,
    pub max_bytes: u64,
    /// Only these uids are dumped (`None`: everyone).
    pub users: Option<HashSet<u32>>,
}

/// The dump directory and what it holds; shared by every shard.
pub(crate) struct ExchangeDumps {
    directory: OwnedFd,
    users: Option<HashSet<u32>>,
    max_files: usize,
    max_bytes: u64,
    body_limit: usize,
    /// The upstream key's secret part (`None` without a static key).
    key: Option<&'static [u8]>,
    next: AtomicU64,
    kept: Mutex<Kept>,
}

/// The dump files in the directory, oldest first, and their total size.
#[derive(Default)]
struct Kept {
    files: VecDeque<(String, u64)>,
    bytes: u64,
}

impl ExchangeDumps {
    /// Takes over the directory: the dumps already there (from earlier runs) count against the
    /// caps, and the numbering goes on after the highest. `key` is the `Authorization` value
    /// of the static key, if any.
    pub(crate) fn open(settings: DumpSettings, key: Option<&'static [u8]>) -> Result<Self, String> {
        let mut found = existing_dumps(&settings.directory)
            .map_err(|e| format!("cannot list the dump directory: {e}"))?;
        found.sort();
        let next = found.last().map_or(1, |(number, _, _)| number + 1);
        let mut kept = Kept::default();
        for (_, name, size) in found {
            kept.bytes += size;
            kept.files.push_back((name, size));
        }
        let key = key.map(|header| header.strip_prefix(b"Bearer ").unwrap_or(header));
        let dumps = ExchangeDumps {
            directory: settings.directory,
            users: settings.users,
            max_files: settings.max_files.max(1),
            max_bytes: settings.max_bytes,
            body_limit: BODY_LIMIT.min((settings.max_bytes / 4) as usize),
            key,
            next: AtomicU64::new(next),
            kept: Mutex::new(kept),
        };
        dumps.rotate(&mut dumps.kept.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(dumps)
    }

    /// Starts the dump of one exchange of `uid`, or `None` when that user is not dumped.
    pub(crate) fn begin(
        self: &Arc<Self>,
        uid: Option<u32>,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        websocket: bool,
    ) -> Option<Arc<Exchange>> {
        if let Some(users) = &self.users {
            if !uid.is_some_and(|uid| users.contains(&uid)) {
                return None;
            }
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Some(Arc::new(Exchange {
            dumps: self.clone(),
            prefix: format!("{number:06}-{millis}"),
            uid,
            request: Mutex::new(Some(PendingRequest {
                method: method.to_owned(),
                url: url.to_owned(),
                headers: headers.clone(),
                body: Bytes::new(),
                websocket,
            })),
        }))
    }

    /// Writes a new file (never through anything planted at its name), then removes the
    /// oldest files beyond the caps.
    fn write(&self, name: String, contents: &[u8]) {
        let created = openat(
            &self.directory,
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        );
        let written = created
            .map_err(std::io::Error::from)
            .and_then(|file| std::fs::File::from(file).write_all(contents));
        if let Err(e) = written {
            tracing::warn!("cannot write the exchange dump {name}: {e}");
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.bytes += contents.len() as u64;
        kept.files.push_back((name, contents.len() as u64));
        self.rotate(&mut kept);
    }

    /// Removes the oldest dumps until at most `max_files` remain and, but for the newest,
    /// they hold at most `max_bytes`.
    fn rotate(&self, kept: &mut Kept) {
        while kept.files.len() > self.max_files
            || (kept.bytes > self.max_bytes && kept.files.len() > 1)
        {
            let Some((name, size)) = kept.files.pop_front() else {
                break;
            };
            kept.bytes = kept.bytes.saturating_sub(size);
            match unlinkat(&self.directory, name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => tracing::warn!("cannot remove the old exchange dump {name}: {e}"),
            }
        }
    }

    /// The secrets cleaned out of a dump: the key, and the credential a request was sent with.
    fn secrets<'a>(&'a self, credential: Option<&'a HeaderValue>) -> Vec<&'a [u8]> {
        let mut secrets: Vec<&[u8]> = self.key.into_iter().collect();
        if let Some(credential) = credential {
            let secret = redact::secret_of(credential);
            if self.key != Some(secret) {
                secrets.push(secret);
            }
        }
        secrets
    }
}

/// The dump files already in the directory: (number, name, size), in no order.
fn existing_dumps(directory: &OwnedFd) -> nix::Result<Vec<(u64, String, u64)>> {
    let mut listing = nix::dir::Dir::openat(
        directory,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut found = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        let Some(number) = dump_number(name) else {
            continue;
        };
        let Ok(stat) = fstatat(directory, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            continue;
        }
        found.push((number, name.to_owned(), stat.st_size.max(0) as u64));
    }
    Ok(found)
}

/// The number of a dump file's name (`NNNNNN-MILLIS-request.json`), `None` for other names.
fn dump_number(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix("-request.json")
        .or_else(|| name.strip_suffix("-response.json"))?;
    let (number, millis) = stem.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(number) || !digits(millis) {
        return None;
    }
    number.parse().ok()
}

/// One exchange being dumped.
pub(crate) struct Exchange {
    dumps: Arc<ExchangeDumps>,
    prefix: String,
    uid: Option<u32>,
    /// Until its file is written.
    request: Mutex<Option<PendingRequest>>,
}

struct PendingRequest {
    method: String,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    websocket: bool,
}

#[derive(Serialize)]
struct RequestDump<'a> {
    method: &'a str,
    url: String,
    headers: Vec<HeaderDump>,
    body: serde_json::Value,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    body_truncated: bool,
    uid: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    websocket: bool,
}

#[derive(Serialize)]
struct ResponseDump {
    status: u16,
    headers: Vec<HeaderDump>,
    body: serde_json::Value,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    body_truncated: bool,
    termination: Termination,
    uid: Option<u32>,
}

#[derive(Serialize)]
struct HeaderDump {
    name: String,
    value: String,
}

/// How a response body ended.
#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Termination {
    /// It was read to its end.
    Eof,
    /// Reading it failed (the upstream broke off).
    ReadError,
    /// It was dropped before its end (the client left).
    Unknown,
}

impl Exchange {
    /// The request's body is read: kept for the request file, written with the response's
    /// head (when the credential the request went upstream with is known, to clean it out).
    pub(crate) fn request_body(&self, body: &Bytes) {
        if let Some(pending) = self
            .request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            pending.body = body.clone();
        }
    }

    fn write_request(&self, pending: PendingRequest, credential: Option<&HeaderValue>) {
        let secrets = self.dumps.secrets(credential);
        let (body, body_truncated) = cut(&pending.body, self.dumps.body_limit);
        let dump = RequestDump {
            method: &pending.method,
            url: text_without(pending.url.as_bytes(), &secrets),
            headers: headers_dump(&pending.headers, &secrets),
            body: body_dump(body, body_truncated, &secrets),
            body_truncated,
            uid: self.uid,
            websocket: pending.websocket,
        };
        self.write_json(&format!("{}-request.json", self.prefix), &dump);
    }

    /// Has the request's file written on the after-response thread (once: the first call).
    fn write_request_later(self: &Arc<Self>, credential: Option<HeaderValue>) {
        let pending = self
            .request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(pending) = pending {
            let exchange = self.clone();
            crate::logging::defer(move || exchange.write_request(pending, credential.as_ref()));
        }
    }

    fn write_json(&self, name: &str, dump: &impl Serialize) {
        match serde_json::to_vec_pretty(dump) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                self.dumps.write(name.to_owned(), &bytes);
            }
            Err(e) => tracing::warn!("cannot format the exchange dump {name}: {e}"),
        }
    }

    /// The response to send instead of `response`: the same, its body copied into the dump as
    /// it passes (written when it ends). The request's file is written now (its body empty
    /// if it was never read).
    pub(crate) fn response(self: Arc<Self>, response: Response<Body>) -> Response<Body> {
        let credential = response
            .extensions()
            .get::<SentCredential>()
            .map(|c| c.0.clone());
        self.write_request_later(credential.clone());
        let capture = Capture {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            credential,
            body: Vec::new(),
            truncated: false,
            exchange: self,
        };
        response.map(|inner| {
            DumpingBody {
                inner,
                capture: Some(capture),
            }
            .boxed_unsync()
        })
    }
}

impl Exchange {
    /// The answer to a relayed WebSocket turn (`response.create` passed to the upstream's own
    /// socket): the request's file is written now; the upstream's events for this response,
    /// one message a line, are kept as they pass and written when the turn ends.
    /// `credential` is what the upstream handshake carried, to clean out of the dump.
    pub(crate) fn relayed_turn(self: Arc<Self>, credential: Option<HeaderValue>) -> RelayedTurn {
        self.write_request_later(credential.clone());
        RelayedTurn {
            capture: Some(Capture {
                status: 200,
                headers: HeaderMap::new(),
                credential,
                body: Vec::new(),
                truncated: false,
                exchange: self,
            }),
        }
    }
}

/// The dump of a relayed WebSocket turn's answer: its events, until the terminal one
/// ([`RelayedTurn::finish`]); dropped before that (the client or the upstream left), it is
/// written as ended `unknown`.
pub(crate) struct RelayedTurn {
    capture: Option<Capture>,
}

impl RelayedTurn {
    /// One upstream message of this response.
    pub(crate) fn event(&mut self, text: &str) {
        if let Some(capture) = self.capture.as_mut() {
            capture.keep(text.as_bytes());
            capture.keep(b"\n");
        }
    }

    /// The terminal event was the last: the dump is written with `status`.
    pub(crate) fn finish(mut self, status: u16) {
        if let Some(mut capture) = self.capture.take() {
            capture.status = status;
            crate::logging::defer(move || capture.write(Termination::Eof));
        }
    }
}

impl Drop for RelayedTurn {
    fn drop(&mut self) {
        if let Some(capture) = self.capture.take() {
            crate::logging::defer(move || capture.write(Termination::Unknown));
        }
    }
}

/// What a response dump holds until its body ends.
struct Capture {
    exchange: Arc<Exchange>,
    status: u16,
    headers: HeaderMap,
    credential: Option<HeaderValue>,
    body: Vec<u8>,
    truncated: bool,
}

impl Capture {
    /// Keeps `data`, as far as the body limit allows.
    fn keep(&mut self, data: &[u8]) {
        let room = self
            .exchange
            .dumps
            .body_limit
            .saturating_sub(self.body.len());
        self.body.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
    }

    fn write(self, termination: Termination) {
        let dumps = &self.exchange.dumps;
        let secrets = dumps.secrets(self.credential.as_ref());
        let dump = ResponseDump {
            status: self.status,
            headers: headers_dump(&self.headers, &secrets),
            body: body_dump(&self.body, self.truncated, &secrets),
            body_truncated: self.truncated,
            termination,
            uid: self.exchange.uid,
        };
        self.exchange
            .write_json(&format!("{}-response.json", self.exchange.prefix), &dump);
    }
}

/// A response body that keeps a copy of what passes (up to the body limit) for the dump.
struct DumpingBody {
    inner: Body,
    capture: Option<Capture>,
}

impl DumpingBody {
    fn finish(&mut self, termination: Termination) {
        if let Some(capture) = self.capture.take() {
            crate::logging::defer(move || capture.write(termination));
        }
    }
}

impl HttpBody for DumpingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(capture)) = (frame.data_ref(), this.capture.as_mut()) {
                    capture.keep(data);
                }
                if this.inner.is_end_stream() {
                    this.finish(Termination::Eof);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Termination::ReadError),
            Poll::Ready(None) => this.finish(Termination::Eof),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DumpingBody {
    fn drop(&mut self) {
        let termination = if self.inner.is_end_stream() {
            Termination::Eof
        } else {
            Termination::Unknown
        };
        self.finish(termination);
    }
}

/// Whether a header's value is a credential, dumped as `[REDACTED]` whatever it holds.
fn is_credential_header(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "proxy-authorization" | "api-key" | "x-api-key"
    ) || name.contains("cookie")
}

fn headers_dump(headers: &HeaderMap, secrets: &[&[u8]]) -> Vec<HeaderDump> {
    headers
        .iter()
        .map(|(name, value)| HeaderDump {
            name: name.as_str().to_owned(),
            value: if is_credential_header(name.as_str()) {
                REDACTED.to_owned()
            } else {
                text_without(value.as_bytes(), secrets)
            },
        })
        .collect()
}

/// `bytes` as text, every secret (and any token revealing part of one) replaced.
fn text_without(bytes: &[u8], secrets: &[&[u8]]) -> String {
    String::from_utf8_lossy(&without(bytes, secrets)).into_owned()
}

fn without<'a>(bytes: &'a [u8], secrets: &[&[u8]]) -> std::borrow::Cow<'a, [u8]> {
    let mut text = std::borrow::Cow::Borrowed(bytes);
    for secret in secrets {
        if let Some(clean) = redact::redact(&text, secret) {
            text = std::borrow::Cow::Owned(clean);
        }
    }
    text
}

/// A body as the reference dumps it: the JSON it holds, else its text.
fn body_dump(body: &[u8], cut: bool, secrets: &[&[u8]]) -> serde_json::Value {
    let mut body = body;
    if cut {
        for secret in secrets {
            body = &body[..redact::keep_before_cut_secret(body, secret)];
        }
    }
    let body = without(body, secrets);
    serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()))
}

fn cut(body: &[u8], limit: usize) -> (&[u8], bool) {
    if body.len() > limit {
        (&body[..limit], true)
    } else {
        (body, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dump_names_are_numbered() {
        assert_eq!(dump_number("000012-1733250000000-request.json"), Some(12));
        assert_eq!(dump_number("1234567-1-response.json"), Some(1_234_567));
        assert_eq!(dump_number("notes.txt"), None);
        assert_eq!(dump_number("x-1-request.json"), None);
        assert_eq!(dump_number("1--request.json"), None);
    }

    #[test]
    fn credentials_are_redacted_by_name_and_the_key_by_value() {
        let key: &[u8] = b"sk-test_KEY-0123456789abcdefSECRET";
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer mine"));
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        headers.insert("set-cookie", HeaderValue::from_static("a=b"));
        headers.insert(
            "x-echo",
            HeaderValue::from_static("saw sk-test_KEY-0123456789abcdefSECRET here"),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let dumped = headers_dump(&headers, &[key]);
        let value = |name: &str| {
            dumped
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.clone())
                .unwrap()
        };
        assert_eq!(value("authorization"), REDACTED);
        assert_eq!(value("x-api-key"), REDACTED);
        assert_eq!(value("set-cookie"), REDACTED);
        assert_eq!(value("content-type"), "application/json");
        assert!(!value("x-echo").contains("SECRET"), "{}", value("x-echo"));
        let body = body_dump(
            br#"{"input":"my key is sk-test_KEY-0123456789abcdefSECRET"}"#,
            false,
            &[key],
        );
        assert!(!body.to_string().contains("SECRET"), "{body}");
        assert_eq!(body_dump(b"data: x\n\n", false, &[key]), "data: x\n\n");
        // A body cut in the middle of the key loses the key's first characters too.
        assert_eq!(body_dump(b"data: sk-test_K", true, &[key]), "data: ");
        assert_eq!(
            body_dump(b"data: sk-test_K", false, &[key]),
            "data: sk-test_K"
        );
    }
}
