//! Server-wide counters for `INFO stats`, and the instantaneous ops/s sampler.
//!
//! Connections add to these once per batch of pipelined commands, not once per
//! command, so two cores hammering the same cache line is paid per read, not
//! per request. The instantaneous rate is computed as Redis computes it: a
//! sample of the command total every 100 ms, averaged over the last 16.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// Counters shown by `INFO`; `CONFIG RESETSTAT` zeroes them.
#[derive(Debug, Default)]
pub struct Stats {
    pub total_commands_processed: AtomicU64,
    pub total_connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub total_net_input_bytes: AtomicU64,
    pub total_net_output_bytes: AtomicU64,
    /// Peak of the resident memory seen by `INFO memory`, in bytes.
    pub peak_rss_bytes: AtomicU64,
    samples: Mutex<OpsSamples>,
}

/// How often the ops/s sampler runs.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
const SAMPLES: usize = 16;

#[derive(Debug, Default)]
struct OpsSamples {
    last_total: u64,
    last_at: Option<std::time::Instant>,
    rates: [u64; SAMPLES],
    next: usize,
}

impl Stats {
    /// Records one sample of the command total (called every [`SAMPLE_INTERVAL`]).
    pub fn sample(&self) {
        let now = std::time::Instant::now();
        let total = self.total_commands_processed.load(Relaxed);
        let mut s = self.samples.lock();
        if let Some(at) = s.last_at {
            let ms = now.duration_since(at).as_millis().max(1) as u64;
            let ops = total.saturating_sub(s.last_total);
            let idx = s.next;
            s.rates[idx] = ops * 1000 / ms;
            s.next = (idx + 1) % SAMPLES;
        }
        s.last_total = total;
        s.last_at = Some(now);
    }

    /// Commands per second over the last ~1.6 s.
    pub fn instantaneous_ops_per_sec(&self) -> u64 {
        let s = self.samples.lock();
        s.rates.iter().sum::<u64>() / SAMPLES as u64
    }

    /// `CONFIG RESETSTAT`.
    pub fn reset(&self) {
        for c in [
            &self.total_commands_processed,
            &self.total_connections_received,
            &self.rejected_connections,
            &self.total_net_input_bytes,
            &self.total_net_output_bytes,
            &self.peak_rss_bytes,
        ] {
            c.store(0, Relaxed);
        }
        *self.samples.lock() = OpsSamples::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_zeroes_the_counters() {
        let s = Stats::default();
        s.total_commands_processed.fetch_add(5, Relaxed);
        s.sample();
        s.total_commands_processed.fetch_add(5, Relaxed);
        s.sample();
        assert!(s.instantaneous_ops_per_sec() > 0);
        s.reset();
        assert_eq!(s.total_commands_processed.load(Relaxed), 0);
        assert_eq!(s.instantaneous_ops_per_sec(), 0);
    }
}
