//! Logging: journald (structured fields, queryable with `journalctl FIELD=value`) when the
//! service runs under systemd, else stderr. Third-party crates are capped at `info` so that no
//! level of verbosity can make them print request or header internals.
//!
//! On stderr, a worker shard's lines are batched: each thread that asks for it collects its
//! lines and writes them in one go [`WRITE_DELAY`] after the first of them (or when 16 KiB
//! gather), so a shard pays one write for many requests, busy or not, and a line reaches
//! stderr at most that late (its timestamp is when it was formatted).
//! Such a thread can also [`defer`] a finished request's work (its usage accounting and log
//! line), so that it runs after the response has gone out rather than between its last bytes
//! and the socket; the worker hands that work on to a thread of its own
//! ([`start_after_response_thread`]), so that a shard is free for the next request at once.
//! Lines on stderr are `TIME LEVEL message key=value…` (strings quoted), written by
//! [`PlainLine`] without going through the general-purpose formatter. The request line, written
//! for every request, can skip tracing's per-field dispatch altogether: [`write_plain_line`]
//! puts the same text straight into the thread's batch.
//!
//! Uses: nothing else of the crate and itoa, tokio, tracing, tracing_journald, tracing_subscriber.

use std::cell::RefCell;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Creates no threads (safe before fork).
pub(crate) fn init(level: &str) -> Result<(), String> {
    let level = LevelFilter::from_str(level).map_err(|_| {
        format!("invalid log level {level:?}: use error, warn, info, debug or trace")
    })?;
    let third_party = level.min(LevelFilter::INFO);
    let filter = Targets::new()
        .with_default(third_party)
        .with_target("codex_responses_api_proxy", level);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(journald.with_syslog_identifier("codex-responses-api-proxy".into()))
                .with(filter)
                .init();
            return Ok(());
        }
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| BatchingStderr)
                .event_format(PlainLine),
        )
        .with(filter)
        .init();
    PLAIN_STDERR.store(true, Ordering::Relaxed);
    Ok(())
}

/// Set by [`init`] once lines go to stderr in [`PlainLine`]'s format.
static PLAIN_STDERR: AtomicBool = AtomicBool::new(false);

/// Writes one line in the stderr format straight into this thread's batch, without tracing's
/// per-field dispatch (for the request line). Returns `false`, having written nothing, where
/// lines do not go to a batched stderr (journald, a thread that does not batch): the caller
/// then logs through tracing. The caller checks that the level is enabled.
pub(crate) fn write_plain_line(
    level: tracing::Level,
    fill: impl FnOnce(&mut PlainFields<'_>),
) -> bool {
    if !PLAIN_STDERR.load(Ordering::Relaxed) {
        return false;
    }
    append_to_batch(|lines| plain_line_into(lines, std::time::SystemTime::now(), level, fill))
}

/// Lets `append` add whole lines to this thread's batch (waking [`write_batches`] for a first
/// line, writing the batch out past [`BATCH_LIMIT`]); `false`, without calling it, on a thread
/// that does not batch.
fn append_to_batch(append: impl FnOnce(&mut Vec<u8>)) -> bool {
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        let Some(lines) = batch.as_mut() else {
            return false;
        };
        if lines.is_empty() {
            wake_writer();
        }
        append(lines);
        if lines.len() >= BATCH_LIMIT {
            write_out(lines);
            lines.clear();
        }
        true
    })
}

/// Appends one whole line (timestamp, level, what `fill` writes, line end) to `buf`.
fn plain_line_into(
    buf: &mut Vec<u8>,
    now: std::time::SystemTime,
    level: tracing::Level,
    fill: impl FnOnce(&mut PlainFields<'_>),
) {
    let mut out = ByteWriter(buf);
    let _ = write_timestamp(&mut out, now);
    let _ = write_level(&mut out, level);
    let mut fields = PlainFields { out };
    fill(&mut fields);
    fields.out.0.push(b'\n');
}

/// The message and fields of a line written by [`write_plain_line`], as [`PlainLine`] writes
/// the same values recorded through tracing.
pub(crate) struct PlainFields<'a> {
    out: ByteWriter<'a>,
}

impl PlainFields<'_> {
    /// Message text, as it is (first, before any field).
    pub(crate) fn text(&mut self, text: &str) {
        self.out.0.extend_from_slice(text.as_bytes());
    }

    /// ` name=value`, the value as it is (tracing's `%` fields).
    pub(crate) fn display(&mut self, name: &str, value: &str) {
        let _ = write_name(&mut self.out, name);
        self.text(value);
    }

    /// ` name="value"` (a `&str` field).
    pub(crate) fn string(&mut self, name: &str, value: &str) {
        let _ = write_name(&mut self.out, name);
        let _ = write_str_value(&mut self.out, value);
    }

    /// ` name=value` for a number.
    pub(crate) fn number(&mut self, name: &str, value: u64) {
        self.display(name, itoa::Buffer::new().format(value));
    }
}

/// Test support: the line [`write_plain_line`] would write, and what tracing writes in the
/// stderr format while `log` runs; both without their timestamps.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    pub(crate) fn plain_line(
        level: tracing::Level,
        fill: impl FnOnce(&mut super::PlainFields<'_>),
    ) -> String {
        let mut buf = Vec::new();
        super::plain_line_into(&mut buf, std::time::SystemTime::now(), level, fill);
        without_timestamp(&buf)
    }

    pub(crate) fn traced(log: impl FnOnce()) -> String {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || SinkWriter(writer.clone()))
                .event_format(super::PlainLine),
        );
        tracing::subscriber::with_default(subscriber, log);
        let bytes = sink.lock().unwrap().clone();
        without_timestamp(&bytes)
    }

    fn without_timestamp(line: &[u8]) -> String {
        let line = String::from_utf8(line.to_vec()).unwrap();
        let (timestamp, rest) = line.split_once(' ').unwrap();
        assert!(timestamp.ends_with('Z'), "{line}");
        rest.to_string()
    }

    struct SinkWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SinkWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

/// `fmt::Write` into bytes.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// ` LEVEL ` padded to the width of the longest level name.
fn write_level(writer: &mut impl std::fmt::Write, level: tracing::Level) -> std::fmt::Result {
    let level = level.as_str();
    writer.write_str(&"      "[..6 - level.len().min(5)])?;
    writer.write_str(level)?;
    writer.write_char(' ')
}

/// ` name=`.
fn write_name(writer: &mut impl std::fmt::Write, name: &str) -> std::fmt::Result {
    writer.write_char(' ')?;
    writer.write_str(name)?;
    writer.write_char('=')
}

/// A string field's value: in plain quotes when that is unambiguous, else escaped as `{:?}`.
fn write_str_value(writer: &mut impl std::fmt::Write, value: &str) -> std::fmt::Result {
    if quotes_plainly(value) {
        writer.write_char('"')?;
        writer.write_str(value)?;
        writer.write_char('"')
    } else {
        write!(writer, "{value:?}")
    }
}

/// Lines gathered past this size are written even while the thread is busy.
const BATCH_LIMIT: usize = 16 * 1024;

/// How long a batched line may wait for others before the batch is written.
pub(crate) const WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Past this many deferred items waiting on a shard, they are handed on to the after-response
/// thread at once (without one, the oldest runs at once, one for each new item).
const DEFERRED_LIMIT: usize = 64;

type Deferred = Box<dyn FnOnce() + Send>;

thread_local! {
    /// `Some` on threads that batch their lines (worker shards).
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// Work waiting for the thread to run out of other work, oldest first.
    static DEFERRED: RefCell<std::collections::VecDeque<Deferred>> =
        const { RefCell::new(std::collections::VecDeque::new()) };
    /// The task of [`write_batches`], waiting for a first line or deferred item.
    static WRITER: RefCell<Option<std::task::Waker>> = const { RefCell::new(None) };
    /// Set on the after-response thread: work deferred there runs at once.
    static RUNS_DEFERRED_WORK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` (a finished request's usage accounting and log line) once the response has gone
/// out. On a thread that batches, it waits until this thread's runtime next runs out of work
/// ([`run_deferred`]), at the latest [`WRITE_DELAY`] on a thread that stays busy
/// ([`write_batches`]), or for the thread's flush; then it is handed on to the after-response
/// thread, or runs here where there is none. Past [`DEFERRED_LIMIT`] waiting items they are
/// handed on at once (without the thread, the oldest runs, so that no single caller pays for
/// the whole queue). On a thread that does not batch it runs now.
pub(crate) fn defer(work: impl FnOnce() + Send + 'static) {
    let batching = BATCH.with(|batch| batch.borrow().is_some());
    if !batching || RUNS_DEFERRED_WORK.with(std::cell::Cell::get) {
        return work();
    }
    let after_response = AFTER_RESPONSE.get();
    let oldest = DEFERRED.with(|deferred| {
        let mut deferred = deferred.borrow_mut();
        if deferred.is_empty() {
            wake_writer();
        }
        deferred.push_back(Box::new(work));
        if deferred.len() <= DEFERRED_LIMIT {
            return None;
        }
        if let Some(thread) = after_response {
            thread.hand_over(&mut deferred);
        }
        // Whatever the thread did not take: the oldest runs here.
        deferred.pop_front()
    });
    if let Some(oldest) = oldest {
        run_one(oldest);
    }
}

/// Hands the deferred work on to the after-response thread, or runs it now where there is
/// none; for a runtime about to go idle.
pub(crate) fn run_deferred() {
    let mut work = DEFERRED.with(|deferred| {
        let mut deferred = deferred.borrow_mut();
        if let Some(thread) = AFTER_RESPONSE.get() {
            thread.hand_over(&mut deferred);
        }
        if deferred.is_empty() {
            // Keeps the queue's allocation for the next items.
            return std::collections::VecDeque::new();
        }
        std::mem::take(&mut *deferred)
    });
    for item in work.drain(..) {
        run_one(item);
    }
}

/// How long the after-response thread lets work gather between two rounds while requests keep
/// finishing: under load it wakes this often, not once per request, and the shards never have
/// to wake it.
const GATHER_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Finished requests' deferred work, handed on by the shards and run on a thread of its own;
/// the lines it logs are written once per round.
struct AfterResponse {
    handed: std::sync::Mutex<Handed>,
    ready: std::sync::Condvar,
    gather_delay: std::time::Duration,
}

/// Most items waiting for the after-response thread: about three rounds' worth at the
/// highest request rates measured here (each item keeps its response's usage events, at most
/// some 80 KiB and usually 2–3 KiB).
const HANDED_LIMIT: usize = 1024;

#[derive(Default)]
struct Handed {
    items: Vec<Deferred>,
    /// The thread waits for work: the next hand-over wakes it.
    waiting: bool,
    /// No more hand-overs: the thread runs what it has and ends.
    stopping: bool,
    /// Times a hand-over woke the thread.
    wakes: u64,
}

static AFTER_RESPONSE: std::sync::OnceLock<std::sync::Arc<AfterResponse>> =
    std::sync::OnceLock::new();
static AFTER_RESPONSE_THREAD: std::sync::Mutex<Option<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(None);

impl AfterResponse {
    fn new(gather_delay: std::time::Duration) -> Self {
        AfterResponse {
            handed: std::sync::Mutex::default(),
            ready: std::sync::Condvar::new(),
            gather_delay,
        }
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes all of `items`, unless the thread is stopping or already has
    /// [`HANDED_LIMIT`] waiting: then they stay with the caller, which runs them itself (a
    /// thread that falls behind slows the shards down instead of piling work up).
    fn hand_over(&self, items: &mut std::collections::VecDeque<Deferred>) {
        if items.is_empty() {
            return;
        }
        let mut handed = self.handed();
        if handed.stopping || handed.items.len() >= HANDED_LIMIT {
            return;
        }
        handed.items.extend(items.drain(..));
        if handed.waiting {
            handed.waiting = false;
            handed.wakes += 1;
            drop(handed);
            self.ready.notify_one();
        }
    }

    /// The thread's loop: each round runs what was handed over, then `end_of_round`; it
    /// returns once stopped with nothing left.
    fn serve(&self, end_of_round: impl Fn()) {
        loop {
            let (items, stopping) = {
                let mut handed = self.handed();
                while handed.items.is_empty() && !handed.stopping {
                    handed.waiting = true;
                    handed = self
                        .ready
                        .wait(handed)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                handed.waiting = false;
                (std::mem::take(&mut handed.items), handed.stopping)
            };
            let ran = items.len();
            for item in items {
                run_one(item);
            }
            end_of_round();
            if stopping {
                if ran == 0 {
                    return;
                }
                continue;
            }
            let handed = self.handed();
            let _ = self
                .ready
                .wait_timeout_while(handed, self.gather_delay, |handed| !handed.stopping);
        }
    }

    fn stop(&self) {
        self.handed().stopping = true;
        self.ready.notify_one();
    }
}

/// Starts the thread that runs the work shards [`defer`] (after fork and privilege drop: it
/// is an ordinary thread of the worker). Without it, that work runs on the shards.
pub(crate) fn start_after_response_thread() -> std::io::Result<()> {
    if AFTER_RESPONSE.get().is_some() {
        return Ok(());
    }
    let shared = std::sync::Arc::new(AfterResponse::new(GATHER_DELAY));
    let serving = shared.clone();
    let thread = std::thread::Builder::new()
        .name("after-response".into())
        .spawn(move || {
            // Should the thread end some other way than being stopped, the shards go back to
            // running their own work rather than handing it to nobody.
            struct StopOnExit(std::sync::Arc<AfterResponse>);
            impl Drop for StopOnExit {
                fn drop(&mut self) {
                    self.0.stop();
                }
            }
            let serving = StopOnExit(serving);
            RUNS_DEFERRED_WORK.with(|runs| runs.set(true));
            batch_this_thread();
            serving.0.serve(write_batch);
        })?;
    if let Err(unused) = AFTER_RESPONSE.set(shared) {
        // Started twice at once: the first one stays.
        unused.stop();
        return Ok(());
    }
    *AFTER_RESPONSE_THREAD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
    Ok(())
}

/// Runs everything handed over so far, writes its lines and ends the after-response thread;
/// work deferred after this runs where it was deferred.
pub(crate) fn stop_after_response_thread() {
    if let Some(shared) = AFTER_RESPONSE.get() {
        shared.stop();
    }
    let thread = AFTER_RESPONSE_THREAD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}

/// A panic in one item (a bug) takes neither the others nor the thread with it.
fn run_one(work: Deferred) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
        tracing::error!("deferred request accounting or logging failed (panicked)");
    }
}

/// Wakes [`write_batches`] if it waits for something to do.
fn wake_writer() {
    if let Some(writer) = WRITER.with(|writer| writer.borrow_mut().take()) {
        writer.wake();
    }
}

/// From now on this thread's stderr lines wait for [`write_batches`], [`flush_this_thread`] or
/// the size limit.
pub(crate) fn batch_this_thread() {
    BATCH.with(|batch| *batch.borrow_mut() = Some(Vec::with_capacity(BATCH_LIMIT)));
}

/// On a batching thread's runtime, for as long as it runs: [`WRITE_DELAY`] after the first
/// gathered line or deferred item, runs the deferred work and writes the gathered lines (a
/// runtime that stays busy never parks, so this bounds how long either waits).
pub(crate) async fn write_batches() {
    loop {
        std::future::poll_fn(|cx| {
            let lines = BATCH.with(|batch| batch.borrow().as_ref().is_some_and(|l| !l.is_empty()));
            if lines || DEFERRED.with(|deferred| !deferred.borrow().is_empty()) {
                return std::task::Poll::Ready(());
            }
            WRITER.with(|writer| *writer.borrow_mut() = Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await;
        tokio::time::sleep(WRITE_DELAY).await;
        run_deferred();
        write_batch();
    }
}

/// Runs the deferred work and writes the lines this thread has gathered.
pub(crate) fn flush_this_thread() {
    run_deferred();
    write_batch();
}

fn write_batch() {
    BATCH.with(|batch| {
        if let Some(lines) = batch.borrow_mut().as_mut() {
            if !lines.is_empty() {
                write_out(lines);
                lines.clear();
            }
        }
    });
}

fn write_out(lines: &[u8]) {
    #[cfg(test)]
    if tests::SINK
        .with(|sink| {
            sink.borrow_mut()
                .as_mut()
                .map(|s| s.extend_from_slice(lines))
        })
        .is_some()
    {
        return;
    }
    let _ = std::io::stderr().write_all(lines);
}

/// Stderr, through this thread's batch when it has one. The formatter hands over one whole
/// line per write.
struct BatchingStderr;

impl Write for BatchingStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if !append_to_batch(|lines| lines.extend_from_slice(line)) {
            std::io::stderr().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// When set, batched writes land here instead of on stderr.
        pub(super) static SINK: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn handed_over_work_runs_on_the_after_response_thread_in_rounds() {
        use std::collections::VecDeque;
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        // A gather delay far longer than the test: the second round only comes with the stop.
        let shared = Arc::new(AfterResponse::new(std::time::Duration::from_secs(600)));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (serving, counted) = (shared.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            serving.serve(|| {
                counted.fetch_add(1, Ordering::SeqCst);
            })
        });
        wait_until("the thread waits", || shared.handed().waiting);
        let order = Arc::new(Mutex::new(Vec::new()));
        let here = std::thread::current().id();
        let items = |numbers: std::ops::Range<usize>| -> VecDeque<Deferred> {
            numbers
                .map(|i| {
                    let order = order.clone();
                    Box::new(move || {
                        assert_ne!(std::thread::current().id(), here);
                        order.lock().unwrap().push(i);
                    }) as Deferred
                })
                .collect()
        };
        let ran = || order.lock().unwrap().clone();
        // Nothing to hand over wakes nobody.
        shared.hand_over(&mut VecDeque::new());
        assert_eq!(shared.handed().wakes, 0);
        // A panicking item takes neither its round nor the thread with it.
        let mut queue = items(0..2);
        queue.push_back(Box::new(|| panic!("a deferred item that panics")));
        queue.extend(items(2..3));
        shared.hand_over(&mut queue);
        assert!(queue.is_empty(), "all were taken");
        wait_until("the first round", || rounds.load(Ordering::SeqCst) == 1);
        assert_eq!(ran(), [0, 1, 2]);
        assert_eq!(shared.handed().wakes, 1);
        // While the thread gathers, hand-overs neither wake it nor run at once.
        for i in 3..6 {
            shared.hand_over(&mut items(i..i + 1));
        }
        assert_eq!(shared.handed().wakes, 1, "no wake while it gathers");
        assert_eq!(ran().len(), 3, "they wait for the next round");
        // Past the limit, work stays with whoever deferred it.
        let waiting = shared.handed().items.len();
        let mut filler: VecDeque<Deferred> = (waiting..HANDED_LIMIT)
            .map(|_| Box::new(|| {}) as Deferred)
            .collect();
        shared.hand_over(&mut filler);
        let mut over = items(6..7);
        shared.hand_over(&mut over);
        assert_eq!(over.len(), 1, "the thread has enough waiting");
        // Stopping runs what was handed over before it, then ends the thread.
        shared.stop();
        thread.join().unwrap();
        assert_eq!(ran(), [0, 1, 2, 3, 4, 5]);
        assert!(rounds.load(Ordering::SeqCst) >= 2);
        // After that, work stays with whoever deferred it.
        let mut late = items(9..10);
        shared.hand_over(&mut late);
        assert_eq!(late.len(), 1);
    }

    #[test]
    fn a_batch_is_written_a_short_delay_after_its_first_line() {
        std::thread::spawn(|| {
            SINK.with(|sink| *sink.borrow_mut() = Some(Vec::new()));
            batch_this_thread();
            let written = || SINK.with(|sink| sink.borrow().as_ref().unwrap().len());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                tokio::spawn(write_batches());
                tokio::task::yield_now().await;
                BatchingStderr.write_all(b"one\n").unwrap();
                BatchingStderr.write_all(b"two\n").unwrap();
                tokio::task::yield_now().await;
                assert_eq!(written(), 0, "not at once");
                tokio::time::sleep(WRITE_DELAY * 4).await;
                assert_eq!(written(), 8, "both lines, in one write");
                BatchingStderr.write_all(b"three\n").unwrap();
                tokio::time::sleep(WRITE_DELAY * 4).await;
                assert_eq!(written(), 14, "and again for the next line");
                // This runtime never runs the deferred work when it parks: the writer does.
                defer(|| BatchingStderr.write_all(b"deferred\n").unwrap());
                tokio::time::sleep(WRITE_DELAY * 4).await;
                assert_eq!(written(), 23, "deferred work runs within the write delay");
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn batched_lines_wait_for_the_flush_and_unbatched_threads_write_through() {
        std::thread::spawn(|| {
            SINK.with(|sink| *sink.borrow_mut() = Some(Vec::new()));
            batch_this_thread();
            BatchingStderr.write_all(b"line\n").unwrap();
            BATCH.with(|b| assert_eq!(b.borrow().as_deref(), Some(&b"line\n"[..])));
            flush_this_thread();
            BATCH.with(|b| assert_eq!(b.borrow().as_deref(), Some(&b""[..])));
            let big = vec![b'x'; BATCH_LIMIT];
            BatchingStderr.write_all(&big).unwrap();
            BATCH.with(|b| assert!(b.borrow().as_ref().unwrap().is_empty()));
            let written = SINK.with(|sink| sink.borrow().as_ref().unwrap().len());
            assert_eq!(
                written,
                5 + BATCH_LIMIT,
                "the flush and the size limit both wrote"
            );
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            use std::sync::atomic::AtomicUsize;
            use std::sync::{Arc, Mutex};
            let ran = Arc::new(AtomicUsize::new(0));
            let counter = ran.clone();
            defer(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(
                ran.load(Ordering::Relaxed),
                1,
                "a thread that does not batch runs deferred work at once"
            );
            batch_this_thread();
            let counter = ran.clone();
            defer(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), 1);
            flush_this_thread();
            assert_eq!(ran.load(Ordering::Relaxed), 2);
            // Without an after-response thread (this test starts none), items record their
            // number; past the limit the oldest runs, one per new item.
            let order = Arc::new(Mutex::new(Vec::new()));
            for i in 0..DEFERRED_LIMIT + 3 {
                let order = order.clone();
                defer(move || order.lock().unwrap().push(i));
            }
            assert_eq!(*order.lock().unwrap(), [0, 1, 2], "the three oldest ran");
            flush_this_thread();
            assert_eq!(
                order.lock().unwrap().len(),
                DEFERRED_LIMIT + 3,
                "the rest ran"
            );
            let after = order.clone();
            defer(|| panic!("a deferred item that panics"));
            defer(move || after.lock().unwrap().push(999));
            flush_this_thread();
            assert_eq!(
                order.lock().unwrap().last(),
                Some(&999),
                "the item after a panic ran"
            );
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            BatchingStderr.write_all(b"").unwrap();
            BATCH.with(|b| assert!(b.borrow().is_none()));
        })
        .join()
        .unwrap();
    }
}

/// The stderr line format: `2026-11-21T19:50:01.123456Z INFO message key=value …`, UTC.
struct PlainLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write_timestamp(&mut writer, std::time::SystemTime::now())?;
        write_level(&mut writer, *event.metadata().level())?;
        let mut fields = FieldWriter {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// Writes `message` first as it is, then ` key=value` for every other field.
struct FieldWriter<'w, 'a> {
    writer: &'w mut tracing_subscriber::fmt::format::Writer<'a>,
    result: std::fmt::Result,
}

impl FieldWriter<'_, '_> {
    /// ` name=value`, `value` written as it is.
    fn put(&mut self, name: &str, value: &str) {
        if self.result.is_ok() {
            self.result = (|| {
                write_name(self.writer, name)?;
                self.writer.write_str(value)
            })();
        }
    }
}

/// Whether `{value:?}` would be `value` in plain quotes.
fn quotes_plainly(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

// Numbers and plain strings (the request line's fields) are written directly rather than
// through `write!`: the request line is written for every request.
impl tracing::field::Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if self.result.is_ok() {
            self.result = (|| {
                write_name(self.writer, field.name())?;
                write_str_value(self.writer, value)
            })();
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        let mut buffer = itoa::Buffer::new();
        self.put(field.name(), buffer.format(value));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if self.result.is_ok() {
            self.result = write!(self.writer, " {}={value}", field.name());
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field.name(), if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_ok() {
            self.result = (|| {
                if field.name() != "message" {
                    write_name(self.writer, field.name())?;
                }
                write!(self.writer, "{value:?}")
            })();
        }
    }
}

/// RFC 3339 UTC with microseconds; the calendar part is worked out once per second.
fn write_timestamp(
    writer: &mut impl std::fmt::Write,
    now: std::time::SystemTime,
) -> std::fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            cached.1 = crate::clock::format_utc_second(secs);
            cached.0 = secs;
        }
        let mut fraction = *b".000000Z";
        let mut micros = since_epoch.subsec_micros();
        for digit in fraction[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        writer.write_str(&cached.1)?;
        writer.write_str(std::str::from_utf8(&fraction).unwrap_or(".?Z"))
    })
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn stamp(secs: u64, micros: u32) -> String {
        let mut out = String::new();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::new(secs, micros * 1000)).unwrap();
        out
    }

    #[test]
    fn a_line_has_the_level_the_message_and_every_field_in_order() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .event_format(PlainLine),
        );
        tracing::subscriber::with_default(subscriber, || {
            let path = "/v1/responses";
            tracing::info!(
                method = %"POST",
                status = 200u64,
                zero = 0u64,
                big = u64::MAX,
                negative = -3i64,
                done = true,
                plain = "alice",
                quoted = "say \"hi\"\n",
                "POST {path} {}",
                200
            );
            tracing::warn!("short");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        assert_eq!(
            first.len() - first.trim_start_matches(|c: char| c != ' ').len(),
            27,
            "{first}"
        );
        assert_eq!(
            &first[27..],
            concat!(
                "  INFO POST /v1/responses 200 method=POST status=200 zero=0 ",
                "big=18446744073709551615 negative=-3 done=true plain=\"alice\" ",
                "quoted=\"say \\\"hi\\\"\\n\""
            )
        );
        assert_eq!(&lines.next().unwrap()[27..], "  WARN short");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(stamp(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(stamp(1_795_290_601, 123_456), "2026-11-21T19:50:01.123456Z");
        assert_eq!(stamp(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        // The cached second is replaced when the second changes, also backwards.
        assert_eq!(stamp(86_399, 0), "1970-01-01T23:59:59.000000Z");
    }
}
