//! Server commands: `TIME` and `SHUTDOWN`.
//!
//! `SHUTDOWN` behaves as SIGTERM does: the server stops accepting, lets every
//! connection finish the commands it has read, closes the keyspace (which
//! fsyncs the commit log) and exits 0. As in Redis, the client that asked gets
//! no reply; its connection is closed. `SAVE` and `NOSAVE` are accepted and do
//! the same thing: ringkv has no snapshot to take or skip, every acknowledged
//! write is already in the commit log.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::info;

use crate::protocol::Reply;
use crate::server::dispatch::{Ctx, Flow};

/// `TIME`: seconds and microseconds since the Unix epoch, as two bulk strings.
pub fn time() -> Reply {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Reply::Array(vec![
        Reply::bulk(now.as_secs().to_string()),
        Reply::bulk(now.subsec_micros().to_string()),
    ])
}

/// `SHUTDOWN [NOSAVE|SAVE]`.
pub fn shutdown(ctx: &mut Ctx<'_>, args: &[Bytes]) -> (Option<Reply>, Flow) {
    for a in &args[1..] {
        if !a.eq_ignore_ascii_case(b"NOSAVE") && !a.eq_ignore_ascii_case(b"SAVE") {
            return (Some(Reply::err("syntax error")), Flow::Continue);
        }
    }
    if args.len() > 2 {
        return (Some(Reply::err("syntax error")), Flow::Continue);
    }
    info!(client = ctx.session.id.0, "SHUTDOWN requested by a client");
    ctx.shared.request_shutdown();
    (None, Flow::Close)
}
