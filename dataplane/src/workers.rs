//! The data plane's worker threads: one single-threaded tokio runtime per
//! thread, each with listening sockets of its own (`SO_REUSEPORT`: the
//! kernel spreads new connections over them), so a connection is accepted,
//! served and closed on one thread and never migrates. The control plane
//! (Raft, gossip, health checks, the admin API) runs on the runtime that
//! made the [`Workers`], which the data plane cannot starve.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The worker this thread is (0 on any other thread).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The most workers started in this process: how many shards state kept
/// per worker (a member's idle connections) has.
static SHARDS: AtomicUsize = AtomicUsize::new(1);

/// The worker the calling thread is: 0 to [`shards`] - 1 (0 off a worker).
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
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

/// Running worker threads; they stop when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
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
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            std::thread::Builder::new()
                .name(format!("keel-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|index| index.set(i));
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to(cpu) {
                            tracing::warn!(worker = i, cpu, error = %e, "cannot pin the worker to its CPU");
                        }
                    }
                    let _ = rt.block_on(stopped);
                    rt.shutdown_background();
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stops,
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// The number of workers by default: one per CPU this process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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
