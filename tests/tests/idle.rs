//! What idleness costs: an idle node's CPU, and an idle keep-alive client
//! connection's heap in the data plane.
//!
//! The heap:
//! the bytes still allocated for each one after it was served a GET and
//! left open. Counted by this binary's allocator, so the figure is exact
//! and the same on every machine (dhat's heap statistics) (`tests/bench/idle.sh` reads resident
//! memory instead, next to HAProxy's and nginx's). With KEEL_DHAT_FILE
//! set, dhat writes where each byte was allocated there (open it in
//! DHAT's viewer, `dh_view.html`).

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::io::{Read, Write};
use std::time::Duration;

use keel_tests::backend::HttpBackend;
use keel_tests::node::KeelProcess;
use keel_tests::{free_port, spec};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Connections measured (after as many again warmed the data plane up).
const CONNECTIONS: usize = 1000;

/// The most heap an idle HTTP/1 keep-alive connection may hold, in this
/// (debug) build: 916 bytes now (its task with its server in it, 512; its
/// socket's registration with tokio, 256; `http::Conn`, 128; its place
/// among the listener's waits); 1,164 while its server was boxed apart
/// from its task, its wait on the listener was a `CancellationToken`'s
/// and its addresses unpacked; 1,261 while its future held the answer's
/// buffer and the timeouts, and its client's IP was a shared header value
/// (a count each request wrote, and two allocations more); 5,245 before
/// its task, server and waits were laid out for it. HAProxy 2.6 holds
/// about 1.1 KiB of resident memory per idle connection
/// (`tests/bench/idle.sh`, `idle-vm.sh` for 100,000).
const MOST_PER_CONNECTION: isize = 1000;

/// Opens `n` connections to `port`, each served one GET and left open.
/// Plain blocking sockets on a thread of their own: the client side
/// allocates nothing per connection, so what is counted is Keel's.
async fn idle_clients(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
                    .unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                // The backend answers with its name: the answer ends with it.
                while !got.ends_with(b"web") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
                s
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The heap in use once it has been steady for a moment.
async fn settled() -> isize {
    let live = || dhat::HeapStats::get().curr_bytes as isize;
    let mut last = live();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = live();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_holds_little_heap() {
    let profiler = match std::env::var_os("KEEL_DHAT_FILE") {
        Some(file) => dhat::Profiler::builder().file_name(file).build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    let web = HttpBackend::start("web").await;
    let port = free_port();
    let dp = keel_tests::dataplane();
    dp.apply(&spec(&format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p, keepalive_timeout: 600s }}
pools:
  - {{ name: p, members: [ {{ address: "{}" }} ] }}
"#,
        web.addr
    )))
    .await
    .unwrap();
    // Warm up: the member connection, the runtimes' first allocations.
    let warm = idle_clients(port, CONNECTIONS).await;
    let before = settled().await;
    let held = idle_clients(port, CONNECTIONS).await;
    let after = settled().await;
    // Its figures (and, with KEEL_DHAT_FILE, its file) are of this moment.
    drop(profiler);
    let each = (after - before) / CONNECTIONS as isize;
    eprintln!("heap per idle HTTP/1 connection: {each} bytes");
    assert!(
        each <= MOST_PER_CONNECTION,
        "an idle connection holds {each} bytes of heap (at most {MOST_PER_CONNECTION})"
    );
    // They are still served: each answers another GET.
    drop(warm);
    for mut s in held.into_iter().take(10) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).unwrap() > 0);
    }
}

/// CPU time (user and system, in clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_node_leading_alone_spends_almost_no_cpu() {
    let port = free_port();
    let keel = KeelProcess::start(&format!(
        r#"
load_balancers:
  - name: lb
    listeners:
      - {{ port: {port}, protocol: http, bind: 127.0.0.1, default_pool: p }}
pools:
  - {{ name: p, members: [ {{ address: "127.0.0.1:9" }} ] }}
"#
    ));
    // Its start-up work over (the lease it took as leader included).
    let _ = keel.login();
    std::thread::sleep(Duration::from_secs(2));
    let pid = keel.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_ticks(pid) - before;
    // Ticks are hundredths of a second: at most 10% of one core.
    assert!(
        spent <= 30,
        "an idle node spent {spent} ticks of CPU in 3 s (at most 30)\n{}",
        keel.log_text()
    );
}
