//! Per-user token accounting and limits.
//!
//! - [`tap`]: reads token usage out of a response body as it passes (Responses or Chat
//!   Completions, streamed or not), without buffering the stream or delaying it.
//! - [`store`]: the append-only `usage.jsonl` in the state directory, one line per request.
//! - [`limits`]: per-user requests-per-minute and tokens-per-day limits, rebuilt from the
//!   store when the worker starts.
//! - [`report`]: per-user totals for a time range, as a table or JSON (the `usage` subcommand).
//!
//! Uses: `crate::clock` and tracing.

pub(crate) mod limits;
pub(crate) mod report;
pub(crate) mod store;
pub(crate) mod tap;

pub(crate) use limits::{LimitState, Limits, RetryAfter};
pub(crate) use store::{UsageRecord, UsageStore};
pub(crate) use tap::{TokenUsage, UpstreamUsage, UsageTap};

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> u64 {
    crate::clock::unix_now()
}

/// The worker's accounting in one place: the store (when a state directory is configured)
/// and the limit state, seeded from the store's records of the current UTC day.
pub(crate) struct Accounting {
    store: Option<UsageStore>,
    limits: std::sync::Mutex<LimitState>,
    /// Whether [`Accounting::finish`] keeps anything (a store, or a token limit to charge).
    keeps_records: bool,
}

impl Accounting {
    /// Opens `<state_dir>/usage.jsonl` (when `state_dir` is given) and rebuilds the limit
    /// state from it, so that limits survive a worker restart.
    pub(crate) fn open(
        state_dir: Option<&std::path::Path>,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let now = std::time::SystemTime::now();
        let mut state = LimitState::new(limits);
        let store = match state_dir {
            Some(dir) => {
                let store = UsageStore::open(dir)?;
                if !limits.is_unlimited() {
                    let mut today = Vec::new();
                    let skipped = store::for_each_in_range(
                        store.path(),
                        limits::start_of_utc_day(now),
                        u64::MAX,
                        |r| today.push(r),
                    )?;
                    if skipped > 0 {
                        tracing::warn!(
                            "{}: {skipped} unreadable line(s) skipped",
                            store.path().display()
                        );
                    }
                    state.seed_from(&today, now);
                }
                Some(store)
            }
            None => None,
        };
        Ok(Accounting {
            keeps_records: store.is_some() || limits.tokens_per_day.is_some(),
            store,
            limits: std::sync::Mutex::new(state),
        })
    }

    /// Admits a request from `uid` now, or says how long to wait (answer 429).
    pub(crate) fn admit(&self, uid: Option<u32>) -> Result<(), RetryAfter> {
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(uid, std::time::SystemTime::now())
    }

    /// Records a finished request: appends it to the store (errors are logged, not fatal)
    /// and charges its tokens to the user's day.
    pub(crate) fn finish(
        &self,
        uid: Option<u32>,
        user: Option<&str>,
        route: &str,
        status: u16,
        usage: Option<&TokenUsage>,
    ) {
        let now = std::time::SystemTime::now();
        if let Some(usage) = usage {
            self.limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(uid, now, usage.total());
        }
        if let Some(store) = &self.store {
            let ts = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let record = UsageRecord::new(ts, uid, user, route, status, usage);
            if let Err(e) = store.append(&record) {
                tracing::warn!("cannot record usage in {}: {e}", store.path().display());
            }
        }
    }

    /// Whether finishing a request records anything (a store to append to, or a daily token
    /// limit to charge): when not, the usage is only read for the log line, off the hot path.
    pub(crate) fn keeps_records(&self) -> bool {
        self.keeps_records
    }

    /// The store's path, when there is one.
    #[cfg(test)]
    pub(crate) fn store_path(&self) -> Option<&std::path::Path> {
        self.store.as_ref().map(|s| s.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_limits_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            requests_per_minute: Some(2),
            tokens_per_day: Some(100),
        };
        let usage = TokenUsage {
            model: Some("m".into()),
            input_tokens: 90,
            output_tokens: 20,
            ..TokenUsage::default()
        };
        {
            let acct = Accounting::open(Some(dir.path()), limits).unwrap();
            assert!(acct.admit(Some(5)).is_ok());
            acct.finish(Some(5), Some("eve"), "/v1/responses", 200, Some(&usage));
            assert!(acct.admit(Some(6)).is_ok());
            acct.finish(Some(6), None, "/v1/responses", 502, None);
            assert!(acct.admit(Some(5)).is_err(), "110 tokens ≥ 100");
        }
        // A new worker: the day's tokens and the minute's requests come back from the store.
        let acct = Accounting::open(Some(dir.path()), limits).unwrap();
        let refused = acct.admit(Some(5)).unwrap_err();
        assert_eq!(refused.kind, limits::LimitKind::TokensPerDay);
        assert!(acct.admit(Some(6)).is_ok());
        assert!(
            acct.admit(Some(6)).is_err(),
            "one stored + one new = 2 per minute"
        );
        let back = store::read_range(acct.store_path().unwrap(), 0, u64::MAX).unwrap();
        assert_eq!(back.records.len(), 2);
        assert_eq!(back.records[0].user.as_deref(), Some("eve"));
        assert_eq!(back.records[0].total_tokens(), 110);
        assert_eq!(back.records[1].status, 502);
    }

    #[test]
    fn accounting_without_a_state_directory_still_limits() {
        let acct = Accounting::open(
            None,
            Limits {
                requests_per_minute: Some(1),
                tokens_per_day: None,
            },
        )
        .unwrap();
        assert!(acct.store_path().is_none());
        assert!(acct.admit(None).is_ok());
        assert!(acct.admit(None).is_err());
        acct.finish(None, None, "/v1/responses", 200, None);
    }
}
