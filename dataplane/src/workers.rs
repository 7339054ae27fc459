//! The data plane's worker threads: one single-threaded tokio runtime per
//! thread, each with listening sockets of its own (`SO_REUSEPORT`: the
//! kernel spreads new connections over them). The kernel spreads them by
//! a hash of their addresses, not by load, so a worker that accepts a
//! connection while it serves more than another hands it over (see
//! [`place`]); from then on a connection is served and closed on one
//! thread and never migrates. The control plane
//! (Raft, gossip, health checks, the admin API) runs on the runtime that
//! made the [`Workers`], which the data plane cannot starve.

use std::cell::{Cell, OnceCell};
use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The worker this thread is (0 on any other thread).
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// The workers this thread is one of (unset on any other thread).
    static SET: OnceCell<Arc<Set>> = const { OnceCell::new() };
    /// Which other worker this one offers its next connection to.
    static TURN: Cell<usize> = const { Cell::new(0) };
}

/// What the workers of one [`Workers`] share to balance connections.
struct Set {
    handles: Vec<Handle>,
    /// How many connections each worker serves, or is being handed. Each
    /// changes once when a connection is accepted and once when it closes,
    /// never per request.
    open: Box<[Padded<AtomicUsize>]>,
}

/// The most workers started in this process: how many shards state kept
/// per worker (a member's idle connections) has.
static SHARDS: AtomicUsize = AtomicUsize::new(1);

/// The worker the calling thread is: 0 to [`shards`] - 1 (0 off a worker).
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The calling worker's own entry of state kept per worker (`shards` has
/// one entry per worker, or fewer: then workers share entries in turn).
pub(crate) fn mine<T>(shards: &[T]) -> &T {
    &shards[shard(shards.len())]
}

/// The calling worker's index into per-worker state of `len` entries.
pub(crate) fn shard(len: usize) -> usize {
    current() % len
}

/// How many shards per-worker state has: every worker's index is below it.
pub(crate) fn shards() -> usize {
    SHARDS.load(Relaxed)
}

/// A value on cache lines of its own, so workers writing neighbours do not
/// slow each other down (128 bytes: the pair of lines x86 prefetches
/// together).
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A worker's own reference to something every worker's requests use (a
/// plan's listener, a member of a pool): [`Refs`] holds one per worker,
/// each an allocation on lines of its own, so taking and dropping one
/// writes a count that only that worker writes, where cloning the shared
/// `Arc` itself would write a line every worker's requests write.
pub struct Ref<T>(Arc<Padded<Arc<T>>>);

impl<T> Ref<T> {
    /// The shared value's own `Arc`.
    pub fn shared(&self) -> &Arc<T> {
        &self.0 .0
    }

    /// A reference of its own to `value`, for where no [`Refs`] is at hand
    /// (rare paths: it allocates).
    pub fn alone(value: Arc<T>) -> Self {
        Ref(Arc::new(Padded(value)))
    }
}

impl<T> Clone for Ref<T> {
    fn clone(&self) -> Self {
        Ref(self.0.clone())
    }
}

impl<T> Deref for Ref<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.shared()
    }
}

/// One [`Ref`] per worker to one value, made with it; it reads as the
/// value itself.
pub struct Refs<T>(Box<[Ref<T>]>);

impl<T> Refs<T> {
    pub fn new(value: &Arc<T>) -> Self {
        Refs((0..shards()).map(|_| Ref::alone(value.clone())).collect())
    }

    /// The calling worker's reference.
    pub fn mine(&self) -> &Ref<T> {
        mine(&self.0)
    }

    /// The value's own `Arc`.
    pub fn shared(&self) -> &Arc<T> {
        self.mine().shared()
    }
}

impl<T> Deref for Refs<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.shared()
    }
}

/// Where a connection accepted on this thread is served: here, unless
/// the next other worker in turn serves fewer connections by more than
/// [`MARGIN`] (two choices, this worker and one other: the balance of
/// choosing the least loaded of all at the cost of reading two counters).
/// The connection counts where it goes until the returned [`Open`] drops;
/// `Some` is the worker to hand it to.
pub(crate) fn place() -> (Open, Option<Handle>) {
    SET.with(|set| {
        let Some(set) = set.get() else {
            return (Open(None), None);
        };
        let me = current();
        let count = set.handles.len();
        let mut to = me;
        if count > 1 {
            let turn = TURN.get();
            TURN.set((turn + 1) % (count - 1));
            let other = (me + 1 + turn) % count;
            if set.open[me].0.load(Relaxed) > set.open[other].0.load(Relaxed) + MARGIN {
                to = other;
            }
        }
        let handoff = (to != me).then(|| set.handles[to].clone());
        // Counted only where it can be let go (not past four billion workers).
        let open = u32::try_from(to).ok();
        if open.is_some() {
            set.open[to].0.fetch_add(1, Relaxed);
        }
        (Open(open), handoff)
    })
}

/// How many more connections than another worker one serves before it
/// hands a new one over: moving one costs a wake-up of the other thread
/// and taking the socket out of one event loop and into another, worth it
/// only for a lasting difference.
const MARGIN: usize = 1;

/// A connection counted in its worker's load until dropped, on that
/// worker's thread (where its task runs).
pub(crate) struct Open(Option<u32>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(worker) = self.0 {
            SET.with(|set| {
                if let Some(set) = set.get() {
                    set.open[worker as usize].0.fetch_sub(1, Relaxed);
                }
            });
        }
    }
}

/// Running worker threads; they stop when this is dropped.
pub struct Workers {
    set: Arc<Set>,
    /// Dropped to stop the threads: each runtime then ends, and the
    /// connections on it are dropped.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one); with `pin`, worker `i`
    /// runs only on the `i`-th CPU this process may use (round robin when
    /// there are more workers than CPUs).
    pub fn start(count: usize, pin: bool) -> io::Result<Workers> {
        let cpus = if pin { allowed_cpus()? } else { Vec::new() };
        SHARDS.fetch_max(count.max(1), Relaxed);
        let runtimes = (0..count.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<io::Result<Vec<_>>>()?;
        let set = Arc::new(Set {
            handles: runtimes.iter().map(|rt| rt.handle().clone()).collect(),
            open: runtimes
                .iter()
                .map(|_| Padded(AtomicUsize::new(0)))
                .collect(),
        });
        let mut stops = Vec::new();
        for (i, rt) in runtimes.into_iter().enumerate() {
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let set = set.clone();
            std::thread::Builder::new()
                .name(format!("keel-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|index| index.set(i));
                    SET.with(|cell| {
                        let _ = cell.set(set);
                    });
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to(cpu) {
                            tracing::warn!(worker = i, cpu, error = %e, "cannot pin the worker to its CPU");
                        }
                    }
                    let _ = rt.block_on(stopped);
                    rt.shutdown_background();
                })?;
        }
        Ok(Workers { set, _stop: stops })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.set.handles.len()
    }

    /// Never: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.set.handles.is_empty()
    }

    /// How many client connections each worker serves, by index.
    pub(crate) fn connections(&self) -> Vec<(usize, usize)> {
        self.set
            .open
            .iter()
            .map(|open| open.0.load(Relaxed))
            .enumerate()
            .collect()
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.set.handles
    }
}

/// The number of workers by default: one per CPU this process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Whether `count` workers pin themselves when not told: when there is
/// one for each CPU this process may run on (the default count), each
/// takes one. Left to the kernel, two busy workers are sometimes put on
/// one CPU and take turns there by the scheduler's tick (4 ms) while the
/// other CPU runs the rest: their connections wait a tick, and the p99
/// doubles (BENCHMARKS.md, "Workers on CPUs of their own"). With fewer
/// workers than CPUs (or a CPU quota smaller than the CPU set) the kernel
/// has idle CPUs to move them to, and places them.
pub fn pinned_by_default(count: usize) -> bool {
    allowed_cpus().is_ok_and(|cpus| cpus.len() == count)
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect())
}

fn pin_to(cpu: usize) -> io::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Each worker takes its own reference: the value's count stays as
    /// it was while requests hold theirs.
    #[tokio::test]
    async fn each_worker_holds_its_own_reference() {
        let workers = Workers::start(2, false).unwrap();
        let value = Arc::new(7);
        let refs = Arc::new(Refs::new(&value));
        let count = Arc::strong_count(&value);
        let mut held = Vec::new();
        for worker in workers.handles() {
            let refs = refs.clone();
            held.push(
                worker
                    .spawn(async move { refs.mine().clone() })
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(Arc::strong_count(&value), count);
        assert!(!Arc::ptr_eq(&held[0].0, &held[1].0));
        assert!(held
            .iter()
            .all(|r| **r == 7 && Arc::ptr_eq(r.shared(), &value)));
    }

    /// The kernel's hash can send every connection to one worker's
    /// socket: the workers still end up serving as many each.
    #[tokio::test]
    async fn connections_accepted_on_one_worker_are_spread_over_all() {
        for count in [2, 4] {
            let workers = Workers::start(count, false).unwrap();
            let accepted = 100 * count;
            let placed = workers.handles()[0]
                .spawn(async move { (0..accepted).map(|_| place()).collect::<Vec<_>>() })
                .await
                .unwrap();
            let handed = placed.iter().filter(|(_, to)| to.is_some()).count();
            let open: Vec<usize> = workers.connections().into_iter().map(|(_, n)| n).collect();
            assert_eq!(open.iter().sum::<usize>(), accepted, "{open:?}");
            let (least, most) = (open.iter().min().unwrap(), open.iter().max().unwrap());
            assert!(most - least <= MARGIN + 1, "{count} workers: {open:?}");
            assert_eq!(handed, accepted - open[0], "{count} workers: {open:?}");
            // Each closes on its worker's thread.
            workers.handles()[0]
                .spawn(async move { drop(placed) })
                .await
                .unwrap();
            assert!(workers.connections().iter().all(|(_, n)| *n == 0));
        }
    }

    /// Pinned, each worker runs on the CPU of its turn and no other; the
    /// default pins only a worker per CPU.
    #[tokio::test]
    async fn pinned_workers_each_run_on_a_cpu_of_their_own() {
        let cpus = allowed_cpus().unwrap();
        let workers = Workers::start(cpus.len(), true).unwrap();
        for (i, worker) in workers.handles().iter().enumerate() {
            // The CPUs the calling thread (here the worker's) may use.
            let on = worker
                .spawn(async { allowed_cpus() })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(on, [cpus[i]], "worker {i}");
        }
        assert!(pinned_by_default(cpus.len()));
        assert!(!pinned_by_default(cpus.len() + 1));
        assert!(!pinned_by_default(cpus.len() - 1));
    }

    #[test]
    fn off_a_worker_nothing_is_counted_or_moved() {
        let (open, to) = place();
        assert!(open.0.is_none() && to.is_none());
    }
}
