//! `VCLOCK` and `RESOLVE`: the client's handle on versions (DESIGN.md §3).
//!
//! - `VCLOCK key` answers an opaque token: the causal context covering every
//!   version this node holds for the key, tombstones included; nil if the
//!   key was never seen (or its tombstones were purged after the grace
//!   period). `VCLOCK key TEXT` gives the same context in human form
//!   (`actor:counter` pairs).
//! - `VCLOCK key WITHVALUES` answers `[token, [value, ...]]` from one read, so
//!   a program can read-modify-write without racing a write between two
//!   commands. For a key never seen the token is the empty context and the
//!   list is empty, so the same loop works for new keys.
//! - `RESOLVE key token value` writes `value` superseding exactly the versions
//!   the token covers; versions written after the token was read stay as
//!   siblings. A token that does not decode, or that claims counters beyond
//!   what this key has seen (forged, taken from another key, or older than a
//!   purge of the key's tombstones), is refused with `ERR invalid context
//!   ...` and nothing is written. Like any client write, a `RESOLVE` that
//!   would leave more versions than the sibling bound is refused with
//!   `-CONFLICT too many siblings`.

use bytes::Bytes;

use super::args::{is, syntax_error};
use super::deps::{context, Payload, SiblingSet, VersionVector};
use super::replica::{live, value_of, Change, Key};
use super::{Done, Shared};
use crate::error::{Error, Result};
use crate::protocol::Reply;

enum Form {
    Token,
    Text,
    WithValues,
}

/// `VCLOCK key [TEXT|WITHVALUES]`
pub fn vclock(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let form = match args.get(2) {
        None => Form::Token,
        Some(opt) if args.len() == 3 && is(opt, "text") => Form::Text,
        Some(opt) if args.len() == 3 && is(opt, "withvalues") => Form::WithValues,
        Some(_) => return Err(syntax_error()),
    };
    let set = shared.replica.read(Key::new(&args[1]))?;
    let seen = set.as_ref().filter(|s| !s.is_empty());
    let reply = match (form, seen) {
        (Form::Token | Form::Text, None) => Reply::Null,
        (Form::Token, Some(set)) => Reply::Bulk(context::encode_token(&set.causal_context())),
        (Form::Text, Some(set)) => {
            Reply::Bulk(Bytes::from(context::fmt_human(&set.causal_context())))
        }
        (Form::WithValues, seen) => {
            let ctx = seen.map(SiblingSet::causal_context).unwrap_or_default();
            let values = live(seen, now)
                .into_iter()
                .map(|v| Reply::Bulk(value_of(v)))
                .collect();
            Reply::Array(vec![
                Reply::Bulk(context::encode_token(&ctx)),
                Reply::Array(values),
            ])
        }
    };
    Done::reply(reply)
}

/// Makes every context error read `invalid context: ...`.
fn invalid_context(e: Error) -> Error {
    let text = e.to_string();
    if text.starts_with("invalid context") {
        Error::invalid(text)
    } else {
        Error::invalid(format!("invalid context: {text}"))
    }
}

/// `RESOLVE key context value`
pub fn resolve(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    if args.len() != 4 {
        return Err(Error::invalid(
            "wrong number of arguments for 'resolve' command",
        ));
    }
    let ctx: VersionVector = context::decode_token(&args[2]).map_err(invalid_context)?;
    let actor = shared.replica.actor();
    let value = args[3].clone();
    let (_, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let mut set = set.unwrap_or_default();
        set.validate_context(&ctx).map_err(invalid_context)?;
        set.write(actor, &ctx, Payload::Value(value), None, now);
        Ok(((), Change::Put(set)))
    })?;
    Done::wrote(Reply::OK, wrote)
}
