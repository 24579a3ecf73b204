//! Per-second rates from ever-growing totals, for members' status entries.

use std::sync::Mutex;

use tokio::time::Instant;

/// The rate of a total between two looks at it.
#[derive(Debug, Default)]
pub struct Rate(Mutex<Option<(Instant, u64)>>);

impl Rate {
    /// The rate since the previous call (0 on the first), per second, rounded to a tenth.
    pub fn per_second(&self, total: u64) -> f64 {
        let now = Instant::now();
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let rate = match *last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    total.saturating_sub(before) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        *last = Some((now, total));
        (rate * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_the_growth_over_the_time_between_looks() {
        let r = Rate::default();
        assert_eq!(r.per_second(100), 0.0, "nothing to compare with yet");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.per_second(300), 100.0);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(r.per_second(301), 0.3, "rounded to a tenth");
    }
}
