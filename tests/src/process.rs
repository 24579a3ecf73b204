//! The binaries as users run them: child processes with their logs captured, signalled and
//! waited on, and killed when the test ends however it ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A free loopback port (bound, then released: the caller binds it next).
///
/// Ports come from 20000..32000, below Linux's ephemeral range (32768..60999), so a port
/// handed out here is never taken meanwhile by a socket bound to port 0 or by an outgoing
/// connection; and each is handed out once per test process. (Asking the kernel for port 0
/// and releasing it raced with exactly those, with many tests running at once.)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 12_000, "no free loopback port left in 20000..32000");
        let port = 20_000 + (start.wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends `sig` to `pid`.
#[allow(unsafe_code)]
pub fn signal_pid(pid: u32, sig: i32) -> bool {
    // SAFETY: sending a signal to a process id we spawned has no memory-safety implications.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

/// A running binary whose stdout and stderr are collected line by line. Dropping it kills
/// the process (SIGKILL), so a failed assertion leaves nothing behind.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

impl Proc {
    /// Starts `cmd` with its output captured and nothing on its standard input.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        Self::spawn_reading(name, cmd, Stdio::null())
    }

    /// Starts `cmd` with its output captured and `input` as its standard input.
    pub fn spawn_reading(name: &str, cmd: &mut Command, input: impl Into<Stdio>) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(input)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (stdout, stderr) = (Arc::default(), Arc::default());
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout));
        collect(child.stderr.take().unwrap(), Arc::clone(&stderr));
        Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (libc's number, e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        assert!(
            signal_pid(self.pid(), sig),
            "kill({sig}) on {} failed",
            self.name
        );
    }

    /// Whether the process is still running (false once it has exited, however).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Everything printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit, at most `timeout`; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads take the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a stderr line contains `needle`, and returns that line.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never logged {needle:?}; its stderr:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin address the process logged (`serving /health, /ready and /metrics`), as
    /// `127.0.0.1:PORT`: the one way to find a port chosen because the default was taken.
    pub async fn admin_addr(&self) -> String {
        let line = self
            .wait_for_log("and /metrics addr=", Duration::from_secs(30))
            .await;
        let port = line
            .rsplit_once("addr=")
            .and_then(|(_, a)| a.trim_matches('"').rsplit_once(':'))
            .map(|(_, p)| {
                p.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string()
            })
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        format!("127.0.0.1:{port}")
    }
}

impl Drop for Proc {
    /// Kills the process; when a test failed, prints how the process ended and the last of
    /// its log, so that a failure in CI says what the process saw.
    fn drop(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let lines = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &lines[lines.len().saturating_sub(40)..];
            let state = exited.map_or("was still running".to_string(), |s| {
                format!("had exited: {s}")
            });
            eprintln!(
                "--- {} (pid {}) {state}; the last {} lines of its stderr:\n{}",
                self.name,
                self.child.id(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}
