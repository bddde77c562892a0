//! Redis' glob-style pattern matching (`KEYS`, `SCAN MATCH`), ported from
//! `stringmatchlen` in Redis 7's `util.c` so that patterns behave exactly as
//! they do there:
//!
//! - `*` any run of bytes, `?` one byte, `\x` the byte `x` literally;
//! - `[abc]`, `[^abc]`, `[a-z]` (a reversed range `[z-a]` is the same range),
//!   `\` escapes inside a class; an unclosed `[` matches up to the pattern end.
//!
//! Like Redis it stops trying longer matches for an earlier `*` once a later
//! `*` failed against the whole rest of the subject (no exponential blow-up on
//! `a*a*a*...b`), and it gives up (no match) past 1000 nested stars.

/// Whether `subject` matches the Redis glob `pattern` (case-sensitive).
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut skip_longer = false;
    match_impl(pattern, subject, &mut skip_longer, 0)
}

/// The literal bytes every match of `pattern` starts with (up to the first
/// special character); lets `KEYS` seek instead of reading everything.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// Whether `pattern` matches exactly one string, itself.
pub fn is_literal(pattern: &[u8]) -> bool {
    literal_prefix(pattern).len() == pattern.len()
}

fn match_impl(pattern: &[u8], subject: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    // Redis' guard against deep recursion on patterns made of many stars.
    if nesting > 1000 {
        return false;
    }
    let (mut p, mut s) = (0usize, 0usize);
    while p < pattern.len() && s < subject.len() {
        match pattern[p] {
            b'*' => {
                while p + 1 < pattern.len() && pattern[p + 1] == b'*' {
                    p += 1;
                }
                if p + 1 == pattern.len() {
                    return true;
                }
                while s < subject.len() {
                    if match_impl(&pattern[p + 1..], &subject[s..], skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s += 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let negate = pattern.get(p) == Some(&b'^');
                if negate {
                    p += 1;
                }
                let c = subject[s];
                let mut hit = false;
                loop {
                    if p >= pattern.len() {
                        // Unclosed class: step back so the advance below ends the pattern.
                        p -= 1;
                        break;
                    }
                    if pattern[p] == b'\\' && p + 1 < pattern.len() {
                        p += 1;
                        hit |= pattern[p] == c;
                    } else if pattern[p] == b']' {
                        break;
                    } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' {
                        let (lo, hi) = (
                            pattern[p].min(pattern[p + 2]),
                            pattern[p].max(pattern[p + 2]),
                        );
                        p += 2;
                        hit |= (lo..=hi).contains(&c);
                    } else {
                        hit |= pattern[p] == c;
                    }
                    p += 1;
                }
                if hit == negate {
                    return false;
                }
                s += 1;
            }
            b'\\' if p + 1 < pattern.len() => {
                p += 1;
                if pattern[p] != subject[s] {
                    return false;
                }
                s += 1;
            }
            literal => {
                if literal != subject[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == subject.len() {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            break;
        }
    }
    p == pattern.len() && s == subject.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        matches(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn stars_and_question_marks() {
        // As in Redis' matcher; KEYS * and SCAN MATCH * skip matching instead.
        assert!(!m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:age"));
        assert!(m("a**b", "ab"));
        assert!(!m("", "a"));
        assert!(m("", ""));
        assert!(!m("?", ""));
    }

    #[test]
    fn classes_ranges_negation_and_escapes() {
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(
            m("h[b-a]llo", "hallo"),
            "a reversed range is the same range"
        );
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("h\\*llo", "h*llo"));
        assert!(!m("h\\*llo", "hello"));
        assert!(m("[\\]]", "]"));
        assert!(m("a[bc", "ab"), "an unclosed class runs to the pattern end");
        assert!(m("a\\", "a\\"), "a trailing backslash is literal");
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let pattern = "a*".repeat(60) + "b";
        let subject = "a".repeat(200);
        assert!(!m(&pattern, &subject));
    }

    #[test]
    fn literal_prefix_stops_at_the_first_special_byte() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a\\*"), b"a");
        assert!(is_literal(b"plain"));
        assert!(!is_literal(b"pl[a]in"));
    }
}
