//! The batching writer shared by both ends of a connection.
//!
//! It waits for one queued item, then takes whatever else is already queued
//! (up to a batch limit) without waiting, encodes all of it into the write
//! buffer and flushes once. Under light load a frame goes out alone and at
//! once (no Nagle-style delay: sockets are `TCP_NODELAY`); under load many
//! frames share one `write` system call and one TCP segment train.

use std::io;

use futures::SinkExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use super::frame::{Frame, PeerCodec};
use super::stats::{Counter, PeerStats};

/// The write buffer size above which `feed` writes to the socket before
/// encoding more. Large enough that a batch of small frames is one write.
pub(crate) const WRITE_BUFFER_BOUNDARY: usize = 256 * 1024;

pub(crate) type FrameWriter = FramedWrite<OwnedWriteHalf, PeerCodec>;

/// Writes items from `queue` (starting with `first`, if any) until the queue
/// closes (then `Ok`) or the socket fails. `to_frame` turns an item into its
/// frame, or `None` to skip it (e.g. a request whose caller gave up).
pub(crate) async fn write_batches<T>(
    writer: &mut FrameWriter,
    queue: &mut mpsc::Receiver<T>,
    first: Option<T>,
    max_batch: usize,
    stats: &PeerStats,
    mut to_frame: impl FnMut(T) -> Option<Frame>,
) -> io::Result<()> {
    let mut next = first;
    loop {
        let mut item = match next.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => item,
                None => return SinkExt::<&Frame>::flush(writer).await,
            },
        };
        let mut taken = 0;
        let mut written = 0;
        loop {
            if let Some(frame) = to_frame(item) {
                stats.add(Counter::BytesSent, frame.wire_len() as u64);
                writer.feed(&frame).await?;
                written += 1;
            }
            taken += 1;
            if taken >= max_batch {
                break;
            }
            match queue.try_recv() {
                Ok(more) => item = more,
                Err(_) => break,
            }
        }
        if written > 0 {
            SinkExt::<&Frame>::flush(writer).await?;
            stats.add(Counter::MessagesSent, written);
            stats.incr(Counter::WriteBatches);
        }
    }
}
