//! Wall-clock time as the service reads and writes it: unix seconds now, RFC 3339 times (in
//! `auth.json`, the usage report's arguments and output, log lines) and calendar dates.
//!
//! Owns no state. The calendar and the RFC 3339 grammar are the `time` crate's; this module
//! only fixes the forms the service accepts and prints. Uses nothing else of the crate.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// Seconds since 1970-01-01 UTC (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds of an RFC 3339 time (`2025-08-10T12:34:56.789Z`, `…+02:00`). Also accepted, as
/// RFC 3339 allows: a lower-case `t`/`z`, and a space between date and time.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim();
    let mut normal = text.to_owned();
    if !normal.is_ascii() || normal.len() < 20 {
        return None;
    }
    // Position 10 of an ASCII RFC 3339 time is the date/time separator.
    match normal.as_bytes()[10] {
        b'T' => {}
        b't' | b' ' => normal.replace_range(10..11, "T"),
        // The `time` crate takes any separator here; we take only RFC 3339's.
        _ => return None,
    }
    if normal.ends_with('z') {
        normal.replace_range(normal.len() - 1.., "Z");
    }
    OffsetDateTime::parse(&normal, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// `2025-08-10T12:34:56Z` (whole seconds, UTC).
pub(crate) fn format_rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .to_offset(UtcOffset::UTC)
                .format(&Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// `2025-08-10T12:34:56` for a unix second, UTC (for log lines, which add the fraction).
pub(crate) fn format_utc_second(unix: u64) -> String {
    let at = i64::try_from(unix)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]"
    ))
    .unwrap_or_default()
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date, or `None` if it is no such date.
pub(crate) fn days_of_date(text: &str) -> Option<i64> {
    let date = Date::parse(text, format_description!("[year]-[month]-[day]")).ok()?;
    Some(i64::from(
        date.to_julian_day() - OffsetDateTime::UNIX_EPOCH.date().to_julian_day(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_in_every_allowed_form() {
        assert_eq!(parse_rfc3339("2025-08-10T12:34:56Z"), Some(1_754_829_296));
        assert_eq!(
            parse_rfc3339("2025-08-10T12:34:56.123456789Z"),
            Some(1_754_829_296)
        );
        assert_eq!(
            parse_rfc3339("2025-08-10T14:34:56+02:00"),
            Some(1_754_829_296)
        );
        assert_eq!(
            parse_rfc3339("2025-08-10t10:34:56.5-02:00"),
            Some(1_754_829_296)
        );
        assert_eq!(parse_rfc3339("2025-08-10 12:34:56z"), Some(1_754_829_296));
        for bad in [
            "",
            "2025-08-10",
            "2025-13-10T12:34:56Z",
            "2025-02-30T12:34:56Z",
            "2025-08-10T24:00:00Z",
            "2025-08-10T12:34:56",
            "2025-08-10T12:34:56+0200",
            "2025-08-10T12:34:56.Z",
            "2025-08-10X12:34:56Z",
            "２025-08-10T12:34:56Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for unix in [0, 1_754_829_296, 951_782_400, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(unix)), Some(unix));
        }
        assert_eq!(format_rfc3339(1_754_829_296), "2025-08-10T12:34:56Z");
        assert_eq!(format_utc_second(1_754_829_296), "2025-08-10T12:34:56");
    }

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(days_of_date("1970-01-01"), Some(0));
        assert_eq!(days_of_date("2000-03-01"), Some(11_017));
        assert_eq!(days_of_date("2024-02-29"), Some(19_782));
        assert_eq!(days_of_date("2023-02-29"), None);
        assert_eq!(days_of_date("2024-1-01"), None);
    }
}
