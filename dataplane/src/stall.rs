//! Inactivity limits for the phases where Keel waits on one side: a
//! client's request body that pauses, a client that stops reading its
//! response, a member whose response body pauses.
//!
//! A [`Stall`] costs nothing while bytes flow: its timer is armed only
//! when a poll finds nothing to do (one clock read and a timer reset), and
//! progress only clears a flag. So the common case, where a body or a write
//! is ready at once, never touches the timer wheel.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long one side may go without progress while Keel waits on it.
pub(crate) struct Stall {
    timer: Option<Pin<Box<Sleep>>>,
    /// The limit in milliseconds (rounded up; at most 49 days): 4 bytes
    /// where a `Duration` takes 16, in what every open connection holds.
    limit_ms: u32,
    /// The timer runs for the wait under way.
    armed: bool,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Stall {
        let ms = limit.as_micros().div_ceil(1000);
        Stall {
            timer: None,
            limit_ms: u32::try_from(ms).unwrap_or(u32::MAX),
            armed: false,
        }
    }

    /// Something moved: the next wait starts a new count.
    pub(crate) fn progress(&mut self) {
        self.armed = false;
    }

    /// Called when a poll found nothing: whether the wait has lasted the
    /// whole limit. Until then the task is woken when it would.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let at = Instant::now() + self.limit();
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    pub(crate) fn limit(&self) -> Duration {
        Duration::from_millis(self.limit_ms.into())
    }
}

pin_project_lite::pin_project! {
    /// A deadline that moves often and mostly later (a keep-alive
    /// connection's next head, a member's next response): moving it later
    /// only notes the instant, and the timer, firing at the old one, waits
    /// again for the rest. Only moving it earlier resets the timer, so a
    /// busy connection resets it about once per limit, not several times
    /// per request (each reset is work on the timer wheel and four atomic
    /// read-modify-writes). Polled again with the waker it holds, it asks
    /// the timer whether it fired (a load) instead of polling it (which
    /// registers the waker again: more read-modify-writes).
    pub(crate) struct Deadline {
        #[pin]
        timer: Sleep,
        at: Instant,
        waker: Option<Waker>,
    }
}

impl Deadline {
    pub(crate) fn after(limit: Duration) -> Deadline {
        let at = Instant::now() + limit;
        Deadline {
            timer: tokio::time::sleep_until(at),
            at,
            waker: None,
        }
    }

    pub(crate) fn set(self: Pin<&mut Self>, at: Instant) {
        let this = self.project();
        if at < this.timer.deadline() {
            this.timer.reset(at);
        }
        *this.at = at;
    }

    /// Ready once the deadline has passed; until then the task is woken
    /// when it might have.
    pub(crate) fn poll_passed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let held = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if held && !this.timer.is_elapsed() {
                return Poll::Pending;
            }
            if !held {
                *this.waker = Some(cx.waker().clone());
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.timer.deadline() >= *this.at || Instant::now() >= *this.at {
                return Poll::Ready(());
            }
            let at = *this.at;
            this.timer.as_mut().reset(at);
            // Registered afresh with the timer at its new instant.
            *this.waker = None;
        }
    }
}

/// A client stream whose writes fail with `TimedOut` once the client has
/// taken nothing for the limit: a response it stopped reading is abandoned
/// and the connection closes, on every HTTP path (Keel's loop, hyper's
/// HTTP/1 and HTTP/2 servers). Reads pass through: how long a client may
/// stay silent depends on what Keel waits for (a head, a body, nothing).
pub(crate) struct WriteStall<IO> {
    io: IO,
    stall: Stall,
}

impl<IO> WriteStall<IO> {
    pub(crate) fn new(io: IO, limit: Duration) -> Self {
        WriteStall {
            io,
            stall: Stall::new(limit),
        }
    }

    fn check<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending if self.stall.poll_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client took nothing for {:?}", self.stall.limit()),
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.stall.progress();
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteStall<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStall<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.check(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.check(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.check(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn passes(deadline: Pin<&mut Deadline>) -> Instant {
        let mut deadline = deadline;
        std::future::poll_fn(|cx| deadline.as_mut().poll_passed(cx)).await;
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_later_passes_at_the_new_instant() {
        let started = Instant::now();
        let mut deadline = std::pin::pin!(Deadline::after(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        deadline
            .as_mut()
            .set(Instant::now() + Duration::from_secs(10));
        let timer = deadline.timer.deadline();
        assert_eq!(timer, started + Duration::from_secs(10), "not reset");
        assert_eq!(
            passes(deadline.as_mut()).await - started,
            Duration::from_secs(14)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_earlier_passes_at_once_there() {
        let started = Instant::now();
        let mut deadline = std::pin::pin!(Deadline::after(Duration::from_secs(60)));
        deadline.as_mut().set(started + Duration::from_secs(5));
        assert_eq!(
            passes(deadline.as_mut()).await - started,
            Duration::from_secs(5)
        );
        // Passed, then moved later again: it waits for the new instant.
        deadline
            .as_mut()
            .set(Instant::now() + Duration::from_secs(3));
        assert_eq!(
            passes(deadline.as_mut()).await - started,
            Duration::from_secs(8)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_fails_the_writer_at_the_limit() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut w = WriteStall::new(near, Duration::from_secs(5));
        let started = Instant::now();
        let e = w.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            while total < 64 * 1024 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
        });
        let mut w = WriteStall::new(near, Duration::from_secs(5));
        w.write_all(&vec![0u8; 64 * 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
