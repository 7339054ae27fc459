//! Opens N keep-alive client connections to a proxy, makes one GET on each
//! (so each is a served HTTP/1.1 connection, idle between requests), holds
//! them all, prints `ready N` and waits until its standard input closes.
//! Connections come from 127.0.0.1 to 127.0.0.8 in turn, so more than one
//! address's worth of ephemeral ports can be used.
//!
//!     idle_clients ADDR N
//!
//! Used by `tests/bench/idle.sh` (memory per idle connection).
#![allow(clippy::unwrap_used)] // a benchmark tool: a failure ends the run

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Connections being opened at once.
const AT_ONCE: usize = 500;

async fn open(target: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(target).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    // One whole answer: the head, then the body its length names.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(stream);
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: SocketAddr = args[1].parse().unwrap();
    let count: usize = args[2].parse().unwrap();
    let mut held = Vec::with_capacity(count);
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut failed = 0;
    while held.len() + failed < count {
        while next < count && tasks.len() < AT_ONCE {
            tasks.spawn(open(target, next));
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(stream))) => held.push(stream),
            Some(Ok(Err(e))) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("a connection failed: {e}");
                }
            }
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
    }
    println!("ready {} failed {failed}", held.len());
    let mut line = String::new();
    let _ = tokio::io::stdin().read_to_string(&mut line).await;
    drop(held);
}
