//! Drives a pure stream converter from a live upstream response: upstream bytes go through
//! the one SSE reader, each event's data into the converter, and whatever the converter wrote
//! goes to the client as soon as it exists. Upstream failures and cuts become the converter's
//! own terminal error, so a client never sees a stream end without one. Shared by the bridge
//! and the wrapper routes. A converter may take several upstream responses one after the other
//! (the legacy Completions route, one per prompt): each ends with `upstream_ended`, and the
//! next is read while the converter is not done.
//!
//! Uses: `crate::worker::server`, `crate::worker::upstream` and bytes, futures_util,
//! http_body_util, hyper, openai_wire, reqwest.

use crate::usage::{TokenUsage, UpstreamUsage, UsageTap};
use crate::worker::server::http::{Body, BoxError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use openai_wire::sse::SseReader;
use std::collections::VecDeque;
use std::pin::Pin;

/// A pure converter from one upstream event stream to the client's wire format.
pub(crate) trait StreamConverter: Send + 'static {
    /// Writes the opening events (idempotent).
    fn start(&mut self, out: &mut Vec<u8>);
    /// Handles one upstream event's data. [`Flow::Stop`] means the converter wrote its
    /// terminal error and no more upstream input is wanted.
    fn push_event(&mut self, data: &str, out: &mut Vec<u8>) -> Flow;
    /// The upstream body ended cleanly.
    fn upstream_ended(&mut self, out: &mut Vec<u8>);
    /// The upstream failed (transport error, timeout, unreadable stream).
    fn upstream_failed(&mut self, message: &str, out: &mut Vec<u8>);
    /// Whether the terminal event has been written.
    fn is_done(&self) -> bool;
}

/// Whether a converter wants more upstream input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

impl<E> From<Result<(), E>> for Flow {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

type UpstreamBytes = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

struct Translation<C> {
    upstream: Option<UpstreamBytes>,
    /// Upstream responses still to read, in order, after `upstream`.
    next_upstreams: VecDeque<UpstreamBytes>,
    reader: SseReader,
    converter: C,
    /// Reads the usage of the upstream response being read, from its own events.
    tap: UsageTap,
    /// The usage of the upstream responses read to their end.
    read_usage: Vec<TokenUsage>,
    /// Where the upstream's usage goes for the response's record.
    report: UpstreamUsage,
}

impl<C> Translation<C> {
    /// Hands the usage read so far (every upstream response's, summed) to the record.
    fn report_usage(&mut self) {
        let current = std::mem::take(&mut self.tap).finish();
        self.read_usage.extend(current);
        self.report
            .set(TokenUsage::sum(std::mem::take(&mut self.read_usage)));
    }
}

impl<C: StreamConverter> Translation<C> {
    fn new(upstreams: Vec<reqwest::Response>, converter: C, report: UpstreamUsage) -> Self {
        let mut next_upstreams: VecDeque<UpstreamBytes> = upstreams
            .into_iter()
            .map(|upstream| Box::pin(upstream.bytes_stream()) as UpstreamBytes)
            .collect();
        Translation {
            upstream: next_upstreams.pop_front(),
            next_upstreams,
            reader: SseReader::default(),
            converter,
            tap: UsageTap::new(),
            read_usage: Vec::new(),
            report,
        }
    }

    /// Feeds upstream input until the converter produced something or everything ended.
    /// Returns `None` once the terminal output has been handed out.
    async fn next_output(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if !self.converter.is_done() {
            self.converter.start(&mut out);
        }
        while out.is_empty() {
            let Some(upstream) = self.upstream.as_mut() else {
                self.report_usage();
                return None;
            };
            match upstream.next().await {
                Some(Ok(chunk)) => {
                    self.reader.push(&chunk);
                    self.drain_events(&mut out);
                }
                Some(Err(error)) => {
                    let message = describe(&error);
                    self.converter.upstream_failed(&message, &mut out);
                }
                None => {
                    match self.reader.finish() {
                        Ok(Some(event)) => {
                            self.tap.observe_event(event.event, event.data);
                            let _ = self.converter.push_event(event.data, &mut out);
                        }
                        Ok(None) => {}
                        Err(e) => self.converter.upstream_failed(&e.to_string(), &mut out),
                    }
                    self.converter.upstream_ended(&mut out);
                    let usage = std::mem::take(&mut self.tap).finish();
                    self.read_usage.extend(usage);
                    // The next upstream response, if the converter wants more.
                    self.upstream = self.next_upstreams.pop_front();
                    self.reader = SseReader::default();
                }
            }
            if self.converter.is_done() {
                // Stop reading: dropping the upstream bodies closes their connections.
                self.upstream = None;
                self.next_upstreams.clear();
            }
        }
        Some(out)
    }

    fn drain_events(&mut self, out: &mut Vec<u8>) {
        loop {
            match self.reader.next_event() {
                Ok(Some(event)) => {
                    self.tap.observe_event(event.event, event.data);
                    if self.converter.push_event(event.data, out) == Flow::Stop {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.converter.upstream_failed(&e.to_string(), out);
                    return;
                }
            }
        }
    }
}

/// What a transport error says, without URLs.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let cause = crate::worker::upstream::innermost_cause(error);
    if error.is_timeout() {
        format!("the upstream stream stalled: {cause}")
    } else {
        format!("the upstream connection failed: {cause}")
    }
}

/// A streaming client body: converted output is sent as soon as it is produced. The
/// upstream responses are read one after the other.
fn streaming_body<C: StreamConverter>(
    upstreams: Vec<reqwest::Response>,
    converter: C,
    report: UpstreamUsage,
) -> Body {
    let translation = Translation::new(upstreams, converter, report);
    let frames = futures_util::stream::unfold(translation, |mut t| async move {
        t.next_output()
            .await
            .map(|out| (Ok::<_, BoxError>(Frame::data(Bytes::from(out))), t))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// A `text/event-stream` response whose body is [`streaming_body`] of one upstream response.
pub(crate) fn streaming_response<C: StreamConverter>(
    upstream: reqwest::Response,
    converter: C,
) -> hyper::Response<Body> {
    streaming_response_of_all(vec![upstream], converter)
}

/// A `text/event-stream` response whose body is [`streaming_body`] of several upstream
/// responses read one after the other.
pub(crate) fn streaming_response_of_all<C: StreamConverter>(
    upstreams: Vec<reqwest::Response>,
    converter: C,
) -> hyper::Response<Body> {
    use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
    let report = UpstreamUsage::default();
    let mut response = hyper::Response::new(streaming_body(upstreams, converter, report.clone()));
    // The record takes the usage from the upstream's events, not from the converted body.
    response.extensions_mut().insert(report);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Runs a whole upstream stream through `converter` (for clients that did not ask to stream)
/// and returns the converter in its final state.
pub(crate) async fn run_to_end<C: StreamConverter>(upstream: reqwest::Response, converter: C) -> C {
    run_all_to_end(vec![upstream], converter).await
}

/// [`run_to_end`] over several upstream responses read one after the other.
pub(crate) async fn run_all_to_end<C: StreamConverter>(
    upstreams: Vec<reqwest::Response>,
    converter: C,
) -> C {
    // The converted body is whole and carries the usage: the response's tap reads it there.
    let mut translation = Translation::new(upstreams, converter, UpstreamUsage::default());
    while translation.next_output().await.is_some() {}
    translation.converter
}
