//! Request framing that hyper tolerates but this proxy refuses. RFC 9112 lets a server either
//! handle or reject a request head that carries both Content-Length and Transfer-Encoding
//! (hyper drops the Content-Length and closes the connection afterwards) and lines that end in
//! a bare LF (hyper's header parser accepts them). Both are the raw material of request
//! smuggling between proxies, so we answer 400 and close instead.
//!
//! hyper removes the evidence while it parses, so the check runs on the bytes themselves:
//! [`FramingWatch`] wraps a client connection and shows every byte hyper reads to a
//! [`FramingScanner`], a pure state machine that follows request boundaries (heads,
//! Content-Length bodies, chunked bodies with trailers) and judges each head before hyper
//! parses it. The service then asks [`FramingVerdicts`] about its request by number. When the
//! scanner meets something it cannot follow (an upgrade, a framing hyper will refuse anyway) it
//! stops judging rather than guess.

use super::http1_syntax::{chunk_size, trim_ows};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFault {
    ContentLengthWithTransferEncoding,
    BareLineFeed,
}

impl FramingFault {
    pub fn message(self) -> &'static str {
        match self {
            FramingFault::ContentLengthWithTransferEncoding => {
                "The request carries both Content-Length and Transfer-Encoding; send only one of them."
            }
            FramingFault::BareLineFeed => {
                "A line of the request head ends in a bare LF; HTTP/1.1 lines end in CRLF."
            }
        }
    }

    fn code(self) -> u64 {
        match self {
            FramingFault::ContentLengthWithTransferEncoding => 1,
            FramingFault::BareLineFeed => 2,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(FramingFault::ContentLengthWithTransferEncoding),
            2 => Some(FramingFault::BareLineFeed),
            _ => None,
        }
    }
}

/// Longest line prefix kept; header names and the values we need are far shorter.
const LINE_PREFIX: usize = 256;

/// One line being collected across reads: its first bytes, its full length, and the byte
/// before its LF.
#[derive(Default)]
struct Line {
    prefix: Vec<u8>,
    len: usize,
    last: Option<u8>,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let room = LINE_PREFIX.saturating_sub(self.prefix.len());
        self.prefix
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.len += bytes.len();
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
    }

    fn ended_with_cr(&self) -> bool {
        self.last == Some(b'\r')
    }

    /// The line without its CR, when the whole line was kept.
    fn content(&self) -> Option<&[u8]> {
        if self.len > LINE_PREFIX {
            return None;
        }
        Some(self.prefix.strip_suffix(b"\r").unwrap_or(&self.prefix))
    }

    fn is_empty(&self) -> bool {
        self.len == 0 || (self.len == 1 && self.last == Some(b'\r'))
    }

    fn clear(&mut self) {
        self.prefix.clear();
        self.len = 0;
        self.last = None;
    }
}

/// What the head seen so far says about framing.
#[derive(Default)]
struct HeadFacts {
    request_line_seen: bool,
    content_length_lines: usize,
    /// Parsed Content-Length (None: absent or unreadable).
    content_length: Option<u64>,
    transfer_encoding_lines: usize,
    /// Whether the last Transfer-Encoding line ends in `chunked` (None: unreadable).
    chunked: Option<bool>,
    opaque_after_head: bool,
    fault: Option<FramingFault>,
}

enum Phase {
    Head(HeadFacts),
    FixedBody(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its two bytes have been seen.
    ChunkDataEnd(u8),
    Trailer,
    /// Past something the scanner cannot follow: no more verdicts on this connection.
    Stopped,
}

/// Follows the requests on one connection and judges each head.
pub struct FramingScanner {
    phase: Phase,
    line: Line,
    heads_seen: u64,
    refused: Option<(u64, FramingFault)>,
}

impl Default for FramingScanner {
    fn default() -> Self {
        FramingScanner {
            phase: Phase::Head(HeadFacts::default()),
            line: Line::default(),
            heads_seen: 0,
            refused: None,
        }
    }
}

impl FramingScanner {
    /// The refused head (numbered from 0 on the connection) and why, once one is seen.
    pub fn refused(&self) -> Option<(u64, FramingFault)> {
        self.refused
    }

    /// Consumes the next bytes of the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Stopped => return,
                Phase::FixedBody(remaining) | Phase::ChunkData(remaining) => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.phase = match self.phase {
                            Phase::ChunkData(_) => Phase::ChunkDataEnd(0),
                            _ => Phase::Head(HeadFacts::default()),
                        };
                    }
                }
                Phase::ChunkDataEnd(seen) => {
                    let expected = if *seen == 0 { b'\r' } else { b'\n' };
                    if bytes[0] != expected {
                        // hyper refuses this chunk; nothing more to follow.
                        self.phase = Phase::Stopped;
                        return;
                    }
                    bytes = &bytes[1..];
                    if *seen == 0 {
                        *seen = 1;
                    } else {
                        self.phase = Phase::ChunkSize;
                    }
                }
                Phase::Head(_) | Phase::ChunkSize | Phase::Trailer => {
                    match memchr::memchr(b'\n', bytes) {
                        Some(at) => {
                            self.line.push(&bytes[..at]);
                            bytes = &bytes[at + 1..];
                            self.end_of_line();
                            self.line.clear();
                        }
                        None => {
                            self.line.push(bytes);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn end_of_line(&mut self) {
        let line = &self.line;
        let mut head_ended = false;
        match &mut self.phase {
            Phase::Head(facts) => {
                if !line.ended_with_cr() && facts.fault.is_none() {
                    facts.fault = Some(FramingFault::BareLineFeed);
                }
                if !facts.request_line_seen {
                    // Empty lines before a request line are skipped (RFC 9112 §2.2).
                    if !line.is_empty() {
                        facts.request_line_seen = true;
                        facts.opaque_after_head = line.prefix.starts_with(b"CONNECT ");
                    }
                    return;
                }
                if line.is_empty() {
                    head_ended = true;
                } else {
                    note_header(facts, line);
                }
            }
            Phase::ChunkSize => {
                let size = line
                    .content()
                    .filter(|_| line.ended_with_cr())
                    .and_then(chunk_size)
                    .map(|(size, _)| size);
                self.phase = match size {
                    Some(0) => Phase::Trailer,
                    Some(size) => Phase::ChunkData(size),
                    None => Phase::Stopped,
                };
            }
            Phase::Trailer => {
                if line.is_empty() {
                    self.phase = Phase::Head(HeadFacts::default());
                }
            }
            _ => unreachable!("lines are only collected in line-based phases"),
        }
        if head_ended {
            self.end_of_head();
        }
    }

    fn end_of_head(&mut self) {
        let Phase::Head(facts) = std::mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        let index = self.heads_seen;
        self.heads_seen += 1;
        let fault = facts.fault.or_else(|| {
            (facts.content_length_lines > 0 && facts.transfer_encoding_lines > 0)
                .then_some(FramingFault::ContentLengthWithTransferEncoding)
        });
        if let Some(fault) = fault {
            self.refused = Some((index, fault));
            return;
        }
        if facts.opaque_after_head {
            return;
        }
        self.phase = if facts.transfer_encoding_lines > 0 {
            match facts.chunked {
                Some(true) => Phase::ChunkSize,
                _ => Phase::Stopped,
            }
        } else if facts.content_length_lines > 0 {
            match facts.content_length {
                Some(0) => Phase::Head(HeadFacts::default()),
                Some(n) => Phase::FixedBody(n),
                None => Phase::Stopped,
            }
        } else {
            Phase::Head(HeadFacts::default())
        };
    }
}

fn note_header(facts: &mut HeadFacts, line: &Line) {
    let prefix = line.prefix.as_slice();
    let Some(colon) = memchr::memchr(b':', prefix) else {
        return;
    };
    let name = &prefix[..colon];
    let value = line.content().map(|c| trim_ows(&c[colon + 1..]));
    if name.eq_ignore_ascii_case(b"content-length") {
        facts.content_length_lines += 1;
        facts.content_length = value
            .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        facts.transfer_encoding_lines += 1;
        facts.chunked = value.map(|v| {
            let last = v.rsplit(|b| *b == b',').next().unwrap_or_default();
            trim_ows(last).eq_ignore_ascii_case(b"chunked")
        });
    } else if name.eq_ignore_ascii_case(b"upgrade") {
        facts.opaque_after_head = true;
    }
}

/// The refused request of one connection, shared between the connection and its service.
#[derive(Default)]
pub struct FramingVerdicts {
    /// 0: none; else (request number << 8) | fault code.
    refused: AtomicU64,
}

impl FramingVerdicts {
    /// The fault of request number `index` (from 0), if it was refused.
    pub fn fault_of(&self, index: u64) -> Option<FramingFault> {
        let packed = self.refused.load(Ordering::Acquire);
        if packed == 0 || packed >> 8 != index {
            return None;
        }
        FramingFault::from_code(packed & 0xff)
    }

    fn record(&self, index: u64, fault: FramingFault) {
        self.refused
            .store((index << 8) | fault.code(), Ordering::Release);
    }
}

/// A client connection whose incoming bytes pass through a [`FramingScanner`].
pub struct FramingWatch<T> {
    inner: T,
    scanner: FramingScanner,
    verdicts: Arc<FramingVerdicts>,
}

impl<T> FramingWatch<T> {
    pub fn new(inner: T, verdicts: Arc<FramingVerdicts>) -> Self {
        FramingWatch {
            inner,
            scanner: FramingScanner::default(),
            verdicts,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            if this.scanner.refused.is_none() {
                this.scanner.feed(&buf.filled()[before..]);
                if let Some((index, fault)) = this.scanner.refused {
                    this.verdicts.record(index, fault);
                }
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` whole and at every split into two reads, and checks the verdict is the
    /// same each way.
    fn verdict(input: &[u8]) -> Option<(u64, FramingFault)> {
        let mut whole = FramingScanner::default();
        whole.feed(input);
        for split in 0..=input.len() {
            let mut scanner = FramingScanner::default();
            scanner.feed(&input[..split]);
            scanner.feed(&input[split..]);
            assert_eq!(scanner.refused, whole.refused, "split at {split}");
        }
        let mut bytewise = FramingScanner::default();
        for b in input {
            bytewise.feed(std::slice::from_ref(b));
        }
        assert_eq!(bytewise.refused, whole.refused, "byte by byte");
        whole.refused
    }

    const CL_TE: FramingFault = FramingFault::ContentLengthWithTransferEncoding;

    #[test]
    fn plain_requests_pass() {
        assert_eq!(
            verdict(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"),
            None
        );
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\n{}\r\n0\r\nX-T: 1\r\n\r\n"),
            None
        );
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order_and_case() {
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some((0, CL_TE))
        );
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n"),
            Some((0, CL_TE))
        );
        // Even when the Content-Length cannot be read.
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some((0, CL_TE))
        );
    }

    #[test]
    fn bodies_are_skipped_so_the_right_request_is_numbered() {
        // A body that looks like a head must not be judged as one.
        let body = b"GET / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n\n";
        let mut input =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        input.extend_from_slice(b"3a\r\n");
        input.extend_from_slice(&[b'\n'; 0x3a]);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        input.extend_from_slice(
            b"\r\nPOST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(verdict(&input), Some((2, CL_TE)));
    }

    #[test]
    fn bare_line_feeds_in_a_head_are_refused() {
        assert_eq!(
            verdict(b"POST / HTTP/1.1\nHost: x\r\n\r\n"),
            Some((0, FramingFault::BareLineFeed))
        );
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\n\r\n"),
            Some((1, FramingFault::BareLineFeed))
        );
    }

    #[test]
    fn long_lines_still_count_their_header_names() {
        let long = "a".repeat(10_000);
        let input = format!(
            "POST / HTTP/1.1\r\nX-Long: {long}\r\nTransfer-Encoding: {long}, chunked\r\nContent-Length: 1\r\n\r\n"
        );
        assert_eq!(verdict(input.as_bytes()), Some((0, CL_TE)));
    }

    #[test]
    fn the_scanner_stops_where_it_cannot_follow() {
        // After an upgrade or a malformed chunk the bytes are not requests any more.
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
    }

    #[test]
    fn verdicts_name_one_request() {
        let verdicts = FramingVerdicts::default();
        assert_eq!(verdicts.fault_of(0), None);
        verdicts.record(3, FramingFault::BareLineFeed);
        assert_eq!(verdicts.fault_of(2), None);
        assert_eq!(verdicts.fault_of(3), Some(FramingFault::BareLineFeed));
    }
}
