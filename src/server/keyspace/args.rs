//! Argument parsing shared by the data commands, with Redis 7's rules and
//! error texts (`t_string.c`'s `parseExtendedStringArgumentsOrReply` and
//! `getExpireMillisecondsOrReply`, `expire.c`'s option parsing).

use bytes::Bytes;

use super::number::parse_i64;
use crate::error::{Error, Result};

pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";

/// An integer argument, as Redis reads it.
pub fn int_arg(arg: &[u8]) -> Result<i64> {
    parse_i64(arg).ok_or_else(|| Error::invalid(NOT_AN_INTEGER))
}

pub fn syntax_error() -> Error {
    Error::invalid("syntax error")
}

/// Case-insensitive ASCII comparison of an argument with an option name.
pub fn is(arg: &[u8], option: &str) -> bool {
    arg.eq_ignore_ascii_case(option.as_bytes())
}

/// The unit and base of an expiry argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireKind {
    /// `EX seconds` (relative).
    Ex,
    /// `PX milliseconds` (relative).
    Px,
    /// `EXAT unix-seconds`.
    ExAt,
    /// `PXAT unix-milliseconds`.
    PxAt,
}

/// `SET`'s existence condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// `NX`: only if the key does not exist.
    IfAbsent,
    /// `XX`: only if the key exists.
    IfPresent,
}

/// Which command's options [`ExtendedArgs::parse`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtendedFor {
    Set,
    GetEx,
}

/// Parsed options of `SET` and `GETEX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendedArgs {
    pub condition: Condition,
    pub get: bool,
    pub keep_ttl: bool,
    pub persist: bool,
    pub expire: Option<(ExpireKind, Bytes)>,
}

impl ExtendedArgs {
    /// Parses `options` the way Redis 7 does: conflicting options (`NX` and
    /// `XX`, two kinds of expiry, an expiry and `KEEPTTL`/`PERSIST`) and
    /// anything unknown or misplaced are `ERR syntax error`; a repeated option
    /// is allowed and the last expiry value wins. The expiry value itself is
    /// checked later by [`expire_at_ms`].
    pub fn parse(options: &[Bytes], command: ExtendedFor) -> Result<ExtendedArgs> {
        let mut parsed = ExtendedArgs {
            condition: Condition::Always,
            get: false,
            keep_ttl: false,
            persist: false,
            expire: None,
        };
        let set = command == ExtendedFor::Set;
        let mut i = 0;
        while i < options.len() {
            let opt = &options[i][..];
            let next = options.get(i + 1);
            if set && is(opt, "nx") && parsed.condition != Condition::IfPresent {
                parsed.condition = Condition::IfAbsent;
            } else if set && is(opt, "xx") && parsed.condition != Condition::IfAbsent {
                parsed.condition = Condition::IfPresent;
            } else if set && is(opt, "get") {
                parsed.get = true;
            } else if set && is(opt, "keepttl") && parsed.expire.is_none() {
                parsed.keep_ttl = true;
            } else if !set && is(opt, "persist") && parsed.expire.is_none() {
                parsed.persist = true;
            } else if let (Some(kind), Some(value)) = (expire_kind(opt), next) {
                // Redis 7 refuses mixing expiry kinds but lets one kind repeat
                // (`EX 1 EX 2`), the last one winning.
                let other_kind = parsed.expire.as_ref().is_some_and(|(k, _)| *k != kind);
                if other_kind || parsed.keep_ttl || parsed.persist {
                    return Err(syntax_error());
                }
                parsed.expire = Some((kind, value.clone()));
                i += 1;
            } else {
                return Err(syntax_error());
            }
            i += 1;
        }
        Ok(parsed)
    }
}

fn expire_kind(opt: &[u8]) -> Option<ExpireKind> {
    if is(opt, "ex") {
        Some(ExpireKind::Ex)
    } else if is(opt, "px") {
        Some(ExpireKind::Px)
    } else if is(opt, "exat") {
        Some(ExpireKind::ExAt)
    } else if is(opt, "pxat") {
        Some(ExpireKind::PxAt)
    } else {
        None
    }
}

/// The absolute deadline (ms since the epoch) an expiry argument names, with
/// Redis' checks: not an integer -> `value is not an integer or out of range`;
/// zero, negative or overflowing -> `invalid expire time in '<command>'
/// command`. A deadline in the past is valid (the key expires at once).
pub fn expire_at_ms(kind: ExpireKind, raw: &[u8], now_ms: u64, command: &str) -> Result<u64> {
    let invalid = || Error::invalid(format!("invalid expire time in '{command}' command"));
    let value = int_arg(raw)?;
    if value <= 0 {
        return Err(invalid());
    }
    let ms = match kind {
        ExpireKind::Ex | ExpireKind::ExAt => value.checked_mul(1000).ok_or_else(invalid)?,
        ExpireKind::Px | ExpireKind::PxAt => value,
    };
    let at = match kind {
        ExpireKind::Ex | ExpireKind::Px => {
            ms.checked_add(now_as_i64(now_ms)).ok_or_else(invalid)?
        }
        ExpireKind::ExAt | ExpireKind::PxAt => ms,
    };
    Ok(at as u64)
}

pub fn now_as_i64(now_ms: u64) -> i64 {
    i64::try_from(now_ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Bytes> {
        list.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn set(list: &[&str]) -> Result<ExtendedArgs> {
        ExtendedArgs::parse(&args(list), ExtendedFor::Set)
    }

    #[test]
    fn set_accepts_redis_combinations() {
        let parsed = set(&["nx", "GET", "ex", "10"]).expect("valid");
        assert_eq!(parsed.condition, Condition::IfAbsent);
        assert!(parsed.get);
        assert_eq!(
            parsed.expire,
            Some((ExpireKind::Ex, Bytes::from_static(b"10")))
        );
        assert!(set(&["KEEPTTL", "XX"]).expect("valid").keep_ttl);
        assert!(set(&["NX", "NX"]).is_ok(), "repeating NX is allowed");
        let repeated = set(&["EX", "1", "EX", "abc"]).expect("one kind may repeat");
        assert_eq!(
            repeated.expire,
            Some((ExpireKind::Ex, Bytes::from_static(b"abc"))),
            "the last value wins"
        );
    }

    #[test]
    fn set_rejects_conflicts_and_unknowns_as_syntax_errors() {
        for bad in [
            &["NX", "XX"][..],
            &["EX", "1", "PX", "1"],
            &["EX", "1", "KEEPTTL"],
            &["KEEPTTL", "EX", "1"],
            &["EX"],
            &["PERSIST"],
            &["FOO"],
        ] {
            let err = set(bad).expect_err("must fail");
            assert_eq!(err.to_resp(), "ERR syntax error", "{bad:?}");
        }
    }

    #[test]
    fn getex_takes_persist_but_not_set_options() {
        let parsed = ExtendedArgs::parse(&args(&["PERSIST"]), ExtendedFor::GetEx).expect("valid");
        assert!(parsed.persist);
        for bad in [&["NX"][..], &["GET"], &["KEEPTTL"], &["PERSIST", "EX", "1"]] {
            assert!(ExtendedArgs::parse(&args(bad), ExtendedFor::GetEx).is_err());
        }
    }

    #[test]
    fn expire_values_follow_redis_errors() {
        assert_eq!(
            expire_at_ms(ExpireKind::Ex, b"10", 1_000, "set").ok(),
            Some(11_000)
        );
        assert_eq!(
            expire_at_ms(ExpireKind::PxAt, b"5", 1_000, "set").ok(),
            Some(5)
        );
        let err = expire_at_ms(ExpireKind::Ex, b"0", 1_000, "set").expect_err("zero");
        assert_eq!(err.to_resp(), "ERR invalid expire time in 'set' command");
        let err = expire_at_ms(ExpireKind::Ex, b"-5", 1_000, "setex").expect_err("negative");
        assert_eq!(err.to_resp(), "ERR invalid expire time in 'setex' command");
        let err = expire_at_ms(ExpireKind::Ex, b"9223372036854775807", 1, "set").expect_err("ovf");
        assert_eq!(err.to_resp(), "ERR invalid expire time in 'set' command");
        let err = expire_at_ms(ExpireKind::Ex, b"ten", 1, "set").expect_err("nan");
        assert_eq!(err.to_resp(), format!("ERR {NOT_AN_INTEGER}"));
    }
}
