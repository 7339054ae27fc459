//! Headless Chromium driven through WebDriver (`chromedriver`), for the
//! dashboard tests, and a relay that lets the browser (in the root
//! namespace) reach an admin address inside a node's namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A headless Chromium with its driver; the driver is killed on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Chromium's profile and scratch files (it writes them under
    /// `TMPDIR`); removed with the browser so runs leave nothing in /tmp.
    _scratch: tempfile::TempDir,
}

fn chromedriver() -> String {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map_or_else(|| "chromedriver".to_owned(), |p| (*p).to_owned())
}

impl Browser {
    /// Starts chromedriver and a 1280×800 headless Chromium session.
    pub async fn start() -> Browser {
        let port = crate::free_port();
        let scratch = tempfile::tempdir().expect("browser scratch dir");
        let mut driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .env("TMPDIR", scratch.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e}; install chromium and chromium-driver (tests/run does)")
            });
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let _ = driver.kill();
                panic!("chromedriver did not listen on {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--hide-scrollbars", "--no-first-run",
                "--disable-extensions", "--lang=en-GB"
            ]}),
        );
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                let _ = driver.kill();
                panic!("WebDriver session: {e}")
            });
        Browser {
            client,
            driver,
            _scratch: scratch,
        }
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn find(&self, css: &str, timeout: Duration) -> Element {
        self.client
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css:?} within {timeout:?}: {e}"))
    }

    /// Waits until the text of the first element matching `css` satisfies
    /// `check`; returns that text.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = el.text().await {
                    if check(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {css:?} still reads {last:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `url` and waits for the page's first data (the view marks
    /// `main[data-loaded]`); returns how long that took.
    pub async fn open(&self, url: &str) -> Duration {
        let started = Instant::now();
        self.client.goto(url).await.unwrap();
        self.find("main[data-loaded]", Duration::from_secs(10))
            .await;
        started.elapsed()
    }

    /// Replaces the value of the input matching `css`.
    pub async fn fill(&self, css: &str, value: &str) {
        let el = self.find(css, Duration::from_secs(5)).await;
        el.clear().await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.find(css, Duration::from_secs(5))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Saves a PNG of the viewport as `target/screenshots/NAME.png`, or in
    /// the folder `KEEL_SCREENSHOTS` names (relative to the repository):
    /// `KEEL_SCREENSHOTS=docs/screenshots` updates the README's images, on
    /// purpose, never as a side effect of a test run.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = match std::env::var_os("KEEL_SCREENSHOTS") {
            Some(d) => root.join(d),
            None => root.join("target/screenshots"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session; the driver is stopped on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Forwards connections from a loopback port in the root namespace to
/// `target` as seen from inside namespace `ns`: the sockets towards the
/// target are opened on a thread that entered `ns`, so every packet to a
/// node travels inside the test's namespaces. Stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(ns: &str, target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_owned();
        let target = target.to_owned();
        std::thread::spawn(move || {
            crate::netns::enter(&ns).unwrap();
            while !flag.load(Ordering::Relaxed) {
                let Ok((outside, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // Opened on this thread, so inside the namespace.
                let Ok(inside) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = outside.set_nonblocking(false);
                pipe(outside, inside);
            }
        });
        Relay { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    std::thread::spawn(move || copy(a, b));
    std::thread::spawn(move || copy(b2, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
