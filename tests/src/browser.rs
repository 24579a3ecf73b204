//! A real headless Chromium driven over WebDriver (`chromedriver`), for the dashboard's tests
//! and the benchmark's first-load figure.
//!
//! Chromium may reach loopback only: every other host resolves to nothing and goes through a
//! proxy that does not exist, so a page that needs the internet fails here as it would on an
//! air-gapped cluster. `chromedriver` runs in its own process group, and dropping the
//! [`Browser`] ends the whole group: killing the driver alone leaves Chromium running.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::process::free_port;

/// The flags Debian's Chromium needs to start headless as root in a container.
const CHROME_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
    "--no-first-run",
    "--disable-background-networking",
];

/// A headless Chromium session; dropping it ends Chromium and its driver.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
}

fn find(var: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} not found (looked for {candidates:?}; set {var}): install Debian's browser \
                 with `apt-get install chromium chromium-driver` (`.ci/deps.sh` does with TESTS=1)",
                candidates[0]
            )
        })
}

impl Browser {
    /// Starts `chromedriver` on a free port and opens a session.
    pub async fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let driver_bin = find("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let chrome_bin = find(
            "CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
        let mut browser = BrowserGuard(Some(driver));
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chrome_bin, "args": CHROME_ARGS }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut last = String::new();
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver: browser.0.take().expect("driver"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no WebDriver session from {}: {last}", driver_bin.display());
    }

    /// Runs a script in the page and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `check` in the page (a script that returns a value) until `accept` likes it,
    /// returning the last value either way.
    pub async fn wait_js(
        &self,
        script: &str,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.js(script, vec![]).await;
            if accept(&v) || tokio::time::Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element matching a CSS selector, waited for up to 10 s.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// The text of the first element matching a CSS selector.
    pub async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap_or_default()
    }

    /// Clicks the first element matching a CSS selector.
    pub async fn click(&self, css: &str) {
        let el = self.element(css).await;
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Moves the mouse to a point of the viewport (CSS pixels), and optionally clicks there.
    pub async fn pointer(&self, x: f64, y: f64, click: bool) {
        let mut mouse = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
            duration: Some(Duration::from_millis(10)),
            x: x.round(),
            y: y.round(),
        });
        if click {
            mouse = mouse
                .then(PointerAction::Down { button: 0 })
                .then(PointerAction::Up { button: 0 });
        }
        self.client
            .perform_actions(mouse)
            .await
            .unwrap_or_else(|e| panic!("pointer to ({x}, {y}): {e}"));
    }

    /// A PNG of the viewport, written to `path` (directories created).
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        end_group(&mut self.driver);
    }
}

/// Ends the driver's group if the session never opened.
struct BrowserGuard(Option<Child>);

impl Drop for BrowserGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            end_group(child);
        }
    }
}

#[allow(unsafe_code)]
fn end_group(child: &mut Child) {
    // SAFETY: signalling the process group that we created for the driver.
    unsafe {
        libc::killpg(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}
