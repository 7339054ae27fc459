//! How Keel speaks HTTP/2 to members, against a member scripted frame by
//! frame: one that goes away (GOAWAY) or refuses streams before it takes
//! a request, as servers do when they end a connection after so many
//! requests (nginx: 1,000) or shut down.

#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use keel_dataplane::Dataplane;
use keel_tests::client::{client, get};
use keel_tests::{free_port, http_lb, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut f = vec![len[5], len[6], len[7], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the member does with the first request of its first connection.
#[derive(Clone, Copy)]
enum First {
    /// GOAWAY, NO_ERROR, naming stream 0 as the last it took.
    GoAway,
    /// RST_STREAM with REFUSED_STREAM.
    Refuse,
    /// GOAWAY with INTERNAL_ERROR: the request may have been acted on.
    GoAwayWithError,
}

/// A member that answers every request `200 second` but the first, which
/// it treats as `first` says. Counts the requests it answered.
async fn member(first: First) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counted = answered.clone();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((s, _)) = listener.accept().await {
            connections += 1;
            let first = (connections == 1).then_some(first);
            tokio::spawn(serve(s, first, counted.clone()));
        }
    });
    (addr, answered)
}

async fn serve(mut s: TcpStream, mut first: Option<First>, answered: Arc<AtomicUsize>) {
    let mut preface = [0u8; 24];
    if s.read_exact(&mut preface).await.is_err() {
        return;
    }
    let _ = s.write_all(&frame(SETTINGS, 0, 0, &[])).await;
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let out = match head[3] {
            SETTINGS if head[4] & 1 == 0 => frame(SETTINGS, 1, 0, &[]),
            HEADERS => match first.take() {
                Some(First::GoAway) => frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
                Some(First::Refuse) => frame(RST_STREAM, 0, stream, &[0, 0, 0, 7]),
                Some(First::GoAwayWithError) => frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 2]),
                None => {
                    answered.fetch_add(1, SeqCst);
                    // `:status: 200` (static entry 8), then the body.
                    [
                        frame(HEADERS, 0x4, stream, b"\x88"),
                        frame(0x0, 0x1, stream, b"second"),
                    ]
                    .concat()
                }
            },
            _ => continue,
        };
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn through_keel(first: First) -> (Result<(u16, String), String>, usize) {
    let (addr, answered) = member(first).await;
    let port = free_port();
    let dp = Dataplane::new();
    dp.apply(&spec(&http_lb(
        port,
        &format!("http_version: http2, members: [ {{ address: \"{addr}\" }} ]"),
    )))
    .await
    .unwrap();
    let c = client();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        get(&c, &format!("http://127.0.0.1:{port}/")),
    )
    .await
    .unwrap();
    dp.shutdown(Duration::from_secs(1)).await;
    (got, answered.load(SeqCst))
}

/// RFC 9113 §8.7: a stream past a GOAWAY's last stream, or one refused
/// with REFUSED_STREAM, was not acted on and may go again, whatever its
/// method; Keel sends it once more on a new connection.
#[tokio::test]
async fn a_request_the_member_did_not_take_goes_again_on_a_new_connection() {
    for first in [First::GoAway, First::Refuse] {
        let (got, answered) = through_keel(first).await;
        assert_eq!(got, Ok((200, "second".to_owned())));
        assert_eq!(answered, 1);
    }
}

/// A GOAWAY with an error code says nothing of what the member did with
/// the streams it had: the client gets a 502, and nothing is sent again.
#[tokio::test]
async fn a_member_that_fails_the_connection_is_not_asked_again() {
    let (got, answered) = through_keel(First::GoAwayWithError).await;
    assert_eq!(got.map(|(status, _)| status), Ok(502));
    assert_eq!(answered, 0);
}
