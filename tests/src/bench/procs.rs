//! The release binaries as child processes, and what /proc says about them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub fn release_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let p = exe.parent().expect("target/release").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --bins` (make bench does)",
        p.display()
    );
    p
}

pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(release_binary(name));
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e}")),
            name: name.to_string(),
        }
    }

    /// Peak resident set size so far (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        peak_rss_mb(self.child.id())
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) {
        #[allow(unsafe_code)]
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Peak resident set size so far (VmHWM), in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// Resident set size now (VmRSS), in MB.
pub fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A kB field of `/proc/{pid}/status`, in MB (NaN once the process is gone).
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// [`cpu_seconds`] summed over several processes.
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// User plus system CPU time a live process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of stat(5), so 11 and 12 after the name.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / hz,
        _ => f64::NAN,
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sum of a counter over a set of admin endpoints' /metrics.
pub async fn counter_sum(ports: &[u16], name: &str) -> f64 {
    let mut sum = 0.0;
    for p in ports {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{p}/metrics")).await {
            let text = r.text().await.unwrap_or_default();
            sum += text
                .lines()
                .filter(|l| l.split(['{', ' ']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    sum
}
