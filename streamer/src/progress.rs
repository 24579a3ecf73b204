//! Progress of long work (a one-pass run over a large CSV, `streamer generate`): a bar with
//! rate and ETA when stderr is a terminal, and a log line every [`LOG_EVERY`] otherwise, so
//! that a run under systemd or CI also shows it is alive.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

/// How often a non-terminal run logs its progress.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Reports `done` of `total` units (bytes of input, or rows) as work goes on.
pub struct Progress {
    what: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// A bar on a terminal, log lines elsewhere. `what` names the unit of `total` in logs.
    pub fn new(what: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} (ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let now = Instant::now();
        Self {
            what,
            total,
            bar,
            started: now,
            last_log: now,
        }
    }

    /// Updates the position; `detail` is shown beside the bar and in log lines.
    pub fn update(&mut self, done: u64, detail: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(detail());
            return;
        }
        if self.last_log.elapsed() < LOG_EVERY {
            return;
        }
        self.last_log = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        let fraction = done as f64 / self.total.max(1) as f64;
        let eta = (fraction > 0.0).then(|| elapsed * (1.0 - fraction) / fraction);
        tracing::info!(
            percent = format!("{:.1}", fraction * 100.0),
            eta_s = eta.map(|e| e.round() as u64),
            "progress: {} of {} {}; {}",
            done,
            self.total,
            self.what,
            detail()
        );
    }

    /// Clears the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
