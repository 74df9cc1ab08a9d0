//! Per-user totals for a time range, for the `usage` subcommand: summed from the store's
//! records and shown as an aligned table or as JSON. Also parses the subcommand's time
//! arguments (`--since`/`--until`): RFC 3339 timestamps, plain dates (UTC midnight),
//! relative times like `-24h`, `now`, and `@<unix seconds>`. The calendar is `crate::clock`'s.
//!
//! Uses: `crate::clock` and serde, serde_json.

use super::store::{for_each_in_range, UsageRecord};
use serde::Serialize;
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// One user's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    /// The user name (the latest one recorded), else the uid, else `unknown`.
    pub user: String,
    pub uid: Option<u32>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Input plus output.
    pub total_tokens: u64,
}

/// Sums records into incremental per-uid totals.
#[derive(Default)]
pub(crate) struct Summer {
    by_uid: HashMap<Option<u32>, (Totals, u64)>,
}

impl Summer {
    pub(crate) fn add(&mut self, r: &UsageRecord) {
        let (t, name_ts) = self.by_uid.entry(r.uid).or_insert_with(|| {
            (
                Totals {
                    uid: r.uid,
                    ..Totals::default()
                },
                0,
            )
        });
        t.requests += 1;
        t.input_tokens = t.input_tokens.saturating_add(r.input_tokens);
        t.output_tokens = t.output_tokens.saturating_add(r.output_tokens);
        t.cached_tokens = t.cached_tokens.saturating_add(r.cached_tokens);
        t.reasoning_tokens = t.reasoning_tokens.saturating_add(r.reasoning_tokens);
        t.total_tokens = t.total_tokens.saturating_add(r.total_tokens());
        if let Some(name) = &r.user {
            if t.user.is_empty() || r.ts >= *name_ts {
                t.user = name.clone();
                *name_ts = r.ts;
            }
        }
    }

    /// Totals, largest total first (then by name).
    pub(crate) fn finish(self) -> Vec<Totals> {
        let mut out: Vec<Totals> = self
            .by_uid
            .into_values()
            .map(|(mut t, _)| {
                if t.user.is_empty() {
                    t.user = t
                        .uid
                        .map_or_else(|| "unknown".to_owned(), |u| u.to_string());
                }
                t
            })
            .collect();
        out.sort_by(|a, b| {
            b.total_tokens
                .cmp(&a.total_tokens)
                .then_with(|| b.requests.cmp(&a.requests))
                .then_with(|| a.user.cmp(&b.user))
        });
        out
    }
}

/// Per-user totals of `records`.
#[cfg(test)]
pub(crate) fn totals<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> Vec<Totals> {
    let mut summer = Summer::default();
    for r in records {
        summer.add(r);
    }
    summer.finish()
}

/// Per-user totals for `since <= ts < until`, streamed from the store at `path`. Also returns
/// how many unreadable lines were skipped.
pub(crate) fn summarize(path: &Path, since: u64, until: u64) -> io::Result<(Vec<Totals>, usize)> {
    let mut summer = Summer::default();
    let skipped = for_each_in_range(path, since, until, |r| summer.add(&r))?;
    Ok((summer.finish(), skipped))
}

/// An aligned table: user, uid, requests, input, output, cached, reasoning, total; a final
/// line sums all users when there is more than one.
pub(crate) fn render_table(totals: &[Totals]) -> String {
    const HEADER: [&str; 8] = [
        "USER",
        "UID",
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "REASONING",
        "TOTAL",
    ];
    let row = |t: &Totals| -> [String; 8] {
        [
            t.user.clone(),
            t.uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.output_tokens.to_string(),
            t.cached_tokens.to_string(),
            t.reasoning_tokens.to_string(),
            t.total_tokens.to_string(),
        ]
    };
    let mut rows: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    rows.extend(totals.iter().map(row));
    if totals.len() > 1 {
        let mut all = Totals {
            user: "(all users)".to_owned(),
            ..Totals::default()
        };
        for t in totals {
            all.requests += t.requests;
            all.input_tokens = all.input_tokens.saturating_add(t.input_tokens);
            all.output_tokens = all.output_tokens.saturating_add(t.output_tokens);
            all.cached_tokens = all.cached_tokens.saturating_add(t.cached_tokens);
            all.reasoning_tokens = all.reasoning_tokens.saturating_add(t.reasoning_tokens);
            all.total_tokens = all.total_tokens.saturating_add(t.total_tokens);
        }
        let mut last = row(&all);
        last[1] = String::new();
        rows.push(last);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            if i == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if totals.is_empty() {
        out.push_str("(no requests in this range)\n");
    }
    out
}

/// A JSON array of per-user objects (`user`, `uid`, `requests`, `input_tokens`,
/// `output_tokens`, `cached_tokens`, `reasoning_tokens`, `total_tokens`), ending in a newline.
pub(crate) fn render_json(totals: &[Totals]) -> String {
    let mut out = serde_json::to_string_pretty(totals).expect("JSON serialization into memory");
    out.push('\n');
    out
}

use crate::clock::format_rfc3339;

/// `YYYY-MM-DD` → days since the epoch.
fn parse_date(s: &str, arg: &str) -> Result<i64, String> {
    crate::clock::days_of_date(s)
        .ok_or_else(|| format!("{arg:?}: no such date (expected a date like 2024-05-01)"))
}

const TIME_FORMS: &str = "use RFC 3339 (2024-05-01T00:00:00Z or with an offset like +02:00), a date (2024-05-01, UTC), a relative time (-24h, -7d, -30m, -90s, -2w), `now`, or @<unix seconds>";

/// Parses a `--since`/`--until` value into unix seconds; relative forms count back from `now`.
pub(crate) fn parse_time_arg(arg: &str, now: u64) -> Result<u64, String> {
    let s = arg.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(secs) = s.strip_prefix('@') {
        return secs
            .parse::<u64>()
            .ok()
            .filter(|_| secs.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{arg:?}: expected @ followed by unix seconds"));
    }
    if let Some(rel) = s.strip_prefix('-') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let (n, unit) = rel.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{arg:?}: expected a relative time like -24h; {TIME_FORMS}"))?;
        let scale = match unit {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => {
                return Err(format!(
                    "{arg:?}: unknown unit {unit:?} (use s, m, h, d or w)"
                ))
            }
        };
        return n
            .checked_mul(scale)
            .map(|back| now.saturating_sub(back))
            .ok_or_else(|| format!("{arg:?}: too far back"));
    }
    if s.len() == 10 {
        let days = parse_date(s, arg)?;
        return u64::try_from(days * 86_400)
            .map_err(|_| format!("{arg:?}: dates before 1970 are not supported"));
    }
    // RFC 3339: date, 'T' (or a space), time, optional fraction, then Z or ±HH:MM.
    match crate::clock::parse_rfc3339(s) {
        Some(at) => {
            u64::try_from(at).map_err(|_| format!("{arg:?}: times before 1970 are not supported"))
        }
        None if s.is_ascii() && s.len() >= 19 && !has_zone(s) => Err(format!(
            "{arg:?}: add a time zone: Z for UTC or an offset like +02:00"
        )),
        None => Err(format!("{arg:?}: not a time; {TIME_FORMS}")),
    }
}

/// Whether an ASCII RFC 3339 time ends in `Z` or an offset like `+02:00`.
fn has_zone(s: &str) -> bool {
    s.ends_with(['Z', 'z']) || s[s.len().saturating_sub(6)..].starts_with(['+', '-'])
}

/// The `usage` subcommand: totals per user between `since` and `until` from the store in
/// `state_dir`, as a table or JSON, ready to print.
pub fn usage_command(
    state_dir: &Path,
    since: &str,
    until: &str,
    json: bool,
) -> Result<String, String> {
    let now = super::unix_now();
    let since = parse_time_arg(since, now)?;
    // The end second itself is included, so that `--until now` covers this second.
    let until = parse_time_arg(until, now)?.saturating_add(1);
    let path = super::UsageStore::path_in(state_dir);
    let (totals, skipped) = match summarize(&path, since, until) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if skipped > 0 {
        eprintln!(
            "warning: {skipped} unreadable line(s) in {} were skipped",
            path.display()
        );
    }
    if json {
        return Ok(render_json(&totals));
    }
    Ok(format!(
        "Usage from {} to {}\n{}",
        format_rfc3339(i64::try_from(since).unwrap_or(i64::MAX)),
        format_rfc3339(i64::try_from(until).unwrap_or(i64::MAX)),
        render_table(&totals)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: u64, uid: Option<u32>, user: Option<&str>, input: u64, output: u64) -> UsageRecord {
        let mut r = UsageRecord::new(ts, uid, user, "/v1/responses", 200, None);
        r.input_tokens = input;
        r.output_tokens = output;
        r.cached_tokens = input / 2;
        r.reasoning_tokens = output / 2;
        r
    }

    #[test]
    fn totals_group_by_uid_and_sort_by_total() {
        let records = vec![
            rec(1, Some(1000), Some("alice"), 10, 4),
            rec(2, Some(1001), Some("bob"), 1000, 20),
            rec(3, Some(1000), Some("alice2"), 10, 4),
            rec(4, None, None, 1, 1),
            rec(5, Some(4242), None, 0, 0),
        ];
        let t = totals(&records);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].user, "bob");
        assert_eq!(t[1].user, "alice2", "latest name wins");
        assert_eq!(
            (
                t[1].requests,
                t[1].input_tokens,
                t[1].output_tokens,
                t[1].total_tokens
            ),
            (2, 20, 8, 28)
        );
        assert_eq!((t[1].cached_tokens, t[1].reasoning_tokens), (10, 4));
        assert_eq!((t[2].user.as_str(), t[2].uid), ("unknown", None));
        assert_eq!((t[3].user.as_str(), t[3].uid), ("4242", Some(4242)));
    }

    #[test]
    fn table_is_aligned() {
        let t = totals(&[
            rec(1, Some(1000), Some("alice"), 10, 4),
            rec(2, Some(1001), Some("bartholomew"), 123_456, 20),
            rec(3, None, None, 1, 1),
        ]);
        let table = render_table(&t);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("USER "));
        assert!(lines[1].starts_with("bartholomew "));
        assert!(lines[4].starts_with("(all users) "));
        // Right-aligned numbers: every line ends at the same column.
        let width = lines[0].len();
        assert!(lines.iter().all(|l| l.len() == width), "{table}");
        assert!(lines[3].contains(" - "), "unknown uid shown as -: {table}");
        assert!(lines[4].ends_with(&(123_456 + 20 + 10 + 4 + 2).to_string()));
        let empty = render_table(&[]);
        assert!(empty.contains("no requests"));
        let one = render_table(&totals(&[rec(1, Some(1), Some("a"), 1, 1)]));
        assert_eq!(one.lines().count(), 2);
    }

    #[test]
    fn json_has_every_column() {
        let t = totals(&[
            rec(1, Some(1000), Some("alice"), 10, 4),
            rec(2, None, None, 1, 0),
        ]);
        let v: serde_json::Value = serde_json::from_str(&render_json(&t)).unwrap();
        assert_eq!(v[0]["user"], "alice");
        assert_eq!(v[0]["uid"], 1000);
        assert_eq!(v[0]["total_tokens"], 14);
        assert_eq!(v[0]["cached_tokens"], 5);
        assert!(v[1]["uid"].is_null());
        assert_eq!(render_json(&[]).trim(), "[]");
    }

    #[test]
    fn summarize_reads_the_store_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::store::UsageStore::open(dir.path()).unwrap();
        for ts in [100, 200, 300] {
            store.append(&rec(ts, Some(1), Some("a"), ts, 0)).unwrap();
        }
        let (t, skipped) = summarize(store.path(), 150, 301).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!((t[0].requests, t[0].input_tokens), (2, 500));
    }

    #[test]
    fn time_arguments() {
        let now = 1_714_564_800; // 2024-05-01T12:00:00Z
        assert_eq!(parse_time_arg("now", now), Ok(now));
        assert_eq!(parse_time_arg("-24h", now), Ok(now - 86_400));
        assert_eq!(parse_time_arg("-7d", now), Ok(now - 7 * 86_400));
        assert_eq!(parse_time_arg("-30m", now), Ok(now - 1800));
        assert_eq!(parse_time_arg("-90s", now), Ok(now - 90));
        assert_eq!(parse_time_arg("-2w", now), Ok(now - 14 * 86_400));
        assert_eq!(parse_time_arg("@1700000000", now), Ok(1_700_000_000));
        assert_eq!(parse_time_arg("2024-05-01", now), Ok(1_714_521_600));
        assert_eq!(parse_time_arg("2024-05-01T12:00:00Z", now), Ok(now));
        assert_eq!(parse_time_arg("2024-05-01t12:00:00.123456z", now), Ok(now));
        assert_eq!(parse_time_arg("2024-05-01 14:00:00+02:00", now), Ok(now));
        assert_eq!(parse_time_arg("2024-05-01T07:30:00-04:30", now), Ok(now));
        assert_eq!(parse_time_arg(" 2024-05-01T12:00:00Z ", now), Ok(now));
        for bad in [
            "",
            "yesterday",
            "-24",
            "-24y",
            "-",
            "@",
            "@x",
            "2024-13-01",
            "2024-02-30",
            "2023-02-29",
            "24-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01X12:00:00Z",
            "1969-12-31",
            "1970-01-01T00:00:00+01:00",
            "2024-05-01T12:00:00Zé",
            "é024-05-01T12:00:00Z",
        ] {
            let e = parse_time_arg(bad, now);
            assert!(e.is_err(), "{bad:?} parsed as {e:?}");
        }
        assert!(parse_time_arg("2024-05-01T12:00:00", now)
            .unwrap_err()
            .contains("time zone"));
        assert_eq!(
            parse_time_arg("-99999999999999w", now).map(|_| ()),
            Err(format!("{:?}: too far back", "-99999999999999w"))
        );
    }
}
