//! Per-user limits: requests per minute (a sliding one-minute window) and tokens per UTC day
//! (input + output, counted when a request finishes). Callers whose uid is unknown share one
//! bucket of their own. Time is always passed in, so tests can drive the clock.
//!
//! [`LimitState::check`] admits a request (and counts it against the minute) or says how long
//! to wait; [`LimitState::record`] adds a finished request's tokens to the day. The state is
//! rebuilt from the usage store at worker start ([`LimitState::seed_from`]), which is how
//! limits survive a restart. A request that is already running can take a user past the
//! daily limit; the next one is refused.
//!
//! Uses: nothing else of the crate and openai_wire.

use super::store::UsageRecord;
use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

const WINDOW_MS: u64 = 60_000;
const DAY_SECS: u64 = 86_400;

/// The configured limits; `None` = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_day: Option<u64>,
}

impl Limits {
    pub(crate) fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_day.is_none()
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKind {
    RequestsPerMinute,
    TokensPerDay,
}

impl LimitKind {
    /// Its name in the metrics (`limit` label), as the setting is named.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerDay => "tokens_per_day",
        }
    }
}

/// A refusal: answer 429 with `Retry-After: secs` and [`RetryAfter::to_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryAfter {
    /// Whole seconds to wait, at least 1.
    pub secs: u64,
    pub kind: LimitKind,
    /// The configured limit that was reached.
    pub limit: u64,
}

impl RetryAfter {
    /// The OpenAI error `code`.
    pub(crate) const CODE: &'static str = "rate_limit_exceeded";

    /// The `Retry-After` header value.
    #[cfg(test)]
    pub(crate) fn header_value(&self) -> String {
        self.secs.to_string()
    }

    /// The OpenAI error `type` (`requests` or `tokens`, as OpenAI's own rate limits say).
    pub(crate) fn error_type(&self) -> &'static str {
        match self.kind {
            LimitKind::RequestsPerMinute => "requests",
            LimitKind::TokensPerDay => "tokens",
        }
    }

    pub(crate) fn message(&self) -> String {
        match self.kind {
            LimitKind::RequestsPerMinute => format!(
                "Rate limit reached: this proxy allows {} requests per minute for each local user. Please try again in {}s.",
                self.limit, self.secs
            ),
            LimitKind::TokensPerDay => format!(
                "Daily token limit reached: this proxy allows {} tokens per day (UTC) for each local user. The limit resets in {}s, at midnight UTC.",
                self.limit, self.secs
            ),
        }
    }

    /// The JSON error body.
    #[cfg(test)]
    pub(crate) fn to_body(&self) -> String {
        openai_wire::api_error::error_body(
            &self.message(),
            self.error_type(),
            Some(Self::CODE),
            None,
        )
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Admission times (unix ms) inside the last minute, oldest first.
    recent: VecDeque<u64>,
    /// The UTC day (days since the epoch) that `day_tokens` counts.
    day: u64,
    day_tokens: u64,
}

impl Bucket {
    fn roll(&mut self, now_ms: u64) {
        let today = now_ms / 1000 / DAY_SECS;
        if self.day != today {
            self.day = today;
            self.day_tokens = 0;
        }
        while self
            .recent
            .front()
            .is_some_and(|&t| t + WINDOW_MS <= now_ms)
        {
            self.recent.pop_front();
        }
    }

    fn idle(&self) -> bool {
        self.recent.is_empty() && self.day_tokens == 0
    }
}

/// Limit bookkeeping for all users. Keep it behind a `Mutex`; every call is O(1) amortized.
#[derive(Debug)]
pub(crate) struct LimitState {
    limits: Limits,
    /// `None` is the shared bucket of callers whose uid is unknown.
    buckets: HashMap<Option<u32>, Bucket>,
    calls: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LimitState {
    pub(crate) fn new(limits: Limits) -> Self {
        LimitState {
            limits,
            buckets: HashMap::new(),
            calls: 0,
        }
    }

    fn bucket(&mut self, uid: Option<u32>, now_ms: u64) -> &mut Bucket {
        self.calls += 1;
        if self.calls % 1024 == 0 && self.buckets.len() > 256 {
            self.buckets.retain(|_, b| {
                b.roll(now_ms);
                !b.idle()
            });
        }
        let bucket = self.buckets.entry(uid).or_default();
        bucket.roll(now_ms);
        bucket
    }

    /// Admits one request from `uid` at `now` (counting it against the minute), or says how
    /// long to wait.
    pub(crate) fn check(&mut self, uid: Option<u32>, now: SystemTime) -> Result<(), RetryAfter> {
        if self.limits.is_unlimited() {
            return Ok(());
        }
        let limits = self.limits;
        let now_ms = unix_ms(now);
        let bucket = self.bucket(uid, now_ms);
        if let Some(limit) = limits.tokens_per_day {
            if bucket.day_tokens >= limit {
                let next_midnight_ms = (bucket.day + 1) * DAY_SECS * 1000;
                return Err(RetryAfter {
                    secs: (next_midnight_ms - now_ms).div_ceil(1000).max(1),
                    kind: LimitKind::TokensPerDay,
                    limit,
                });
            }
        }
        if let Some(limit) = limits.requests_per_minute {
            if bucket.recent.len() >= limit as usize {
                // The wait until enough old admissions leave the window for one more.
                // (With a limit of 0 nothing ever frees up: a minute is as good as any.)
                let frees_at = match (bucket.recent.len() + 1).checked_sub(limit as usize + 1) {
                    Some(index) if limit > 0 => bucket
                        .recent
                        .get(index)
                        .map_or(now_ms + WINDOW_MS, |&t| t + WINDOW_MS),
                    _ => now_ms + WINDOW_MS,
                };
                return Err(RetryAfter {
                    secs: frees_at.saturating_sub(now_ms).div_ceil(1000).max(1),
                    kind: LimitKind::RequestsPerMinute,
                    limit: u64::from(limit),
                });
            }
            bucket.recent.push_back(now_ms);
        }
        Ok(())
    }

    /// Adds a finished request's tokens (input + output) to `uid`'s day.
    pub(crate) fn record(&mut self, uid: Option<u32>, now: SystemTime, tokens: u64) {
        if self.limits.tokens_per_day.is_none() || tokens == 0 {
            return;
        }
        let bucket = self.bucket(uid, unix_ms(now));
        bucket.day_tokens = bucket.day_tokens.saturating_add(tokens);
    }

    /// Rebuilds the state from stored records (those of the current UTC day are enough; read
    /// them with `store::for_each_in_range(path, start_of_utc_day(now), u64::MAX, ..)`).
    /// Requests stored in the last minute count against the minute, tokens stored today
    /// against the day.
    pub(crate) fn seed_from<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a UsageRecord>,
        now: SystemTime,
    ) {
        if self.limits.is_unlimited() {
            return;
        }
        let now_ms = unix_ms(now);
        let today = now_ms / 1000 / DAY_SECS;
        for record in records {
            let ts_ms = record.ts.saturating_mul(1000);
            if ts_ms > now_ms || record.ts / DAY_SECS != today {
                continue;
            }
            let bucket = self.buckets.entry(record.uid).or_default();
            bucket.roll(now_ms);
            if self.limits.tokens_per_day.is_some() {
                bucket.day_tokens = bucket.day_tokens.saturating_add(record.total_tokens());
            }
            if self.limits.requests_per_minute.is_some() && ts_ms + WINDOW_MS > now_ms {
                bucket.recent.push_back(ts_ms);
            }
        }
        if let Some(limit) = self.limits.requests_per_minute {
            for bucket in self.buckets.values_mut() {
                bucket.recent.make_contiguous().sort_unstable();
                while bucket.recent.len() > limit as usize {
                    bucket.recent.pop_front();
                }
            }
        }
    }
}

/// Unix seconds at the start of the UTC day that holds `now`.
pub(crate) fn start_of_utc_day(now: SystemTime) -> u64 {
    unix_ms(now) / 1000 / DAY_SECS * DAY_SECS
}

/// `UNIX_EPOCH + secs`, for callers that hold unix seconds.
#[cfg(test)]
pub(crate) fn at_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        at_unix(secs)
    }

    fn ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(ms)
    }

    const DAY0: u64 = 20_000 * DAY_SECS; // some UTC midnight

    #[test]
    fn unlimited_admits_everything() {
        let mut s = LimitState::new(Limits::default());
        for i in 0..1000 {
            assert!(s.check(Some(1), t(DAY0 + i / 100)).is_ok());
            s.record(Some(1), t(DAY0), 1_000_000);
        }
        assert!(s.buckets.is_empty());
    }

    #[test]
    fn requests_per_minute_is_a_sliding_window() {
        let mut s = LimitState::new(Limits {
            requests_per_minute: Some(3),
            tokens_per_day: None,
        });
        let base = (DAY0 + 100) * 1000;
        assert!(s.check(Some(1), ms(base)).is_ok());
        assert!(s.check(Some(1), ms(base + 10_000)).is_ok());
        assert!(s.check(Some(1), ms(base + 20_000)).is_ok());
        let refused = s.check(Some(1), ms(base + 30_500)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::RequestsPerMinute);
        // The first admission leaves the window at base + 60s: 29.5 s later, rounded up.
        assert_eq!(refused.secs, 30);
        assert_eq!(refused.header_value(), "30");
        // Refusals are not counted; other users are independent, unknown callers share one.
        assert!(s.check(Some(2), ms(base + 30_500)).is_ok());
        for _ in 0..3 {
            assert!(s.check(None, ms(base)).is_ok());
        }
        assert!(s.check(None, ms(base + 1)).is_err());
        assert!(s.check(Some(1), ms(base + 59_999)).is_err());
        assert!(s.check(Some(1), ms(base + 60_000)).is_ok());
        assert!(s.check(Some(1), ms(base + 60_001)).is_err());
        assert!(s.check(Some(1), ms(base + 70_000)).is_ok());
    }

    #[test]
    fn zero_requests_per_minute_refuses_all() {
        let mut s = LimitState::new(Limits {
            requests_per_minute: Some(0),
            tokens_per_day: None,
        });
        let r = s.check(Some(1), t(DAY0)).unwrap_err();
        assert_eq!(r.secs, 60);
    }

    #[test]
    fn tokens_per_day_resets_at_utc_midnight() {
        let mut s = LimitState::new(Limits {
            requests_per_minute: None,
            tokens_per_day: Some(1000),
        });
        let noon = DAY0 + DAY_SECS / 2;
        assert!(s.check(Some(7), t(noon)).is_ok());
        s.record(Some(7), t(noon), 999);
        assert!(s.check(Some(7), t(noon + 1)).is_ok());
        s.record(Some(7), t(noon + 1), 500);
        let refused = s.check(Some(7), t(noon + 2)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::TokensPerDay);
        assert_eq!(refused.secs, DAY_SECS / 2 - 2);
        assert!(s.check(Some(8), t(noon + 2)).is_ok());
        assert!(s.check(Some(7), t(DAY0 + DAY_SECS - 1)).is_err());
        assert!(s.check(Some(7), t(DAY0 + DAY_SECS)).is_ok());
        let body: serde_json::Value = serde_json::from_str(&refused.to_body()).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "tokens");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 tokens per day"));
    }

    #[test]
    fn seeding_from_the_store_survives_a_restart() {
        let limits = Limits {
            requests_per_minute: Some(2),
            tokens_per_day: Some(100),
        };
        let now = DAY0 + 5000;
        let rec = |ts: u64, uid: Option<u32>, tokens: u64| {
            let mut r = UsageRecord::new(ts, uid, None, "/v1/responses", 200, None);
            r.input_tokens = tokens;
            r
        };
        let records = vec![
            rec(DAY0 - 10, Some(1), 1000), // yesterday: ignored
            rec(now - 100, Some(1), 60),
            rec(now - 30, Some(1), 50), // today: 110 ≥ 100
            rec(now - 20, Some(2), 1),
            rec(now - 10, Some(2), 1), // two in the last minute
            rec(now - 5, None, 1),
            rec(now + 500, Some(3), 1000), // from the future: ignored
        ];
        let mut s = LimitState::new(limits);
        s.seed_from(&records, t(now));
        assert_eq!(
            s.check(Some(1), t(now)).unwrap_err().kind,
            LimitKind::TokensPerDay
        );
        let r = s.check(Some(2), t(now)).unwrap_err();
        assert_eq!((r.kind, r.secs), (LimitKind::RequestsPerMinute, 40));
        assert!(s.check(None, t(now)).is_ok());
        assert!(s.check(None, t(now)).is_err());
        assert!(s.check(Some(3), t(now)).is_ok());
        assert_eq!(start_of_utc_day(t(now)), DAY0);
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let mut s = LimitState::new(Limits {
            requests_per_minute: Some(10),
            tokens_per_day: None,
        });
        for uid in 0..5000 {
            s.check(Some(uid), t(DAY0)).unwrap();
        }
        for i in 0..2048 {
            s.check(Some(1), t(DAY0 + 3600 + i / 100)).ok();
        }
        assert!(s.buckets.len() < 10, "{}", s.buckets.len());
    }
}
