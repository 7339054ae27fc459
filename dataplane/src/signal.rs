//! A cancellation that is checked without a lock, and waited on with
//! little room.
//!
//! `tokio_util`'s `CancellationToken::is_cancelled` takes the token's
//! mutex, and the data plane asks its listeners' and members' tokens
//! several times per request: each time a lock and an unlock on a line
//! every worker writes; and a wait on one is 72 bytes, which every open
//! connection would carry. A [`Signal`] is a flag (checked with loads, its
//! own and its parents') and a list of the wakers of those waiting on it:
//! a wait ([`Wait`]) holds its signal and its place in that list, and
//! takes the signal's lock only to put a waker there or take it out.

use std::borrow::Borrow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use crate::member::lock;

/// Fired once, by [`Signal::fire`] on it or on one of its parents.
#[derive(Clone)]
pub(crate) struct Signal(Arc<Inner>);

struct Inner {
    fired: AtomicBool,
    parent: Option<Signal>,
    waiting: Mutex<Waiting>,
}

/// The places a signal's list keeps room for once no wait holds one: a
/// peak of waits (100,000 idle connections on a listener) is not held for
/// the listener's life once they have gone.
const KEPT_PLACES: usize = 64;

/// Who to wake when a signal fires.
#[derive(Default)]
struct Waiting {
    /// By the place each [`Wait`] holds; `None` where it was woken (or
    /// has not polled yet), and at a free place.
    wakers: Vec<Option<Waker>>,
    /// Places no watch holds.
    free: Vec<u32>,
    /// The signals [`Signal::child`] made: woken with this one.
    children: Vec<Weak<Inner>>,
}

impl Signal {
    pub(crate) fn new() -> Signal {
        Signal(Arc::new(Inner {
            fired: AtomicBool::new(false),
            parent: None,
            waiting: Mutex::default(),
        }))
    }

    /// A signal that fires with this one, or on its own.
    pub(crate) fn child(&self) -> Signal {
        let child = Arc::new(Inner {
            fired: AtomicBool::new(false),
            parent: Some(self.clone()),
            waiting: Mutex::default(),
        });
        let mut waiting = lock(&self.0.waiting);
        waiting.children.retain(|c| c.strong_count() > 0);
        waiting.children.push(Arc::downgrade(&child));
        Signal(child)
    }

    pub(crate) fn fire(&self) {
        // The flag first: whoever is woken, and whoever registers after the
        // wakers were taken, sees it (see [`Wait::fired`]).
        self.0.fired.store(true, Ordering::Release);
        self.0.wake();
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
    pub(crate) fn until(&self) -> Until<&Signal> {
        Until {
            wait: Wait::new(self),
            registered: None,
        }
    }

    /// [`Signal::until`], owning the signal.
    pub(crate) fn until_owned(self) -> Until<Signal> {
        Until {
            wait: Wait::new(self),
            registered: None,
        }
    }
}

impl Inner {
    /// Wakes those waiting on this signal and on its children.
    fn wake(&self) {
        let (wakers, children) = {
            let mut waiting = lock(&self.waiting);
            let wakers: Vec<Waker> = waiting.wakers.iter_mut().filter_map(Option::take).collect();
            let children: Vec<Arc<Inner>> =
                waiting.children.iter().filter_map(Weak::upgrade).collect();
            (wakers, children)
        };
        wakers.into_iter().for_each(Waker::wake);
        for child in children {
            child.wake();
        }
    }
}

/// A wait on a signal, for a future that knows when the waker it is polled
/// with changed (a task's stays the same): 16 bytes. Its place among the
/// signal's wakers is taken when it first registers and given back when
/// it is dropped.
pub(crate) struct Wait<S: Borrow<Signal>> {
    signal: S,
    place: Option<u32>,
}

impl<S: Borrow<Signal>> Wait<S> {
    pub(crate) fn new(signal: S) -> Wait<S> {
        Wait {
            signal,
            place: None,
        }
    }

    pub(crate) fn signal(&self) -> &Signal {
        self.signal.borrow()
    }

    /// Whether the signal fired. The first time, and with `fresh` (`cx`'s
    /// waker is not the one given last), the waker is left with the
    /// signal, to be woken when it fires.
    pub(crate) fn fired(&mut self, cx: &Context<'_>, fresh: bool) -> bool {
        let signal = self.signal.borrow();
        if signal.fired() {
            return true;
        }
        if !fresh && self.place.is_some() {
            return false;
        }
        {
            let mut waiting = lock(&signal.0.waiting);
            let waker = Some(cx.waker().clone());
            match self.place {
                Some(place) => waiting.wakers[place as usize] = waker,
                None => match waiting.free.pop() {
                    Some(place) => {
                        waiting.wakers[place as usize] = waker;
                        self.place = Some(place);
                    }
                    None => {
                        // Four billion waits at once on one signal: not
                        // kept, polled again by the caller's other wakes.
                        let Ok(place) = u32::try_from(waiting.wakers.len()) else {
                            return false;
                        };
                        waiting.wakers.push(waker);
                        self.place = Some(place);
                    }
                },
            }
        }
        // Fired while the waker was put there, after the wakers were
        // taken: the flag is set by then (it is set before they are taken,
        // and the lock orders the two).
        signal.fired()
    }
}

impl<S: Borrow<Signal>> Drop for Wait<S> {
    fn drop(&mut self) {
        if let Some(place) = self.place {
            let mut waiting = lock(&self.signal.borrow().0.waiting);
            waiting.wakers[place as usize] = None;
            waiting.free.push(place);
            if waiting.free.len() == waiting.wakers.len() {
                // No wait holds a place: the list starts again.
                waiting.wakers.clear();
                waiting.free.clear();
                waiting.wakers.shrink_to(KEPT_PLACES);
                waiting.free.shrink_to(KEPT_PLACES);
            }
        }
    }
}

/// [`Signal::until`]: a [`Wait`] that keeps the waker it gave, so that it
/// takes the signal's lock only when polled with another.
pub(crate) struct Until<S: Borrow<Signal>> {
    wait: Wait<S>,
    registered: Option<Waker>,
}

impl<S: Borrow<Signal>> Until<S> {
    pub(crate) fn signal(&self) -> &Signal {
        self.wait.signal()
    }
}

impl<S: Borrow<Signal> + Unpin> Future for Until<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let fresh = !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if fresh {
            this.registered = Some(cx.waker().clone());
        }
        match this.wait.fired(cx, fresh) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
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

    #[tokio::test]
    async fn a_wait_registered_as_its_signal_fires_is_woken_and_places_are_reused() {
        for _ in 0..200 {
            let closing = Signal::new().child();
            let waits: Vec<_> = (0..4)
                .map(|_| {
                    let closing = closing.clone();
                    tokio::spawn(async move { closing.until_owned().await })
                })
                .collect();
            tokio::task::yield_now().await;
            let firing = {
                let closing = closing.clone();
                std::thread::spawn(move || closing.fire())
            };
            for wait in waits {
                tokio::time::timeout(Duration::from_secs(5), wait)
                    .await
                    .expect("woken")
                    .expect("joined");
            }
            firing.join().unwrap();
        }
        // A wait that goes gives its place to the next.
        let signal = Signal::new();
        for _ in 0..3 {
            let mut wait = std::pin::pin!(signal.until());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert_eq!(lock(&signal.0.waiting).wakers.len(), 1);
        }
    }

    #[test]
    fn the_room_a_peak_of_waits_took_is_let_go_when_they_have_gone() {
        let signal = Signal::new();
        let mut cx = Context::from_waker(Waker::noop());
        let mut waits: Vec<_> = (0..10_000).map(|_| Box::pin(signal.until())).collect();
        for wait in &mut waits {
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(lock(&signal.0.waiting).wakers.len(), 10_000);
        // While one stays, its place is kept (places are not moved).
        let last = waits.pop();
        drop(waits);
        assert!(lock(&signal.0.waiting).wakers.capacity() >= 10_000);
        drop(last);
        let waiting = lock(&signal.0.waiting);
        assert!(waiting.wakers.is_empty() && waiting.free.is_empty());
        assert!(
            waiting.wakers.capacity() <= KEPT_PLACES,
            "{}",
            waiting.wakers.capacity()
        );
        assert!(waiting.free.capacity() <= KEPT_PLACES);
    }
}
