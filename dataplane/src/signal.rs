//! A cancellation that is checked without a lock.
//!
//! `tokio_util`'s `CancellationToken::is_cancelled` takes the token's
//! mutex, and the data plane asks its listeners' and members' tokens
//! several times per request: each time a lock and an unlock on a line
//! every worker writes. A [`Signal`] is a token with a flag that is set
//! before the token is cancelled. Asking reads the flag (and its
//! parents'); only waiting takes the token's lock, and [`Until`] waits
//! again only when it is polled with another waker.

use std::borrow::Borrow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// Fired once, by [`Signal::fire`] on it or on one of its parents.
#[derive(Clone)]
pub(crate) struct Signal(Arc<Inner>);

struct Inner {
    fired: AtomicBool,
    parent: Option<Signal>,
    token: CancellationToken,
}

impl Signal {
    pub(crate) fn new() -> Signal {
        Signal(Arc::new(Inner {
            fired: AtomicBool::new(false),
            parent: None,
            token: CancellationToken::new(),
        }))
    }

    /// A signal that fires with this one, or on its own.
    pub(crate) fn child(&self) -> Signal {
        Signal(Arc::new(Inner {
            fired: AtomicBool::new(false),
            parent: Some(self.clone()),
            token: self.0.token.child_token(),
        }))
    }

    pub(crate) fn fire(&self) {
        // The flag first: whoever a cancelled token wakes sees it.
        self.0.fired.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    /// Whether it fired: loads only.
    pub(crate) fn fired(&self) -> bool {
        let mut signal = self;
        loop {
            if signal.0.fired.load(Ordering::Acquire) {
                return true;
            }
            match &signal.0.parent {
                Some(parent) => signal = parent,
                None => return false,
            }
        }
    }

    /// Ready once it fired.
    pub(crate) fn until(&self) -> Until<&Signal, WaitForCancellationFuture<'_>> {
        Until {
            signal: self,
            wait: self.0.token.cancelled(),
            registered: None,
        }
    }

    /// [`Signal::until`], owning the signal.
    pub(crate) fn until_owned(self) -> Until<Signal, WaitForCancellationFutureOwned> {
        let wait = self.0.token.clone().cancelled_owned();
        Until {
            signal: self,
            wait,
            registered: None,
        }
    }

    /// The token, for a wait of its own.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.0.token
    }
}

pin_project_lite::pin_project! {
    /// [`Signal::until`]: polls the token's wait (a lock) only when it has
    /// to take a waker it does not hold yet.
    pub(crate) struct Until<S, W> {
        signal: S,
        #[pin]
        wait: W,
        registered: Option<Waker>,
    }
}

impl<S: Borrow<Signal>, W: Future<Output = ()>> Future for Until<S, W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if Borrow::<Signal>::borrow(this.signal).fired() {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        *this.registered = Some(cx.waker().clone());
        this.wait.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_child_fires_with_its_parent_and_alone() {
        let cut = Signal::new();
        let closing = cut.child();
        let worker = closing.child();
        assert!(!worker.fired());
        closing.fire();
        assert!(worker.fired() && closing.fired() && !cut.fired());
        let other = cut.child();
        cut.fire();
        assert!(other.fired());
        assert!(cut.child().fired(), "a child of a fired signal is fired");
    }

    #[tokio::test]
    async fn a_wait_wakes_when_the_signal_or_a_parent_fires() {
        let cut = Signal::new();
        let closing = cut.child().child();
        let waiting = {
            let closing = closing.clone();
            tokio::spawn(async move { closing.until().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        cut.fire();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("joined");
        // Already fired: ready at once.
        closing.until().await;
        closing.until_owned().await;
    }
}
