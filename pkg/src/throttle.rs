//! A token bucket driven by tokio's clock.
//!
//! Written here rather than taken from `governor` because (1) its clock is not tokio's, so its
//! logic cannot be tested under `start_paused` time, and (2) the streamer changes the rate at run
//! time when the queue gets deep, which governor's quota model does not allow without
//! rebuilding the limiter and losing its state.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket on tokio's clock: `take` waits for tokens at `rate` per second, with a burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0 means unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `rate` per second.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Tokens per second (0: unlimited).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// True when the rate is 0.
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0
    }

    /// Changes the refill rate, keeping the tokens already earned.
    pub fn set_rate(&mut self, rate: f64) {
        self.refill();
        self.rate = rate.max(0.0);
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if they are there; otherwise says how long until they would be.
    pub fn try_take(&mut self, n: f64) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
        }
        self.refill();
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }

    /// Takes `n` tokens, waiting as long as the rate requires. A request larger than the
    /// burst goes into debt rather than waiting forever, so the long-run rate stays exact.
    /// Returns how long it waited.
    pub async fn take(&mut self, n: f64) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        self.refill();
        self.tokens -= n;
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-self.tokens / self.rate);
        tokio::time::sleep(wait).await;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_over_time() {
        let mut b = TokenBucket::new(100.0, 10.0);
        let start = Instant::now();
        for _ in 0..110 {
            b.take(1.0).await;
        }
        // 10 from the initial burst, then 100 more at 100/s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(999) && elapsed <= Duration::from_millis(1001),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_applies_at_once() {
        let mut b = TokenBucket::new(1000.0, 1.0);
        b.take(1.0).await;
        b.set_rate(10.0);
        let start = Instant::now();
        for _ in 0..10 {
            b.take(1.0).await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn try_take_reports_the_wait() {
        let mut b = TokenBucket::new(2.0, 1.0);
        assert!(b.try_take(1.0).is_ok());
        assert_eq!(b.try_take(1.0), Err(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.try_take(1.0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let mut b = TokenBucket::new(0.0, 1.0);
        assert_eq!(b.take(1e9).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn large_batches_go_into_debt() {
        let mut b = TokenBucket::new(100.0, 10.0);
        let waited = b.take(60.0).await; // 10 in the bucket, 50 owed
        assert_eq!(waited, Duration::from_millis(500));
    }
}
