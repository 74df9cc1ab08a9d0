//! The HTTP/1.1 wire format the strict route's direct upstream client speaks: the request it
//! writes (head and body in one buffer pair), the response head it accepts, and the decoding of
//! the response body by its framing (length, chunked, or until close). Pure functions and state
//! machines over byte buffers; the connection and its I/O live in `direct_upstream.rs`.
//!
//! The parser is strict where leniency could let an upstream desynchronise a reused connection
//! (conflicting lengths, malformed chunk lines) and bounded everywhere (head, chunk line and
//! trailer sizes), so a hostile or broken upstream gets a clear error, never a hang or a panic.
//! The head is tokenised by httparse; the framing, the client's headers and the chunked body
//! are held against httparse's own reading of the same bytes by the fuzz target
//! `upstream_httparse` (`fuzz/src/checks.rs`), replayed in `tests/fuzz_regressions.rs`.
//!
//! Uses: `crate::worker::server` and bytes, httparse, hyper, itoa.

use crate::worker::server::http1_syntax::{chunk_size, hex_value, trim_ows, MAX_CHUNK_SIZE_DIGITS};
use crate::worker::upstream::headers::is_hop_by_hop;
use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use hyper::StatusCode;
use std::fmt;

/// Largest response head accepted (status line and headers).
pub const HEAD_LIMIT: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) and largest trailer section accepted.
const CHUNK_LINE_LIMIT: usize = 4 * 1024;
const TRAILER_LIMIT: usize = 16 * 1024;

/// Why a response could not be read. The text goes into the client's 502 and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError(&'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WireError {}

/// Appends `POST <target> HTTP/1.1`, `Host`, `Authorization`, `fields` and `Content-Length`
/// to `out`. `fields` must be end-to-end only, without `Host`, `Authorization` or
/// `Content-Length` (`headers::upstream_fields`); header values never hold CR or LF, so
/// nothing a client sends can add a line.
pub fn encode_request_head<'a>(
    out: &mut Vec<u8>,
    target: &str,
    host: &HeaderValue,
    authorization: &HeaderValue,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body_len: usize,
) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nauthorization: ");
    out.extend_from_slice(authorization.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// A complete response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The end-to-end headers, as the client gets them: no hop-by-hop ones, none that
    /// `Connection` names, and `Content-Length` only where it frames the body.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has been read.
    pub reusable: bool,
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The outcome of looking at the start of the read buffer.
#[derive(Debug)]
pub enum HeadParse {
    /// More bytes are needed.
    Partial,
    /// An interim (1xx) response of this many bytes, to be skipped.
    Interim(usize),
    /// The final head, and the bytes it took.
    Complete(ResponseHead, usize),
}

/// Parses the response head at the start of `buf`.
pub fn parse_response_head(buf: &[u8]) -> Result<HeadParse, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    // Only the first HEAD_LIMIT bytes are looked at, so the verdict on a long head is the same
    // however much of it has arrived.
    let window = &buf[..buf.len().min(HEAD_LIMIT)];
    let consumed = match parsed.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if window.len() == HEAD_LIMIT => {
            return Err(WireError("the upstream's response head is too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(HeadParse::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError("the upstream's response has too many headers"))
        }
        Err(_) => return Err(WireError("the upstream's response is not valid HTTP/1.1")),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| WireError("the upstream's response has an invalid status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(WireError("the upstream switched protocols unasked"));
    }
    if status.is_informational() {
        return Ok(HeadParse::Interim(consumed));
    }
    let http11 = parsed.version == Some(1);
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut close = !http11;
    let mut connection_listed = Vec::new();
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| WireError("the upstream's response has an invalid header name"))?;
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| WireError("the upstream's response has an invalid header value"))?;
        if name == CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = parse_length(trim_ows(part))?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(WireError(
                        "the upstream's response has conflicting content lengths",
                    ));
                }
                length = Some(n);
            }
        } else if name == hyper::header::TRANSFER_ENCODING {
            transfer_encoded = true;
            // Only the last coding counts: chunked must be last to frame the body.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .map(trim_ows)
                .find(|coding| !coding.is_empty())
                .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(trim_ows) {
                close |= token.eq_ignore_ascii_case(b"close");
                if let Ok(listed) = HeaderName::from_bytes(token) {
                    connection_listed.push(listed);
                }
            }
        }
        if !is_hop_by_hop(&name) && name != CONTENT_LENGTH {
            headers.append(name, value);
        }
    }
    for listed in connection_listed {
        headers.remove(listed);
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Empty
    } else if transfer_encoded {
        // A length beside a transfer coding is ignored, and the connection not reused
        // (RFC 9112 §6.3 item 3).
        close |= length.is_some() || !chunked;
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // The client sees one length, and only one that frames the body it gets.
    if let (Some(n), Framing::Length(_) | Framing::Empty) = (length, framing) {
        if !transfer_encoded
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED
        {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Ok(HeadParse::Complete(
        ResponseHead {
            status,
            headers,
            framing,
            reusable: !close && framing != Framing::UntilClose,
        },
        consumed,
    ))
}

fn parse_length(digits: &[u8]) -> Result<u64, WireError> {
    let invalid = WireError("the upstream's response has an invalid content length");
    if digits.is_empty() || digits.len() > 19 {
        return Err(invalid);
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            Ok(n * 10 + u64::from(b - b'0'))
        } else {
            Err(invalid)
        }
    })
}

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (never empty), split off the front of the buffer.
    Data(Bytes),
    /// The buffer holds no more of the body; read more.
    NeedMore,
    /// The body is complete; whatever is left in the buffer is not part of it.
    End,
}

/// Decodes a response body from a read buffer, consuming what it uses.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    /// Reading a chunk-size line: the size so far, its digit count, and how long the line is.
    ChunkSize {
        size: u64,
        digits: u8,
        line: usize,
    },
    /// Whitespace after the size: more of it, a `;` or the line's CR may follow.
    ChunkSizeWhitespace {
        size: u64,
        line: usize,
    },
    /// After a `;`: the extension, up to the line's CR.
    ChunkExtension {
        size: u64,
        line: usize,
    },
    ChunkSizeLf {
        size: u64,
    },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// Trailer lines after the last chunk: bytes in the section so far, and whether the
    /// current line is still empty.
    Trailer {
        total: usize,
        line_empty: bool,
    },
    TrailerLf {
        total: usize,
        line_empty: bool,
    },
    Done,
    /// An error found after data that was handed out first.
    Failed(WireError),
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize {
                size: 0,
                digits: 0,
                line: 0,
            },
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// All of the body that `buf` holds, as one piece: for a chunked body the chunk data is
    /// moved to the front of the buffer over the framing between chunks, and split off once.
    /// An error met after some data comes on the next call, after that data.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        if let State::Failed(error) = self.state {
            return Err(error);
        }
        // Body bytes are gathered at buf[..write]; buf[..read] has been consumed.
        let (mut read, mut write) = (0usize, 0usize);
        let mut failure = None;
        while read < buf.len() {
            match self.state {
                State::Done | State::Failed(_) => break,
                State::Length(remaining) | State::ChunkData(remaining) => {
                    let available = buf.len() - read;
                    let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                    if read != write {
                        buf.copy_within(read..read + take, write);
                    }
                    read += take;
                    write += take;
                    let left = remaining - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkDataCr,
                        _ => State::ChunkData(left),
                    };
                }
                State::UntilClose => {
                    let available = buf.len() - read;
                    if read != write {
                        buf.copy_within(read.., write);
                    }
                    read += available;
                    write += available;
                }
                _ => {
                    if let Some((next, used)) = self.whole_framing(&buf[read..]) {
                        self.state = next;
                        read += used;
                        continue;
                    }
                    match self.control_byte(buf[read]) {
                        Ok(next) => {
                            self.state = next;
                            read += 1;
                        }
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
            }
        }
        if let Some(error) = failure {
            self.state = State::Failed(error);
            if write == 0 {
                return Err(error);
            }
        }
        if write == 0 {
            buf.advance(read);
            return Ok(if self.state == State::Done {
                Decoded::End
            } else {
                Decoded::NeedMore
            });
        }
        let data = buf.split_to(write).freeze();
        buf.advance(read - write);
        Ok(Decoded::Data(data))
    }

    /// The usual framing between chunks (`\r\n`, a bare hex size, `\r\n`) or at the end
    /// (`\r\n` after the last chunk), taken whole when it has arrived whole: the state after
    /// it and its length. `None` leaves everything else (extensions, trailers, a line split
    /// between reads, errors) to [`Self::control_byte`], which accepts the same bytes.
    fn whole_framing(&self, bytes: &[u8]) -> Option<(State, usize)> {
        let size_line = |bytes: &[u8]| {
            let (size, digits) = chunk_size(bytes)?;
            if bytes.get(digits..digits + 2) != Some(b"\r\n") {
                return None;
            }
            let next = if size == 0 {
                State::Trailer {
                    total: 0,
                    line_empty: true,
                }
            } else {
                State::ChunkData(size)
            };
            Some((next, digits + 2))
        };
        match self.state {
            State::ChunkDataCr if bytes.starts_with(b"\r\n") => Some(
                size_line(&bytes[2..])
                    .map(|(next, used)| (next, used + 2))
                    .unwrap_or((
                        State::ChunkSize {
                            size: 0,
                            digits: 0,
                            line: 0,
                        },
                        2,
                    )),
            ),
            State::ChunkSize { digits: 0, .. } => size_line(bytes),
            State::Trailer {
                total: 0,
                line_empty: true,
            } if bytes.starts_with(b"\r\n") => Some((State::Done, 2)),
            _ => None,
        }
    }

    /// The state after one byte of chunk framing.
    fn control_byte(&self, byte: u8) -> Result<State, WireError> {
        const BAD_SIZE: WireError = WireError("the upstream sent a malformed chunk size");
        const BAD_END: WireError = WireError("the upstream sent a chunk without its line end");
        const LONG_LINE: WireError = WireError("the upstream sent an overlong chunk-size line");
        Ok(match self.state {
            State::ChunkSize { size, digits, line } => {
                if line >= CHUNK_LINE_LIMIT {
                    return Err(LONG_LINE);
                }
                match hex_value(byte) {
                    Some(v) => {
                        if usize::from(digits) >= MAX_CHUNK_SIZE_DIGITS {
                            return Err(BAD_SIZE);
                        }
                        State::ChunkSize {
                            size: size << 4 | u64::from(v),
                            digits: digits + 1,
                            line: line + 1,
                        }
                    }
                    None if digits == 0 => return Err(BAD_SIZE),
                    None => after_chunk_size(byte, size, line).ok_or(BAD_SIZE)?,
                }
            }
            // RFC 9112 §7.1.1 allows whitespace before a `;` only (as httparse reads it).
            State::ChunkSizeWhitespace { size, line } => {
                if line >= CHUNK_LINE_LIMIT {
                    return Err(LONG_LINE);
                }
                after_chunk_size(byte, size, line).ok_or(BAD_SIZE)?
            }
            State::ChunkExtension { size, line } => {
                if line >= CHUNK_LINE_LIMIT {
                    return Err(LONG_LINE);
                }
                match byte {
                    b'\r' => State::ChunkSizeLf { size },
                    b'\n' => return Err(BAD_END),
                    _ => State::ChunkExtension {
                        size,
                        line: line + 1,
                    },
                }
            }
            State::ChunkSizeLf { size } => match byte {
                b'\n' if size == 0 => State::Trailer {
                    total: 0,
                    line_empty: true,
                },
                b'\n' => State::ChunkData(size),
                _ => return Err(BAD_END),
            },
            State::ChunkDataCr => match byte {
                b'\r' => State::ChunkDataLf,
                _ => return Err(BAD_END),
            },
            State::ChunkDataLf => match byte {
                b'\n' => State::ChunkSize {
                    size: 0,
                    digits: 0,
                    line: 0,
                },
                _ => return Err(BAD_END),
            },
            State::Trailer { total, line_empty } => {
                if total >= TRAILER_LIMIT {
                    return Err(WireError("the upstream sent an oversized trailer section"));
                }
                match byte {
                    b'\r' => State::TrailerLf {
                        total: total + 1,
                        line_empty,
                    },
                    b'\n' => return Err(BAD_END),
                    _ => State::Trailer {
                        total: total + 1,
                        line_empty: false,
                    },
                }
            }
            State::TrailerLf { total, line_empty } => match byte {
                b'\n' if line_empty => State::Done,
                b'\n' => State::Trailer {
                    total: total + 1,
                    line_empty: true,
                },
                _ => return Err(BAD_END),
            },
            State::Length(_)
            | State::UntilClose
            | State::ChunkData(_)
            | State::Done
            | State::Failed(_) => {
                unreachable!("not a control state")
            }
        })
    }

    /// What the end of the connection means here: the end of a body delimited by it, or an
    /// error for any other body not yet complete.
    pub fn at_eof(&mut self) -> Result<(), WireError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(WireError("the upstream closed the connection mid-body")),
        }
    }
}

/// The state after a byte that follows a chunk size's digits (or whitespace after them): the
/// line's end, more whitespace, or an extension; `None` for anything else.
fn after_chunk_size(byte: u8, size: u64, line: usize) -> Option<State> {
    Some(match byte {
        b'\r' => State::ChunkSizeLf { size },
        b' ' | b'\t' => State::ChunkSizeWhitespace {
            size,
            line: line + 1,
        },
        b';' => State::ChunkExtension {
            size,
            line: line + 1,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<HeadParse, WireError> {
        parse_response_head(text.as_bytes())
    }

    fn complete(text: &str) -> ResponseHead {
        match head(text) {
            Ok(HeadParse::Complete(head, consumed)) => {
                assert_eq!(consumed, text.find("\r\n\r\n").unwrap() + 4);
                head
            }
            other => panic!("{other:?}"),
        }
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the body and what was left over.
    fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> Result<Vec<u8>, WireError> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok(body),
                Decoded::NeedMore if fed < wire.len() => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Decoded::NeedMore => {
                    decoder.at_eof()?;
                    return Ok(body);
                }
            }
        }
    }

    #[test]
    fn the_request_head_carries_host_key_headers_and_length() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            "/v1/responses?api-version=1",
            &HeaderValue::from_static("127.0.0.1:8080"),
            &HeaderValue::from_static("Bearer k"),
            headers.iter(),
            42,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/responses?api-version=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\
             authorization: Bearer k\r\ncontent-type: application/json\r\nx-a: 1\r\nx-a: 2\r\n\
             content-length: 42\r\n\r\n"
        );
    }

    #[test]
    fn heads_are_partial_until_the_blank_line() {
        let full = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        for cut in 0..full.len() {
            assert!(
                matches!(head(&full[..cut]), Ok(HeadParse::Partial)),
                "{cut}"
            );
        }
        let head = complete(full);
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.reusable);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                Framing::Length(12),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", Framing::Empty, true),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 401 Unauthorized\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
        ];
        for (text, framing, reusable) in cases {
            let head = complete(text);
            assert_eq!((head.framing, head.reusable), (framing, reusable), "{text}");
        }
    }

    #[test]
    fn the_length_header_is_kept_once_and_only_when_it_frames_the_body() {
        let head = complete("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(head.headers.get_all(CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(head.headers[CONTENT_LENGTH], "5");
        let head = complete("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(head.headers[CONTENT_LENGTH], "0");
        for text in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n",
        ] {
            assert!(
                !complete(text).headers.contains_key(CONTENT_LENGTH),
                "{text}"
            );
        }
        let head = complete("HTTP/1.1 200 OK\r\nx-request-id: r1\r\nx-dup: a\r\nx-dup: b\r\n\r\n");
        assert_eq!(head.headers["x-request-id"], "r1");
        assert_eq!(head.headers.get_all("x-dup").iter().count(), 2);
        // Hop-by-hop headers, and those Connection names, stay on this side.
        let head = complete(
            "HTTP/1.1 200 OK\r\nx-hop: 1\r\ntransfer-encoding: chunked\r\nkeep-alive: 5\r\n\
             connection: keep-alive, X-Hop\r\nupgrade: h2c\r\nx-kept: 2\r\n\r\n",
        );
        let names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert!(head.reusable && head.framing == Framing::Chunked);
    }

    #[test]
    fn interim_responses_are_skipped_and_upgrades_refused() {
        let text = "HTTP/1.1 100 Continue\r\n\r\n";
        assert!(matches!(head(text), Ok(HeadParse::Interim(n)) if n == text.len()));
        assert!(head("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n").is_err());
    }

    #[test]
    fn bad_heads_are_errors_not_panics() {
        // However it arrives, a head that does not end within the limit is too large, even
        // when a bad byte follows the limit.
        let past_limit = format!(
            "HTTP/1.1 200 OK\r\nx: {}\x01\r\n\r\n",
            "a".repeat(HEAD_LIMIT)
        );
        let whole = head(&past_limit).unwrap_err();
        assert_eq!(head(&past_limit[..HEAD_LIMIT]).unwrap_err(), whole);
        assert_eq!(
            whole.to_string(),
            "the upstream's response head is too large"
        );
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(HEAD_LIMIT));
        for text in [
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/1.1 99 Low\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1e3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            &format!("HTTP/1.1 200 OK\r\n{many}\r\n"),
            &huge,
        ] {
            assert!(head(text).is_err(), "{text:.60}");
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split_and_leave_what_follows() {
        let wire =
            b"5\r\nhello\r\n1;name=\"v\"\r\n \r\nA \r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let mut buf = BytesMut::new();
            let mut body = Vec::new();
            let mut fed = 0;
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::End => break,
                    Decoded::NeedMore => {
                        assert!(fed < wire.len(), "step {step}: ran out");
                        let end = (fed + step).min(wire.len());
                        buf.extend_from_slice(&wire[fed..end]);
                        fed = end;
                    }
                }
            }
            assert_eq!(body, b"hello 0123456789", "step {step}");
            let mut rest = buf.to_vec();
            rest.extend_from_slice(&wire[fed..]);
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        for step in [1, 3, 100] {
            assert_eq!(
                decode_in_steps(Framing::Length(5), b"hello", step).unwrap(),
                b"hello"
            );
            assert_eq!(
                decode_in_steps(Framing::UntilClose, b"to the end", step).unwrap(),
                b"to the end"
            );
            assert!(decode_in_steps(Framing::Length(6), b"hello", step).is_err());
        }
        let mut buf = BytesMut::from(&b"helloNEXT"[..]);
        let mut decoder = BodyDecoder::new(Framing::Length(5));
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"hello"))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(
            BodyDecoder::new(Framing::Empty).decode(&mut buf).unwrap(),
            Decoded::End
        );
    }

    #[test]
    fn malformed_chunking_is_an_error() {
        let long_extension = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(CHUNK_LINE_LIMIT));
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(TRAILER_LIMIT));
        let cases: [&[u8]; 13] = [
            b"\r\n",
            b"g\r\n",
            // Whitespace after the size may only lead to an extension (httparse agrees).
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\nx\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"1\r\nxy\r\n0\r\n\r\n",
            b"1\r\nx\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhel",
            b"0\r\nx-t: 1\n\r\n",
            long_extension.as_bytes(),
            long_trailer.as_bytes(),
        ];
        for wire in cases {
            assert!(
                decode_in_steps(Framing::Chunked, wire, 7).is_err(),
                "{:.40}",
                String::from_utf8_lossy(wire)
            );
        }
        // Data before the error is handed out first; the error stays.
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"5\r\nhello\r\nzz\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"hello"))
        );
        assert!(decoder.decode(&mut buf).is_err());
        assert!(decoder.decode(&mut buf).is_err() && decoder.at_eof().is_err());
        // The largest size that fits is read, not wrapped.
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ab"))
        );
        assert!(decoder.at_eof().is_err());
    }
}
