//! Durable Raft storage in the data directory.
//!
//! - The log, the vote and the committed pointer live in a redb database
//!   (`raft.redb`); every write transaction is committed with fsync before
//!   openraft is told the entries are durable.
//! - The state machine lives in memory and is persisted through snapshots
//!   (`snapshot.json`, the state as base64: written to a temporary file of
//!   its own, fsynced, renamed, the directory fsynced; one write at a time,
//!   never an older snapshot over a newer one). On restart it is rebuilt
//!   from the snapshot, and openraft re-applies the committed entries after
//!   it (we persist `committed` for that).

use std::fmt::Debug;
use std::io::{self, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use keel_model::ClusterState;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::{Applied, NodeId, NodeInfo, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_error(e: impl std::error::Error + 'static) -> io::Error {
    io::Error::other(e.to_string())
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&io_error(e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&io_error(e)).into()
}

/// The Raft log and vote, in redb. Cloning shares the database. Every
/// transaction holds the lock shared; rewriting the file
/// ([`LogStore::rewrite`]) holds it alone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<std::sync::RwLock<Database>>,
}

impl LogStore {
    /// Open (or create) the log database in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let db = Database::create(dir.join("raft.redb")).map_err(io_error)?;
        let txn = db.begin_write().map_err(io_error)?;
        txn.open_table(LOG).map_err(io_error)?;
        txn.open_table(META).map_err(io_error)?;
        txn.commit().map_err(io_error)?;
        Ok(LogStore {
            db: Arc::new(std::sync::RwLock::new(db)),
        })
    }

    /// Run blocking database work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let db = db.read().unwrap_or_else(PoisonError::into_inner);
            work(&db)
        })
        .await
        .map_err(write_err)?
    }

    /// A handle that does not keep the database open: the Raft that owns
    /// the store does, and a node restarted in the same process opens it
    /// again once that Raft has shut down.
    pub fn downgrade(&self) -> LogStoreRef {
        LogStoreRef(Arc::downgrade(&self.db))
    }

    /// Rewrite the database file with only what it holds now: redb reuses
    /// freed pages but does not clear them, so the bytes of purged entries
    /// stay in the file until this (or later writes) replace them.
    pub async fn rewrite(&self) -> io::Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = db.write().unwrap_or_else(PoisonError::into_inner);
            while db.compact().map_err(io_error)? {}
            Ok(())
        })
        .await
        .map_err(io_error)?
    }

    async fn read_meta<T: for<'de> Deserialize<'de> + Send + 'static>(
        &self,
        key: &'static str,
    ) -> StorageResult<Option<T>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(META).map_err(read_err)?;
            match table.get(key).map_err(read_err)? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(read_err)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(META)
                .map_err(write_err)?
                .insert(key, bytes.as_slice())
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}

/// A [`LogStore`] that does not keep its database open ([`LogStore::downgrade`]).
#[derive(Clone)]
pub struct LogStoreRef(std::sync::Weak<std::sync::RwLock<Database>>);

impl LogStoreRef {
    /// The store, while its database is open.
    pub fn upgrade(&self) -> Option<LogStore> {
        self.0.upgrade().map(|db| LogStore { db })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for row in table.range::<u64>((start, end)).map_err(read_err)? {
                let (_, v) = row.map_err(read_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(PURGED).await?.flatten();
        let last = self
            .blocking(|db| {
                let txn = db.begin_read().map_err(read_err)?;
                let table = txn.open_table(LOG).map_err(read_err)?;
                let last = match table.last().map_err(read_err)? {
                    Some((_, v)) => {
                        let entry: Entry<TypeConfig> =
                            serde_json::from_slice(v.value()).map_err(read_err)?;
                        Some(entry.log_id)
                    }
                    None => None,
                };
                Ok(last)
            })
            .await?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.read_meta(COMMITTED).await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((
                entry.log_id.index,
                serde_json::to_vec(&entry).map_err(write_err)?,
            ));
        }
        let result = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(write_err)?;
                {
                    let mut table = txn.open_table(LOG).map_err(write_err)?;
                    for (index, bytes) in &rows {
                        table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                    }
                }
                txn.commit().map_err(write_err)
            })
            .await;
        // The commit above is durable (redb fsyncs on commit), so the entries
        // are on disk by the time openraft hears about it.
        callback.log_io_completed(result.clone().map_err(|e| io::Error::other(e.to_string())));
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in::<u64, _>(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let purged = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(META)
                .map_err(write_err)?
                .insert(PURGED, purged.as_slice())
                .map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in::<u64, _>(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}

/// The snapshots this node wrote, for metrics.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Size of the snapshot file last written (built here or installed from
    /// the leader), in bytes.
    pub bytes: AtomicU64,
    /// How long building and writing the last one built here took, in
    /// microseconds.
    pub build_micros: AtomicU64,
    /// Snapshots built here since the node started.
    pub built: AtomicU64,
}

/// A snapshot as stored on disk and sent to lagging nodes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    /// The serialised [`ClusterState`] (base64 in the file).
    #[serde(with = "crate::b64")]
    data: Vec<u8>,
}

/// Temporary snapshot files of this process, each named once.
static TEMPORARY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Machine {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    state: Arc<ClusterState>,
    snapshot_count: u64,
}

/// The state machine: [`ClusterState`] in memory, published on a `watch`
/// after every applied batch, persisted through snapshots.
#[derive(Clone)]
pub struct StateMachineStore {
    machine: Arc<Mutex<Machine>>,
    snapshot_path: PathBuf,
    applied: Arc<watch::Sender<Applied>>,
    /// The log id of the snapshot in the file. Held while a snapshot is
    /// written: openraft builds snapshots on a task of its own while
    /// installs run on the state machine's, so writes take turns, and one
    /// never replaces a newer snapshot with an older one.
    on_disk: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    stats: Arc<SnapshotStats>,
}

impl StateMachineStore {
    /// Open the state machine, restoring it from the snapshot in `dir` if
    /// there is one.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let snapshot_path = dir.join("snapshot.json");
        // A crash mid-write leaves a temporary file: never read, removed.
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snapshot.json.") && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut machine = Machine {
            last_applied: None,
            membership: StoredMembership::default(),
            state: Arc::new(ClusterState::default()),
            snapshot_count: 0,
        };
        match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(io_error)?;
                machine.state = Arc::new(serde_json::from_slice(&stored.data).map_err(io_error)?);
                machine.last_applied = stored.meta.last_log_id;
                machine.membership = stored.meta.last_membership;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let applied = Applied {
            index: machine.last_applied.map_or(0, |l| l.index),
            state: machine.state.clone(),
        };
        let stats = SnapshotStats::default();
        if let Ok(meta) = std::fs::metadata(&snapshot_path) {
            stats.bytes.store(meta.len(), Ordering::Relaxed);
        }
        Ok(StateMachineStore {
            stats: Arc::new(stats),
            on_disk: Arc::new(std::sync::Mutex::new(machine.last_applied)),
            machine: Arc::new(Mutex::new(machine)),
            snapshot_path,
            applied: Arc::new(watch::Sender::new(applied)),
        })
    }

    /// A receiver of every applied state.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// What the snapshots this node wrote cost.
    pub fn stats(&self) -> Arc<SnapshotStats> {
        self.stats.clone()
    }

    /// Writes `snapshot` to the file (a temporary file of its own, fsynced,
    /// renamed, the directory fsynced), unless the file already holds a
    /// newer one. A failed attempt is tried twice more before it is an
    /// error (which stops Raft: it must not purge logs a snapshot on disk
    /// does not cover).
    fn write_snapshot(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        let mut on_disk = self.on_disk.lock().unwrap_or_else(PoisonError::into_inner);
        if snapshot.meta.last_log_id < *on_disk {
            tracing::debug!(snapshot = %snapshot.meta.snapshot_id, "a newer snapshot is already on disk");
            return Ok(());
        }
        let bytes = serde_json::to_vec(snapshot).map_err(io_error)?;
        let mut tries = 0;
        loop {
            match self.write_file(&bytes) {
                Ok(()) => {
                    self.stats
                        .bytes
                        .store(bytes.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) if tries < 2 => {
                    tries += 1;
                    tracing::warn!(error = %e, "writing the snapshot failed; trying again");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        *on_disk = snapshot.meta.last_log_id;
        Ok(())
    }

    fn write_file(&self, bytes: &[u8]) -> io::Result<()> {
        let n = TEMPORARY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .snapshot_path
            .with_extension(format!("json.{}-{n}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.snapshot_path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        if let Some(dir) = self.snapshot_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn read_snapshot(&self) -> io::Result<Option<StoredSnapshot>> {
        match std::fs::read(&self.snapshot_path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(io_error)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let stored = {
            let mut m = self.machine.lock().await;
            m.snapshot_count += 1;
            let snapshot_id = match m.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, m.snapshot_count),
                None => format!("empty-{}", m.snapshot_count),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: m.last_applied,
                    last_membership: m.membership.clone(),
                    snapshot_id,
                },
                data: serde_json::to_vec(&*m.state)
                    .map_err(|e| StorageIOError::write_state_machine(&io_error(e)))?,
            }
        };
        let this = self.clone();
        let stored =
            tokio::task::spawn_blocking(move || this.write_snapshot(&stored).map(|()| stored))
                .await
                .map_err(|e| StorageIOError::write_snapshot(None, &io_error(e)))?
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.build_micros.store(took, Ordering::Relaxed);
        self.stats.built.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>)> {
        let m = self.machine.lock().await;
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<crate::Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut m = self.machine.lock().await;
        let mut state = (*m.state).clone();
        let mut outcomes = Vec::new();
        for entry in entries {
            m.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(command) => {
                    let outcome = state.apply(&command);
                    match &outcome {
                        Ok(()) => tracing::debug!(index = entry.log_id.index, %command, "applied"),
                        Err(why) => {
                            tracing::info!(index = entry.log_id.index, %command, %why, "refused")
                        }
                    }
                    outcome
                }
                EntryPayload::Membership(membership) => {
                    m.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(())
                }
            };
            outcomes.push(outcome);
        }
        m.state = Arc::new(state);
        self.applied.send_replace(Applied {
            index: m.last_applied.map_or(0, |l| l.index),
            state: m.state.clone(),
        });
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_error(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_snapshot(&stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_error(e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut m = self.machine.lock().await;
        m.last_applied = meta.last_log_id;
        m.membership = meta.last_membership.clone();
        m.state = Arc::new(state);
        self.applied.send_replace(Applied {
            index: m.last_applied.map_or(0, |l| l.index),
            state: m.state.clone(),
        });
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let this = self.clone();
        let stored = tokio::task::spawn_blocking(move || this.read_snapshot())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &io_error(e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    fn meta(index: u64) -> SnapshotMeta<NodeId, NodeInfo> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("installed-{index}"),
        }
    }

    /// openraft builds snapshots on a task of its own while installs run on
    /// the state machine's: both at once, round after round, leave the
    /// newest snapshot whole on disk and no temporary file behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn snapshots_built_and_installed_at_once_leave_the_newest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateMachineStore::open(dir.path()).unwrap();
        let mut state = ClusterState::default();
        for round in 1..=200u64 {
            state.retired_nodes.insert(round);
            let data = serde_json::to_vec(&state).unwrap();
            let (mut builder, mut installer) = (store.clone(), store.clone());
            let (built, installed) = tokio::join!(
                tokio::spawn(async move { builder.build_snapshot().await.map(|_| ()) }),
                tokio::spawn(async move {
                    installer
                        .install_snapshot(&meta(round * 2), Box::new(Cursor::new(data)))
                        .await
                }),
            );
            built.unwrap().unwrap();
            installed.unwrap().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        drop(store);
        let reopened = StateMachineStore::open(dir.path()).unwrap();
        let applied = reopened.subscribe().borrow().clone();
        assert_eq!(applied.index, 400);
        assert_eq!(applied.state.retired_nodes.len(), 200);
        // On disk, the state is base64 text, not an array of numbers.
        let file = std::fs::read_to_string(dir.path().join("snapshot.json")).unwrap();
        assert!(
            !file.contains("\"data\":["),
            "{}",
            &file[..200.min(file.len())]
        );
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateMachineStore::open(dir.path()).unwrap();
        let data = serde_json::to_vec(&ClusterState::default()).unwrap();
        store
            .install_snapshot(&meta(10), Box::new(Cursor::new(data.clone())))
            .await
            .unwrap();
        let stored = StoredSnapshot {
            meta: meta(5),
            data,
        };
        store.write_snapshot(&stored).unwrap();
        let on_disk = store.read_snapshot().unwrap().unwrap();
        assert_eq!(on_disk.meta.snapshot_id, "installed-10");
    }
}

/// What a stopped node's storage holds as committed: `keel recover` makes
/// a new one-node cluster from it.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The index of the last committed entry the node knows.
    pub index: u64,
    /// The state after it.
    pub state: ClusterState,
    /// The voters of the last membership the node knows, with their
    /// addresses.
    pub voters: Vec<(NodeId, NodeInfo)>,
}

/// Reads the committed state from the storage in `dir`: the snapshot, then
/// every committed entry after it, applied as the running node would.
/// Opening fails while a node runs on `dir` (the log database is locked).
/// Entries after the commit index (possibly never committed) are left out.
pub async fn committed(dir: &Path) -> io::Result<Committed> {
    let mut log = LogStore::open(dir)?;
    let mut machine = StateMachineStore::open(dir)?;
    let committed = log.read_committed().await.map_err(io_error)?;
    let (applied, _) = machine.applied_state().await.map_err(io_error)?;
    let from = applied.map_or(0, |l| l.index + 1);
    if let Some(committed) = committed {
        if committed.index >= from {
            let entries = log
                .try_get_log_entries(from..=committed.index)
                .await
                .map_err(io_error)?;
            machine.apply(entries).await.map_err(io_error)?;
        }
    }
    let (last, membership) = machine.applied_state().await.map_err(io_error)?;
    let voters = membership
        .membership()
        .voter_ids()
        .map(|id| {
            let info = membership
                .membership()
                .get_node(&id)
                .cloned()
                .unwrap_or_default();
            (id, info)
        })
        .collect();
    let state = (*machine.subscribe().borrow().state).clone();
    Ok(Committed {
        index: last.map_or(0, |l| l.index),
        state,
        voters,
    })
}
