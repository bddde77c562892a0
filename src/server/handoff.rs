//! Hinted handoff, the doing half: replays the hints this node holds to the
//! replicas they are meant for, once gossip reports them back.
//!
//! The deciding half is [`HandoffPlanner`] (which hints go to whom, when,
//! within the byte throttle, one batch in flight per owner) and the durable
//! [`HintStore`] (written by the data path when this node stood in for a
//! down replica). This task only carries out their plans:
//!
//! ```text
//! every TICK (100 ms), and as soon as a batch settles, for each target
//! with pending hints:
//!     plan = store.plan_handoff(planner, target, gossip status, now)   // on a blocking thread
//!     drop plan.expired, quarantine plan.corrupt
//!     plan.send: one Put per hint (no hint_for: the owner merges it into its
//!                replica), all at once; every ack OK -> store.acknowledge(batch)
//!                (compare-and-delete), any failure -> planner.on_failure(batch)
//! every minute: store.expire(now, window)   (owners that never come back)
//! a target that left the cluster: its hints are dropped (anti-entropy and
//!                the new owners' writes cover its keys)
//! ```
//!
//! A hint is deleted only after its owner acknowledged the `Put` (which the
//! owner sends once the merge is durable under its fsync policy), and only if
//! no newer write merged into the hint meanwhile; a SIGKILL of this node at
//! any point leaves the hint in the store, and it is sent again (the owner's
//! merge is idempotent). Replays go at most `handoff-bytes-per-sec` (default
//! 4 MiB/s) so that clients of the returning node keep their latency.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::cluster_node::ClusterHandle;
use crate::cluster::hints::{HandoffConfig, HandoffPlanner, HintBatch, HintStore};
use crate::cluster::membership::Status;
use crate::cluster::messages::{Message, PutRequest, RequestId};
use crate::server::keyspace::now_ms;

/// How often the task looks for work.
pub const TICK: Duration = Duration::from_millis(100);

/// How often hints past the window are swept for every target.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Runs hinted handoff until the cluster node shuts down.
pub async fn run(
    store: Arc<HintStore>,
    cluster: ClusterHandle,
    config: HandoffConfig,
    request_timeout: Duration,
) {
    let stop = cluster.shutdown_token();
    let window_ms = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
    let planner = Arc::new(Mutex::new(HandoffPlanner::new(config)));
    // A settled batch wakes the loop at once: the next batch for that owner
    // is planned without waiting for the tick (which would cap a replay at
    // one batch per owner per tick, whatever the throttle allows).
    let settled = Arc::new(tokio::sync::Notify::new());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = settled.notified() => {}
        }
        if last_expiry.elapsed() >= EXPIRE_EVERY {
            last_expiry = std::time::Instant::now();
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.expire(now_ms(), window_ms)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(hints = n, "dropped hints older than the hint window"),
                Ok(Err(e)) => warn!(error = %e, "hint expiry failed"),
                Err(e) => warn!(error = %e, "hint expiry task failed"),
            }
        }
        for (target, _, _) in store.pending_by_target() {
            let status = cluster.with_membership(|m| m.status(target));
            let Some(status) = status else {
                // A member we never heard of (this node restarted and has
                // not met it yet): keep its hints until gossip knows it.
                continue;
            };
            if status == Status::Left {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.drop_target(target)).await {
                    Ok(Ok(n)) => {
                        info!(target = %target.short(), hints = n, "dropped the hints of a member that left")
                    }
                    Ok(Err(e)) => warn!(error = %e, "dropping hints failed"),
                    Err(e) => warn!(error = %e, "dropping hints task failed"),
                }
                continue;
            }
            if status != Status::Up || planner.lock().in_flight(target) {
                continue;
            }
            let (s, p) = (store.clone(), planner.clone());
            let planned = tokio::task::spawn_blocking(move || {
                let plan = s.plan_handoff(&mut p.lock(), target, status, now_ms())?;
                if !plan.expired.is_empty() {
                    s.drop_expired(&plan.expired)?;
                }
                for bad in &plan.corrupt {
                    warn!(error = %bad.error, "quarantining a corrupt hint");
                    s.quarantine(bad)?;
                }
                Ok::<_, crate::error::Error>(plan.send)
            })
            .await;
            let batch = match planned {
                Ok(Ok(Some(batch))) => batch,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    warn!(target = %target.short(), error = %e, "planning handoff failed");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "handoff planning task failed");
                    continue;
                }
            };
            let (s, p, c, done) = (
                store.clone(),
                planner.clone(),
                cluster.clone(),
                settled.clone(),
            );
            tokio::spawn(async move {
                send_batch(batch, s, p, c, request_timeout).await;
                done.notify_one();
            });
        }
    }
}

/// Sends one batch as `Put`s and settles it with the planner and the store.
async fn send_batch(
    batch: HintBatch,
    store: Arc<HintStore>,
    planner: Arc<Mutex<HandoffPlanner>>,
    cluster: ClusterHandle,
    timeout: Duration,
) {
    let target = batch.target;
    let addr = cluster.with_membership(|m| {
        m.member(target)
            .and_then(|member| member.peer_addr.parse::<std::net::SocketAddr>().ok())
    });
    let delivered = match addr {
        None => false,
        Some(addr) => {
            let budget = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            let puts = batch.hints.iter().enumerate().map(|(i, hint)| {
                let mut siblings = Vec::new();
                hint.siblings.encode(&mut siblings);
                let put = Message::Put(PutRequest {
                    id: RequestId(i as u64),
                    partition: hint.partition,
                    key: hint.key.to_vec(),
                    siblings,
                    budget_ms: budget,
                    hint_for: None,
                });
                let peers = cluster.peers().clone();
                async move {
                    let answer = peers
                        .request(addr, Bytes::from(put.encode()), timeout)
                        .await;
                    matches!(
                        answer.as_deref().map(Message::decode),
                        Ok(Ok(Message::PutAck(ack))) if ack.outcome.is_ok()
                    )
                }
            });
            join_all(puts).await.into_iter().all(|ok| ok)
        }
    };
    if !delivered {
        debug!(target = %target.short(), hints = batch.hints.len(), "hint batch not delivered; will retry");
        planner.lock().on_failure(target, batch.id);
        return;
    }
    let refs = planner.lock().on_ack(target, batch.id);
    let Some(refs) = refs else {
        return;
    };
    let count = refs.len();
    match tokio::task::spawn_blocking(move || store.acknowledge(&refs)).await {
        Ok(Ok(outcome)) => debug!(
            target = %target.short(),
            hints = count,
            deleted = outcome.deleted,
            kept = outcome.kept,
            "hints handed off"
        ),
        Ok(Err(e)) => warn!(error = %e, "deleting delivered hints failed; they will be sent again"),
        Err(e) => warn!(error = %e, "hint acknowledgement task failed"),
    }
}

/// The handoff settings from the configuration.
pub fn handoff_config(config: &crate::config::Config) -> HandoffConfig {
    HandoffConfig {
        bytes_per_sec: config.handoff_bytes_per_sec,
        window: Duration::from_millis(config.hint_window_ms.max(1)),
        // A batch whose acks do not come back within a few request
        // timeouts is taken for lost and sent again.
        ack_timeout: Duration::from_millis(config.request_timeout_ms.saturating_mul(5).max(1)),
        ..HandoffConfig::default()
    }
}

/// `CLUSTER HINTS`: one row per target: id, hints, bytes, gossip status.
pub fn hints_reply(store: &HintStore, cluster: &ClusterHandle) -> crate::protocol::Reply {
    use crate::protocol::Reply;
    let rows = store
        .pending_by_target()
        .into_iter()
        .map(|(target, count, bytes)| {
            let status = cluster
                .with_membership(|m| m.status(target))
                .map_or_else(|| "unknown".to_string(), |s| s.to_string());
            Reply::Array(vec![
                Reply::bulk(target.to_string()),
                Reply::Integer(i64::try_from(count).unwrap_or(i64::MAX)),
                Reply::Integer(i64::try_from(bytes).unwrap_or(i64::MAX)),
                Reply::Status(status),
            ])
        })
        .collect();
    Reply::Array(rows)
}
