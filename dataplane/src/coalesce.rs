//! Small writes made of several pieces leave in one `send`.
//!
//! hyper hands a response over as a head and a body, and the member client
//! a request head and its body, as separate slices. `writev` takes them in
//! one call, but on Linux it goes through the file layer (position lock,
//! iovec import) and costs about twice what a `send` of the same bytes
//! does (`perf`, BENCHMARKS.md). When the pieces are small together,
//! copying them into one buffer and sending that is cheaper than the
//! vectored call; large bodies still go out vectored, uncopied.
//!
//! And writes wait for the reads: see [`Defer`].

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Up to this many bytes in all are copied and sent at once. Copying more
/// would cost more than the `writev` it saves.
const MAX_COPY: usize = 4096;

thread_local! {
    /// Where the pieces are joined: one per thread, reused by every write.
    /// Taken out for a write and put back after, never borrowed across it:
    /// a write that nests another (TLS over a coalescing stream) finds it
    /// empty and uses a buffer of its own.
    static JOINED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Writes `bufs` to `io`: a lone piece or small pieces with one plain
/// write, anything larger vectored.
pub(crate) fn poll_write_vectored<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut pieces = bufs.iter().filter(|b| !b.is_empty());
    let first = pieces.next();
    if pieces.next().is_none() {
        // Nothing, or one piece: a plain write of it.
        return io.poll_write(cx, first.map_or(&[][..], |b| b));
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total > MAX_COPY {
        return io.poll_write_vectored(cx, bufs);
    }
    let mut joined = JOINED.take();
    joined.clear();
    joined.reserve(MAX_COPY);
    for b in bufs {
        joined.extend_from_slice(b);
    }
    // A short write reports the bytes taken, which are the first ones of
    // the slices in order, as a vectored write's would be.
    let written = io.poll_write(cx, &joined);
    JOINED.set(joined);
    written
}

/// A stream whose vectored writes go through [`poll_write_vectored`], each
/// write held back one turn by a [`Defer`].
pub(crate) struct Coalesce<S> {
    pub(crate) io: S,
    defer: Defer,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(io: S) -> Self {
        Coalesce {
            io,
            defer: Defer::default(),
        }
    }
}

/// Holds a write back until the tasks already runnable have had their turn.
///
/// One poll of the sockets makes many connections ready at once. Were each
/// to write as soon as it has read, the writes would be spread out between
/// the reads, and a member or client woken by one write would often go back
/// to sleep before the next reached it: every write paying for a wake-up
/// of the process at the other end. A write that yields first lets all the
/// reads run, then the writes leave together, and the other end wakes once
/// for the lot (HAProxy's loop has the same phases: receive everything,
/// then send everything). The yield puts the task at the back of the run
/// queue; it costs one more poll of the task per write.
#[derive(Debug, Default)]
pub(crate) struct Defer {
    yielded: bool,
}

impl Defer {
    /// `Pending` (with the task woken again) on a first call, `Ready` on the
    /// next: call it before each write.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::take(&mut self.yielded) {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.defer.poll(cx));
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.defer.poll(cx));
        poll_write_vectored(Pin::new(&mut this.io), cx, bufs)
    }

    /// Vectored: the caller hands over its pieces rather than copying
    /// them into a buffer of its own first.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records each write call: how it was made and what it carried.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, Vec<u8>)>,
        /// At most this many bytes taken per call.
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.calls.push(("write", buf[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.limit);
            self.calls.push(("writev", all[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn write(limit: usize, pieces: &[&[u8]]) -> (usize, Vec<(&'static str, Vec<u8>)>) {
        let mut w = Coalesce::new(Recorder {
            limit,
            ..Default::default()
        });
        let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let n = w.write_vectored(&slices).await.unwrap();
        (n, w.io.calls)
    }

    #[tokio::test]
    async fn small_pieces_leave_in_one_plain_write() {
        let (n, calls) = write(usize::MAX, &[b"head\r\n\r\n", b"", b"body"]).await;
        assert_eq!(n, 12);
        assert_eq!(calls, vec![("write", b"head\r\n\r\nbody".to_vec())]);
    }

    #[tokio::test]
    async fn one_piece_is_written_plainly_and_large_ones_vectored() {
        let (n, calls) = write(usize::MAX, &[b"", b"only"]).await;
        assert_eq!((n, calls), (4, vec![("write", b"only".to_vec())]));
        let big = vec![7u8; MAX_COPY];
        let (n, calls) = write(usize::MAX, &[b"head", &big]).await;
        assert_eq!(n, MAX_COPY + 4);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "writev");
    }

    #[tokio::test]
    async fn a_short_write_reports_the_leading_bytes_taken() {
        let (n, calls) = write(6, &[b"head", b"body"]).await;
        assert_eq!(n, 6);
        assert_eq!(calls, vec![("write", b"headbo".to_vec())]);
    }

    /// A writer that joins its own pieces through the same buffer, as a TLS
    /// stream over a coalescing stream does.
    struct Nested(Recorder);

    impl AsyncWrite for Nested {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let (head, rest) = buf.split_at(buf.len() / 2);
            let pieces = [IoSlice::new(head), IoSlice::new(rest)];
            poll_write_vectored(Pin::new(&mut self.0), cx, &pieces)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_nested_joining_write_does_not_panic() {
        let mut w = Coalesce::new(Nested(Recorder {
            limit: usize::MAX,
            ..Default::default()
        }));
        let n = w
            .write_vectored(&[IoSlice::new(b"outer "), IoSlice::new(b"pieces")])
            .await
            .unwrap();
        assert_eq!(n, 12);
        assert_eq!(w.io.0.calls, vec![("write", b"outer pieces".to_vec())]);
    }

    #[test]
    fn a_deferred_write_wakes_its_task_and_goes_ahead_next_time() {
        let waker = std::sync::Arc::new(Wakes::default());
        let waker_ref = std::task::Waker::from(waker.clone());
        let mut cx = Context::from_waker(&waker_ref);
        let mut defer = Defer::default();
        assert!(defer.poll(&mut cx).is_pending());
        assert_eq!(waker.count(), 1, "a yield without a wake would hang");
        assert!(defer.poll(&mut cx).is_ready());
        assert!(defer.poll(&mut cx).is_pending(), "each write yields once");
        assert_eq!(waker.count(), 2);
    }

    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
