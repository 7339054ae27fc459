//! Request-smuggling and response-desync vectors, the way an attacker
//! sends them: `tests/desync/desync.py` drives 320 of them through Keel
//! over real sockets (HTTP/1.1 both ways, HTTP/2 from the client as raw
//! frames, HTTP/2 from a scripted member as raw frames), in front of
//! scripted members, and judges both ends with h11 (an independent strict
//! parser). Keel must have no unsafe and no nonconforming result.
//! `tests/bench/desync.sh` runs the same vectors through HAProxy and
//! nginx beside Keel.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_tests::{free_port, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_vector_desyncs_keel_or_gets_past_it_unrefused() {
    let (port, member) = (free_port(), free_port());
    let (h2_port, h2_member) = (free_port(), free_port());
    let dp = keel_tests::dataplane();
    // Keel's defaults, but for the timeouts of a client or member that
    // stops mid-message: the vectors that leave one waiting end sooner.
    dp.apply(&spec(&format!(
        "load_balancers:\n  - {{ name: lb, listeners: [ {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p, header_timeout: 1s, client_timeout: 1s }},\n\
         \x20     {{ port: {h2_port}, protocol: http, bind: 127.0.0.1, default_pool: h2, header_timeout: 1s, client_timeout: 1s }} ] }}\n\
         pools:\n  - {{ name: p, response_timeout: 1s, members: [ {{ address: \"127.0.0.1:{member}\" }} ] }}\n\
         \x20 - {{ name: h2, http_version: http2, response_timeout: 1s, members: [ {{ address: \"127.0.0.1:{h2_member}\" }} ] }}\n"
    )))
    .await
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/pyenv/bin/python");
    assert!(python.exists(), "no Python environment: tests/run makes it");
    let mut child = Command::new(python)
        .arg(root.join("desync/desync.py"))
        .args(["--member-port", &member.to_string()])
        .args(["--h2-member-port", &h2_member.to_string()])
        .args(["--proxy", &format!("keel=127.0.0.1:{port}")])
        .args(["--h2", &format!("keel=127.0.0.1:{port}")])
        .args(["--h2-member", &format!("keel=127.0.0.1:{h2_port}")])
        .args(["--require-clean", "keel"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "vectors Keel failed (or the run timed out):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every vector was judged, and every one is ok.
    assert!(
        report.contains("| keel | 320 | 320 | 0 | 0 | 0 |"),
        "{report}"
    );
    dp.shutdown(Duration::from_secs(1)).await;
}
