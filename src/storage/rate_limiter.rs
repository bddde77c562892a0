//! A token bucket that bounds the bytes per second background compaction
//! writes, so a large merge cannot starve the commit log's fsyncs and the
//! flushes of the disk bandwidth they need.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Admits at most `bytes_per_sec` on average, with bursts of up to a tenth of
/// a second's worth. A rate of 0 admits everything at once.
pub(crate) struct RateLimiter {
    bytes_per_sec: u64,
    state: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes that may be admitted now; negative when a caller borrowed ahead.
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec,
            state: Mutex::new(Bucket {
                tokens: 0.0,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Account for `bytes` about to be written, sleeping as long as needed to
    /// keep the average rate.
    pub(crate) fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let rate = self.bytes_per_sec as f64;
        let wait = {
            let mut bucket = self.state.lock();
            let now = Instant::now();
            let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(rate / 10.0);
            bucket.refilled_at = now;
            bucket.tokens -= bytes as f64;
            if bucket.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-bucket.tokens / rate)
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_two_tenths_of_a_second_worth_takes_about_that_long() {
        let limiter = RateLimiter::new(1_000_000);
        let started = Instant::now();
        for _ in 0..20 {
            limiter.acquire(10_000);
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        let started = Instant::now();
        limiter.acquire(u64::MAX / 2);
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
