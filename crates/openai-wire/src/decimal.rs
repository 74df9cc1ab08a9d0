//! Unsigned integers in decimal without `core::fmt`, for the text written on every request or
//! event (the request log line, the bridge's event numbers).

/// `value` in decimal, written into the end of `buffer`.
pub fn decimal(mut value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[start..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_of_the_edges() {
        let mut buffer = [0; 20];
        assert_eq!(decimal(0, &mut buffer), "0");
        assert_eq!(decimal(7, &mut buffer), "7");
        assert_eq!(decimal(1_000_000, &mut buffer), "1000000");
        assert_eq!(decimal(u64::MAX, &mut buffer), "18446744073709551615");
    }
}
