//! The usage store: `<state dir>/usage.jsonl`, one JSON line per request, appended with
//! `O_APPEND` in a single `write` (so concurrent appends never interleave) and read back for a
//! time range. A line torn by a crash is skipped when reading and fenced off with a newline
//! when the file is next opened for appending. Mode 0640: the worker's group may read it.
//!
//! Lines start with `{"ts":` so that a reader can skip records outside its range without
//! parsing them.
//!
//! Uses: nothing else of the crate and serde, serde_json.

use super::tap::TokenUsage;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file name inside the state directory.
pub(crate) const FILE_NAME: &str = "usage.jsonl";
/// The store's file mode.
pub(crate) const FILE_MODE: u32 = 0o640;

/// One request, as stored. `uid`/`user` are `null` when the caller was unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UsageRecord {
    /// Unix seconds when the request finished.
    pub ts: u64,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub route: String,
    pub status: u16,
    pub model: Option<String>,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
}

fn bounded(s: &str, max_chars: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

impl UsageRecord {
    /// A record for one request; `usage` is `None` when the body reported none.
    pub(crate) fn new(
        ts: u64,
        uid: Option<u32>,
        user: Option<&str>,
        route: &str,
        status: u16,
        usage: Option<&TokenUsage>,
    ) -> Self {
        let usage = usage.cloned().unwrap_or_default();
        UsageRecord {
            ts,
            uid,
            user: user.map(|u| bounded(u, 64)),
            route: bounded(route, 200),
            status,
            model: usage.model.as_deref().map(|m| bounded(m, 200)),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            reasoning_tokens: usage.reasoning_tokens,
        }
    }

    /// Input plus output tokens.
    pub(crate) fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// The store, open for appending.
pub(crate) struct UsageStore {
    file: File,
    path: PathBuf,
}

impl UsageStore {
    /// The store's path inside `state_dir`.
    pub(crate) fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Opens (creating, mode 0640) `<state_dir>/usage.jsonl` for appending. A torn last line
    /// left by a crash is ended with a newline so that the next record starts on its own line.
    pub(crate) fn open(state_dir: &Path) -> io::Result<UsageStore> {
        let path = Self::path_in(state_dir);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)?;
        let meta = file.metadata()?;
        // Never wider than 0640, whatever the umask or an older file said.
        if meta.permissions().mode() & 0o7777 & !FILE_MODE != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        if meta.len() > 0 {
            // The append-only descriptor cannot read; a separate read-only one can.
            let reader = File::open(&path)?;
            let mut last = [0u8; 1];
            reader.read_exact_at(&mut last, meta.len() - 1)?;
            if last[0] != b'\n' {
                (&file).write_all(b"\n")?;
            }
        }
        Ok(UsageStore { file, path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line, in one `write`. Blocking, but small (~250 bytes).
    pub(crate) fn append(&self, record: &UsageRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let written = (&self.file).write(&line)?;
        if written != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short write to {} ({written} of {} bytes)",
                    self.path.display(),
                    line.len()
                ),
            ));
        }
        Ok(())
    }
}

/// What reading the store found.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct ReadBack {
    pub records: Vec<UsageRecord>,
    /// Lines that could not be parsed (torn or damaged); they are left out.
    pub skipped: usize,
}

/// Reads the leading `{"ts":N` of a line without parsing the rest.
fn quick_ts(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"ts\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Calls `visit` for every record with `since <= ts < until`, in file order. A missing file
/// holds no records. Returns how many lines were skipped as unreadable.
pub(crate) fn for_each_in_range(
    path: &Path,
    since: u64,
    until: u64,
    mut visit: impl FnMut(UsageRecord),
) -> io::Result<usize> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(512);
    let mut skipped = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(ts) = quick_ts(text) {
            if ts < since || ts >= until {
                continue;
            }
        }
        match serde_json::from_slice::<UsageRecord>(text) {
            Ok(record) if record.ts >= since && record.ts < until => visit(record),
            Ok(_) => {}
            Err(_) => skipped += 1,
        }
    }
    Ok(skipped)
}

/// Reads every record with `since <= ts < until`.
#[cfg(test)]
pub(crate) fn read_range(path: &Path, since: u64, until: u64) -> io::Result<ReadBack> {
    let mut records = Vec::new();
    let skipped = for_each_in_range(path, since, until, |r| records.push(r))?;
    Ok(ReadBack { records, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts: u64, uid: Option<u32>, tokens: u64) -> UsageRecord {
        UsageRecord::new(
            ts,
            uid,
            uid.map(|_| "alice"),
            "/v1/responses",
            200,
            Some(&TokenUsage {
                model: Some("gpt-5".into()),
                input_tokens: tokens,
                output_tokens: 1,
                cached_tokens: 0,
                reasoning_tokens: 0,
            }),
        )
    }

    #[test]
    fn append_and_read_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsageStore::open(dir.path()).unwrap();
        for ts in [100, 200, 300] {
            store.append(&record(ts, Some(1000), ts)).unwrap();
        }
        store.append(&record(250, None, 5)).unwrap();
        let back = read_range(store.path(), 200, 300).unwrap();
        assert_eq!(back.skipped, 0);
        assert_eq!(back.records.len(), 2);
        assert_eq!(back.records[0], record(200, Some(1000), 200));
        assert_eq!(back.records[1].uid, None);
        assert_eq!(back.records[1].user, None);
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.lines().all(|l| l.starts_with("{\"ts\":")));
        assert_eq!(text.lines().count(), 4);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let back = read_range(&UsageStore::path_in(dir.path()), 0, u64::MAX).unwrap();
        assert!(back.records.is_empty());
    }

    #[test]
    fn torn_lines_are_skipped_and_fenced_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = UsageStore::path_in(dir.path());
        {
            let store = UsageStore::open(dir.path()).unwrap();
            store.append(&record(10, Some(1), 1)).unwrap();
        }
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ts\":11,\"uid\":1,\"us").unwrap();
        drop(f);
        let back = read_range(&path, 0, 100).unwrap();
        assert_eq!((back.records.len(), back.skipped), (1, 1));
        // Reopening ends the torn line, so the next record is intact.
        let store = UsageStore::open(dir.path()).unwrap();
        store.append(&record(12, Some(1), 1)).unwrap();
        let back = read_range(&path, 0, 100).unwrap();
        assert_eq!(back.records.len(), 2);
        assert_eq!(back.skipped, 1);
        assert_eq!(back.records[1].ts, 12);
        // Blank lines and junk in the middle do not stop the reader.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\n\ngarbage\n").unwrap();
        drop(f);
        store.append(&record(13, Some(1), 1)).unwrap();
        let back = read_range(&path, 0, 100).unwrap();
        assert_eq!((back.records.len(), back.skipped), (3, 2));
    }

    #[test]
    fn wide_permissions_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = UsageStore::path_in(dir.path());
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        UsageStore::open(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(UsageStore::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        store.append(&record(1000 + i, Some(t), i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // A second, independent store (another process after a restart) appends too.
        UsageStore::open(dir.path())
            .unwrap()
            .append(&record(5000, Some(99), 1))
            .unwrap();
        let back = read_range(store.path(), 0, u64::MAX).unwrap();
        assert_eq!(back.skipped, 0);
        assert_eq!(back.records.len(), 8 * 200 + 1);
    }

    #[test]
    fn fields_are_bounded_and_printable() {
        let long = "m\n".repeat(500);
        let r = UsageRecord::new(
            1,
            Some(1),
            Some("bob"),
            &long,
            200,
            Some(&TokenUsage {
                model: Some(long.clone()),
                ..Default::default()
            }),
        );
        assert_eq!(r.route.len(), 200);
        assert!(!r.model.as_deref().unwrap().contains('\n'));
        let r = UsageRecord::new(1, None, None, "/x", 500, None);
        assert_eq!((r.model.as_deref(), r.total_tokens()), (None, 0));
    }

    #[test]
    fn quick_ts_reads_only_a_prefix() {
        assert_eq!(quick_ts(b"{\"ts\":123,\"uid\":1}"), Some(123));
        assert_eq!(quick_ts(b"{\"uid\":1,\"ts\":123}"), None);
        assert_eq!(quick_ts(b"{\"ts\":,"), None);
        assert_eq!(quick_ts(b"{\"ts\":99999999999999999999999}"), None);
    }
}
