//! Small pieces of HTTP/1.1 syntax (RFC 9112) read the same way by the two parsers of raw
//! HTTP/1.1 in the worker: the framing guard in front of hyper (client requests) and the
//! direct upstream client (upstream responses).
//!
//! Uses: nothing else of the crate.

/// `bytes` without the optional whitespace (spaces and tabs) around it.
pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |p| p + 1);
    &bytes[start..end.max(start)]
}

/// The value of one hex digit.
pub(crate) fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The most hex digits a chunk size may have (it must fit in 64 bits).
pub(crate) const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// The size at the start of a chunk-size line (hex digits, then whatever follows) and how
/// many digits it took: `None` without a digit or with more than [`MAX_CHUNK_SIZE_DIGITS`].
pub(crate) fn chunk_size(line: &[u8]) -> Option<(u64, usize)> {
    let digits = line
        .iter()
        .take(MAX_CHUNK_SIZE_DIGITS + 1)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 || digits > MAX_CHUNK_SIZE_DIGITS {
        return None;
    }
    let size = line[..digits]
        .iter()
        .fold(0u64, |n, &b| n << 4 | u64::from(hex_value(b).unwrap_or(0)));
    Some((size, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_whitespace_is_trimmed_on_both_sides_only() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
        assert_eq!(trim_ows(b""), b"");
    }

    #[test]
    fn chunk_sizes_are_hex_of_at_most_sixteen_digits() {
        assert_eq!(chunk_size(b"0"), Some((0, 1)));
        assert_eq!(chunk_size(b"1aF;ext=1"), Some((0x1af, 3)));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some((u64::MAX, 16)));
        assert_eq!(chunk_size(b"10000000000000000"), None);
        assert_eq!(chunk_size(b";x"), None);
        assert_eq!(chunk_size(b""), None);
    }
}
