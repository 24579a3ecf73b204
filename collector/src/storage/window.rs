//! Fold windows (`STORAGE_FOLD_WINDOW`): aligned to multiples of their length since the Unix
//! epoch, so that every collector maps a sample to the same window without asking anyone,
//! and a window is named by its end (the key of its chunks and of its fold marker).

use std::time::Duration;

/// Windows of one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    nanos: i64,
}

impl Windows {
    /// Windows of `len` (at least a second).
    pub fn new(len: Duration) -> Self {
        let nanos = i64::try_from(len.as_nanos()).unwrap_or(i64::MAX);
        Self {
            nanos: nanos.max(1_000_000_000),
        }
    }

    /// The end (exclusive) of the window holding `t`, Unix nanoseconds.
    pub fn end_of(&self, t: i64) -> i64 {
        t.div_euclid(self.nanos)
            .saturating_add(1)
            .saturating_mul(self.nanos)
    }

    /// The start (inclusive) of the window ending at `end`.
    pub fn start_of(&self, end: i64) -> i64 {
        end.saturating_sub(self.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch_and_half_open() {
        let w = Windows::new(Duration::from_secs(3600));
        let hour = 3_600_000_000_000;
        assert_eq!(w.end_of(0), hour);
        assert_eq!(w.end_of(hour - 1), hour);
        assert_eq!(
            w.end_of(hour),
            2 * hour,
            "a window's end belongs to the next"
        );
        assert_eq!(w.start_of(w.end_of(hour + 5)), hour);
        assert_eq!(w.end_of(-1), 0);
    }
}
