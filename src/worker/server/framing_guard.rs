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
//! parses it. The service then asks [`FramingVerdicts`] about its request by number.
//!
//! The rule holds for every request on a connection, whatever came before it. Numbers are read
//! as hyper reads them (any count of leading zeros, a chunk line of any length), and an
//! `Upgrade` header changes nothing (hyper answers such a request like any other and keeps
//! reading requests after it, unless the server answered 101). Only once the server has
//! actually switched the connection to WebSocket (the WebSocket route calls
//! [`FramingVerdicts::protocol_switched`] when hyper hands it the upgraded connection, after
//! the 101 was written) are the bytes no longer requests, and the scanner stops reading them. Where the scanner still
//! cannot follow the bytes (a framing hyper will refuse, a `Content-Length` it cannot read) it
//! refuses the request it is in, or the next one when it is past a head, rather than stop
//! judging.
//!
//! Uses: nothing else of the crate and memchr, tokio.

use crate::worker::server::http1_syntax::{hex_value, trim_ows};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFault {
    ContentLengthWithTransferEncoding,
    BareLineFeed,
    /// Framing the guard cannot follow (hyper refuses most of it anyway).
    Unfollowable,
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
            FramingFault::Unfollowable => {
                "The request's framing cannot be followed (an unreadable Content-Length, Transfer-Encoding or chunk line, or a request after one); send one plain Content-Length or a chunked body."
            }
        }
    }

    fn code(self) -> u64 {
        match self {
            FramingFault::ContentLengthWithTransferEncoding => 1,
            FramingFault::BareLineFeed => 2,
            FramingFault::Unfollowable => 3,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(FramingFault::ContentLengthWithTransferEncoding),
            2 => Some(FramingFault::BareLineFeed),
            3 => Some(FramingFault::Unfollowable),
            _ => None,
        }
    }
}

/// Longest line prefix kept; header names and the values we need are far shorter.
const LINE_PREFIX: usize = 256;

/// Which number a line carries, read whatever the line's length.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// A head line: a `Content-Length` value (decimal, surrounded by optional whitespace).
    #[default]
    Header,
    /// A chunk-size line: hex digits, then optional whitespace and extensions.
    ChunkSize,
    /// A trailer line: no number.
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NumberPart {
    Before,
    Digits,
    After,
    Invalid,
}

/// A number read as its bytes pass, as hyper reads it: any count of leading zeros, at most
/// `u64::MAX`.
#[derive(Clone, Copy)]
struct NumberReader {
    hex: bool,
    part: NumberPart,
    value: u64,
}

impl NumberReader {
    fn new(hex: bool) -> Self {
        NumberReader {
            hex,
            part: NumberPart::Before,
            value: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let digit = if self.hex {
                hex_value(b)
            } else {
                b.is_ascii_digit().then(|| b - b'0')
            };
            self.part = match (self.part, digit) {
                (NumberPart::Invalid, _) => return,
                (NumberPart::Before | NumberPart::Digits, Some(d)) => {
                    let radix = if self.hex { 16 } else { 10 };
                    match self
                        .value
                        .checked_mul(radix)
                        .and_then(|v| v.checked_add(u64::from(d)))
                    {
                        Some(v) => {
                            self.value = v;
                            NumberPart::Digits
                        }
                        None => NumberPart::Invalid,
                    }
                }
                // A header value may start with whitespace; a chunk size starts at once.
                (NumberPart::Before, None) if !self.hex && matches!(b, b' ' | b'\t') => {
                    NumberPart::Before
                }
                // After a chunk size come whitespace, extensions and the CR, as hyper checks.
                (NumberPart::Digits | NumberPart::After, _) if self.hex => NumberPart::After,
                (NumberPart::Digits | NumberPart::After, _)
                    if matches!(b, b' ' | b'\t' | b'\r') =>
                {
                    NumberPart::After
                }
                _ => NumberPart::Invalid,
            };
        }
    }

    fn value(&self) -> Option<u64> {
        matches!(self.part, NumberPart::Digits | NumberPart::After).then_some(self.value)
    }
}

/// One line being collected across reads: its first bytes, its full length, the byte before
/// its LF, and (for a line longer than the kept prefix) the number it carries, read as it
/// passes.
#[derive(Default)]
struct Line {
    kind: LineKind,
    prefix: Vec<u8>,
    len: usize,
    last: Option<u8>,
    long_number: Option<NumberReader>,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let room = LINE_PREFIX.saturating_sub(self.prefix.len());
        let kept = bytes.len().min(room);
        self.prefix.extend_from_slice(&bytes[..kept]);
        let before = self.len;
        self.len += bytes.len();
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
        if self.len > LINE_PREFIX {
            if before <= LINE_PREFIX {
                // The prefix just filled up: read its number so far, then the rest as it comes.
                self.long_number = self.number_in_prefix();
            }
            if let Some(reader) = &mut self.long_number {
                reader.feed(&bytes[kept..]);
            }
        }
    }

    /// A reader fed with the part of the kept prefix that carries this line's number.
    fn number_in_prefix(&self) -> Option<NumberReader> {
        let (hex, digits) = match self.kind {
            LineKind::ChunkSize => (true, self.prefix.as_slice()),
            LineKind::Header => {
                let colon = memchr::memchr(b':', &self.prefix)?;
                if !self.prefix[..colon].eq_ignore_ascii_case(b"content-length") {
                    return None;
                }
                (false, &self.prefix[colon + 1..])
            }
            LineKind::Other => return None,
        };
        let mut reader = NumberReader::new(hex);
        reader.feed(digits);
        Some(reader)
    }

    /// The number the whole line carries (a chunk size, a `Content-Length` value).
    fn number(&self) -> Option<u64> {
        if self.len > LINE_PREFIX {
            self.long_number?.value()
        } else {
            self.number_in_prefix()?.value()
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
        self.long_number = None;
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
    /// Past something the scanner cannot follow: the request it happened in (or the next one)
    /// is refused, and nothing more is read.
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
                        self.cannot_follow_body();
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
                    if self.line.len == 0 {
                        self.line.kind = match self.phase {
                            Phase::Head(_) => LineKind::Header,
                            Phase::ChunkSize => LineKind::ChunkSize,
                            _ => LineKind::Other,
                        };
                    }
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
                let size = line.number().filter(|_| line.ended_with_cr());
                match size {
                    Some(0) => self.phase = Phase::Trailer,
                    Some(size) => self.phase = Phase::ChunkData(size),
                    None => self.cannot_follow_body(),
                }
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
        // A CONNECT or an Upgrade is framed like any request: this server never switches
        // protocols, and hyper reads the next request after answering one.
        let next = if facts.transfer_encoding_lines > 0 {
            match facts.chunked {
                Some(true) => Some(Phase::ChunkSize),
                _ => None,
            }
        } else if facts.content_length_lines > 0 {
            match facts.content_length {
                Some(0) => Some(Phase::Head(HeadFacts::default())),
                Some(n) => Some(Phase::FixedBody(n)),
                None => None,
            }
        } else {
            Some(Phase::Head(HeadFacts::default()))
        };
        match next {
            Some(phase) => self.phase = phase,
            // hyper refuses most of these itself; whatever it accepts is not guessed at.
            None => self.refused = Some((index, FramingFault::Unfollowable)),
        }
    }

    /// Lost inside a body: every request from the next one on is refused (hyper usually
    /// closes the connection first).
    fn cannot_follow_body(&mut self) {
        self.phase = Phase::Stopped;
        self.refused = Some((self.heads_seen, FramingFault::Unfollowable));
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
        facts.content_length = line.number();
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        facts.transfer_encoding_lines += 1;
        facts.chunked = value.map(|v| {
            let last = v.rsplit(|b| *b == b',').next().unwrap_or_default();
            trim_ows(last).eq_ignore_ascii_case(b"chunked")
        });
    }
}

/// The refused request of one connection, shared between the connection and its service.
#[derive(Default)]
pub(crate) struct FramingVerdicts {
    /// 0: none; else (request number << 8) | fault code.
    refused: AtomicU64,
    /// The server switched this connection to another protocol (a 101 was written).
    switched: AtomicBool,
}

impl FramingVerdicts {
    /// The fault of request number `index` (from 0), if it was refused.
    pub(crate) fn fault_of(&self, index: u64) -> Option<FramingFault> {
        let packed = self.refused.load(Ordering::Acquire);
        if packed == 0 || packed >> 8 != index {
            return None;
        }
        FramingFault::from_code(packed & 0xff)
    }

    /// Called by the server, never on a client's word, once it has written a 101 and owns the
    /// upgraded connection: the bytes that follow are frames, not requests.
    pub(crate) fn protocol_switched(&self) {
        self.switched.store(true, Ordering::Release);
    }

    fn record(&self, index: u64, fault: FramingFault) {
        self.refused
            .store((index << 8) | fault.code(), Ordering::Release);
    }
}

/// A client connection whose incoming bytes pass through a [`FramingScanner`].
pub(crate) struct FramingWatch<T> {
    inner: T,
    scanner: FramingScanner,
    verdicts: Arc<FramingVerdicts>,
}

impl<T> FramingWatch<T> {
    pub(crate) fn new(inner: T, verdicts: Arc<FramingVerdicts>) -> Self {
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
            if this.scanner.refused.is_none() && !this.verdicts.switched.load(Ordering::Acquire) {
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

    const SMUGGLED: &[u8] =
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn every_request_is_judged_whatever_came_before() {
        let zeros = "0".repeat(300);
        let extension = "x".repeat(10_000);
        let openers = [
            "GET / HTTP/1.1\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n".to_owned(),
            "POST / HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
            "CONNECT / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
            format!("POST / HTTP/1.1\r\nContent-Length: {zeros}2\r\n\r\n{{}}"),
            format!("POST / HTTP/1.1\r\nContent-Length: \t{zeros}2 \r\n\r\n{{}}"),
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;e={extension}\r\n{{}}\r\n0\r\n\r\n"),
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{zeros}2\r\n{{}}\r\n0000\r\n\r\n"),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000002 ;a=b\r\n{}\r\n0\r\n\r\n".to_owned(),
        ];
        for opener in openers {
            let input = [opener.as_bytes(), SMUGGLED].concat();
            assert_eq!(verdict(&input), Some((1, CL_TE)), "after {opener:.80}");
        }
    }

    #[test]
    fn what_the_scanner_cannot_follow_is_refused_not_skipped() {
        let unfollowable = FramingFault::Unfollowable;
        // In a head: the request itself.
        for head in [
            "POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n".to_owned(),
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_owned(),
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_owned(),
            format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: {}chunked\r\n\r\n",
                " ".repeat(300)
            ),
        ] {
            let input = [head.as_bytes(), SMUGGLED].concat();
            assert_eq!(verdict(&input), Some((0, unfollowable)), "{head:.80}");
        }
        // In a body: every request after it.
        for bad_chunk in [
            "zz\r\n",
            "2\r\n{}XX",
            "2\n{}\r\n",
            ";\r\n",
            "10000000000000000\r\n",
        ] {
            let input = [
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                bad_chunk.as_bytes(),
                b"GET / HTTP/1.1\r\n\r\n",
            ]
            .concat();
            assert_eq!(verdict(&input), Some((1, unfollowable)), "{bad_chunk:?}");
        }
    }

    #[test]
    fn verdicts_name_one_request() {
        let verdicts = FramingVerdicts::default();
        assert_eq!(verdicts.fault_of(0), None);
        verdicts.record(3, FramingFault::BareLineFeed);
        assert_eq!(verdicts.fault_of(2), None);
        assert_eq!(verdicts.fault_of(3), Some(FramingFault::BareLineFeed));
    }

    /// Bytes read through a watch with the given verdicts, as hyper would read them.
    fn read_through(verdicts: &Arc<FramingVerdicts>, bytes: &'static [u8]) {
        use tokio::io::AsyncReadExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut watch = FramingWatch::new(bytes, verdicts.clone());
            let mut sink = Vec::new();
            watch.read_to_end(&mut sink).await.unwrap();
        });
    }

    #[test]
    fn only_the_server_switching_protocols_stops_the_judging() {
        let smuggling: &[u8] = b"GET /v1/responses HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // A client asking to upgrade changes nothing.
        let asked = Arc::new(FramingVerdicts::default());
        read_through(&asked, smuggling);
        assert_eq!(asked.fault_of(1), Some(CL_TE));
        // Once the server has switched, the bytes are frames, not requests.
        let switched = Arc::new(FramingVerdicts::default());
        switched.protocol_switched();
        read_through(
            &switched,
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(switched.fault_of(0), None);
    }
}
