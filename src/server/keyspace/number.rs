//! Numbers as Redis reads and writes them in string values and arguments.
//!
//! Integers follow Redis' `string2ll`: an optional `-`, then digits with no
//! leading zero (except the single string `0`), nothing else: no `+`, no
//! spaces, no `-0`, and it must fit an `i64`. Floats for `INCRBYFLOAT` live in
//! [`super::extended`].

/// Parses `s` exactly as Redis' `string2ll` does; `None` for anything Redis
/// rejects ("value is not an integer or out of range").
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    match s {
        [] => None,
        [b'0'] => Some(0),
        [b'-', digits @ ..] => parse_magnitude(digits).and_then(|m| 0i64.checked_sub_unsigned(m)),
        digits => parse_magnitude(digits).and_then(|m| i64::try_from(m).ok()),
    }
}

/// Digits of a non-zero magnitude: first digit 1-9, at most `u64::MAX`.
fn parse_magnitude(digits: &[u8]) -> Option<u64> {
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// Parses a `SCAN` cursor as Redis does (`strtoul` over the whole string,
/// no leading space): decimal digits fitting a `u64`, an optional sign (a
/// `-` wraps around, as in C), and the empty string reads as 0.
pub fn parse_cursor(s: &[u8]) -> Option<u64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        // strtoul parses nothing and stops at the end: Redis accepts it as 0
        // only when there was no sign either.
        return (s.is_empty()).then_some(0);
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_redis_accepts() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-42"), Some(-42));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn rejects_what_redis_rejects() {
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1.0",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
            b"abc",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn cursors_parse_like_strtoul() {
        assert_eq!(parse_cursor(b"0"), Some(0));
        assert_eq!(parse_cursor(b""), Some(0));
        assert_eq!(parse_cursor(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"18446744073709551616"), None);
        assert_eq!(parse_cursor(b"-1"), Some(u64::MAX));
        assert_eq!(parse_cursor(b"+7"), Some(7));
        assert_eq!(parse_cursor(b"-"), None);
        assert_eq!(parse_cursor(b" 1"), None);
        assert_eq!(parse_cursor(b"x"), None);
    }
}
