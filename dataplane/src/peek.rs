//! Looking at a connection's first bytes without taking them, waiting for
//! more by readiness (no polling with sleeps): what tells h2c from HTTP/1,
//! and reads a PROXY header or a ClientHello's server name.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Peeks at what `stream` holds, into `buf`, once it holds more than
/// `seen` bytes (`seen` is 0 at first). A result no larger than `seen`
/// means the peer closed: no more is coming.
///
/// A peek leaves the bytes in the socket, so the stream stays readable in
/// tokio's eyes and a wait on it would end at once, again and again; and
/// its readiness cannot be cleared, or whoever reads the stream next would
/// wait for bytes that are already there. So a wait for more watches a
/// duplicate of the descriptor, registered on its own: its readiness is
/// cleared after each look, and the next bytes to arrive (or the peer's
/// close) wake it. The duplicate costs four system calls, and only when
/// the first bytes came in pieces.
pub(crate) async fn peek_more(
    stream: &TcpStream,
    buf: &mut [u8],
    seen: usize,
) -> io::Result<usize> {
    if seen == 0 {
        return stream.peek(buf).await;
    }
    // `with_interest` is deprecated because a caller could close the
    // descriptor while it is registered; an `OwnedFd` moved into the
    // `AsyncFd` stays open, and the same, until the registration is gone,
    // which is the contract tokio's `unsafe` successor states (and this
    // workspace forbids `unsafe`).
    #[allow(deprecated)]
    let watch: AsyncFd<OwnedFd> =
        AsyncFd::with_interest(stream.as_fd().try_clone_to_owned()?, Interest::READABLE)?;
    loop {
        let mut ready = watch.readable().await?;
        match recv(
            stream.as_raw_fd(),
            buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) if n > seen || n == 0 => return Ok(n),
            Ok(n) if ready.ready().is_read_closed() => return Ok(n),
            Ok(_) | Err(Errno::EAGAIN) => ready.clear_ready(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn waits_for_more_bytes_then_sees_them_all_and_leaves_them_readable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"PRI * ").await.unwrap();
        let mut buf = [0u8; 64];
        let n = peek_more(&server, &mut buf, 0).await.unwrap();
        assert_eq!(&buf[..n], b"PRI * ");
        // Nothing new: the wait does not end by itself (no busy loop).
        let waited =
            tokio::time::timeout(Duration::from_millis(100), peek_more(&server, &mut buf, n)).await;
        assert!(waited.is_err());
        client.write_all(b"HTTP/2.0").await.unwrap();
        let m = peek_more(&server, &mut buf, n).await.unwrap();
        assert_eq!(&buf[..m], b"PRI * HTTP/2.0");
        // What was peeked is read next, without waiting for more.
        let mut read = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_secs(1), server.read(&mut read))
            .await
            .expect("the peeked bytes were left readable")
            .unwrap();
        assert_eq!(&read[..got], b"PRI * HTTP/2.0");
        // A close ends the wait with no more bytes than were seen.
        client.write_all(b"x").await.unwrap();
        let k = peek_more(&server, &mut buf, 0).await.unwrap();
        drop(client);
        let last = tokio::time::timeout(Duration::from_secs(1), peek_more(&server, &mut buf, k))
            .await
            .expect("a close ends the wait")
            .unwrap();
        assert!(last <= k);
    }
}
