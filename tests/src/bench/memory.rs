//! The streamer's memory on a large CSV: it must stream, so its peak RSS stays flat however
//! large the file is. Measured exactly, from the kernel's `ru_maxrss` of the exited process
//! (what `/usr/bin/time -v` reports), not by sampling.

use std::path::Path;
use std::time::Instant;

use super::procs::Proc;
use super::scenarios::base_env;
use super::BigCsv;

/// Publishes `csv` into the queue with no collector running (the streamer's work alone) and
/// returns its peak RSS.
pub async fn streamer_on_big_csv(endpoints: &[String], prefix: &str, csv: &Path) -> BigCsv {
    let bytes = std::fs::metadata(csv).expect("big CSV").len();
    let mut env = base_env(endpoints, prefix);
    env.push(("ADMIN_LISTEN", String::new()));
    let started = Instant::now();
    let streamer = Proc::spawn("streamer", &["--csv", csv.to_str().unwrap()], &env);
    let (status, max_rss_kb) = tokio::task::spawn_blocking(move || wait_with_rusage(streamer))
        .await
        .expect("wait");
    assert!(status == 0, "streamer exited with status {status}");
    BigCsv {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        streamer_peak_rss_mb: max_rss_kb as f64 / 1024.0,
    }
}

/// Waits for the process and returns its wait status and peak RSS in KiB.
fn wait_with_rusage(p: Proc) -> (i32, i64) {
    let pid = p.child.id() as libc::pid_t;
    let mut status = 0;
    #[allow(unsafe_code)]
    // SAFETY: `usage` is a plain C struct the kernel fills; `pid` is our own unwaited child
    // (std's `Child` is dropped without waiting, so it does not reap it first).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let r = libc::wait4(pid, &mut status, 0, &mut usage);
        assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
        usage
    };
    drop(p);
    (status, usage.ru_maxrss)
}
