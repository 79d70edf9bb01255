//! Durable storage of a store member, under its data directory: the Raft log's entries in segment
//! files of their own (`log/`, see `logfile.rs`); the vote, the purge point and the current snapshot's
//! record in a sled database (`sled/`); the snapshot itself in a file of its own (`snapshots/`).
//!
//! Durability (DESIGN.md, "Writes are durable before they are acknowledged"): log appends are
//! group-committed by one flusher thread, which `fdatasync`s the segment files written: appends
//! arriving while a sync is running share the next one, and their callbacks are completed in order.
//! sled makes writes durable only on `flush`, and its flush uses `sync_file_range`, which survives a
//! process crash but does not force the device cache; so every durability point of what lives in sled
//! is `flush` followed by `fdatasync` of the database file. Votes are synced before `save_vote`
//! returns. The state machine lives in memory; on restart it is rebuilt from the last snapshot (synced
//! before the log is purged behind it) and the log after it.
//!
//! Snapshots are not sled values: sled keeps a large value in a blob file and, when the value is
//! replaced, deletes the old blob as soon as nothing in memory refers to it — before the record of
//! the new value is durable. A machine crash in between left the record of the old value pointing at
//! a deleted file, and the member could not start (found by the power-loss nemesis). A snapshot is
//! written to a file of its own and synced, then recorded in sled and synced; the file of the previous
//! one is deleted only after that.

// openraft's storage traits fix the error type to `StorageError` (224 bytes); the helpers here return it
// too rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

use crate::logfile::LogFiles;
use crate::state::{RevisionEvents, SnapshotImage, State};
use crate::types::{
    Command, Entry, LogId, Member, NodeId, Response, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, Vote,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    StorageIOError,
};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use tokio::sync::broadcast;

/// A change notification from the state machine to watchers on this member.
#[derive(Debug, Clone)]
pub enum HubMsg {
    /// A committed revision was applied.
    Events(Arc<RevisionEvents>),
    /// The state was replaced by a snapshot at this revision: watchers must resynchronise.
    Reset { revision: u64 },
}

/// Options of a member's storage.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// How many revisions of events are kept for watches to resume from.
    pub history_revisions: usize,
    /// NULL CONTROL for the fault-injection suite, never for production: acknowledge log appends and
    /// votes without syncing them to disk.
    pub unsafe_no_sync: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            history_revisions: 10_000,
            unsafe_no_sync: false,
        }
    }
}

/// What the storage measures about itself (a member exports them on its `/metrics`).
#[derive(Clone)]
pub struct StorageMetrics {
    /// Each durability point (the log's fdatasync; sled flush and fdatasync for the rest).
    pub sync_seconds: Histogram,
    /// Log appends one sync made durable (group commit).
    pub sync_batch: Histogram,
    pub snapshot_build_seconds: Histogram,
    /// Size of the last snapshot built or installed.
    pub snapshot_bytes: Gauge,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            sync_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            snapshot_bytes: Gauge::default(),
        }
    }
}

/// The durability point: sled flush, fsync of the blob files sled wrote since the last one, then
/// fdatasync of its data file.
struct Durable {
    db: sled::Db,
    file: File,
    /// sled's `blobs/` directory: values too large for the log live there, one file each, and sled
    /// never syncs them (after a machine crash the log pointed at empty blobs and sled could not
    /// start: found by the power-loss nemesis).
    blobs: PathBuf,
    /// Blob files already synced (pruned as sled removes them).
    synced_blobs: Mutex<HashSet<OsString>>,
    no_sync: bool,
    metrics: StorageMetrics,
    /// Log growth against the last snapshot (`StoreHandle::log_growth`).
    growth: LogGrowth,
}

/// Bytes appended to the log since this member started, as of the last snapshot built or installed,
/// and that snapshot's size.
#[derive(Default)]
struct LogGrowth {
    appended: AtomicU64,
    appended_at_snapshot: AtomicU64,
    snapshot_bytes: AtomicU64,
}

impl LogGrowth {
    /// A snapshot of `bytes` taken when the log had `appended` bytes.
    fn snapshot(&self, appended: u64, bytes: usize) {
        self.appended_at_snapshot.store(appended, Ordering::Relaxed);
        self.snapshot_bytes.store(bytes as u64, Ordering::Relaxed);
    }
}

impl Durable {
    /// A snapshot of `bytes` built or installed when the log had `appended` bytes: its size in the
    /// metrics, and the mark the log's growth is counted from.
    fn snapshot_taken(&self, appended: u64, bytes: usize) {
        self.metrics.snapshot_bytes.set(bytes as i64);
        self.growth.snapshot(appended, bytes);
    }

    /// Makes what was written to sled durable.
    fn sync(&self) -> io::Result<()> {
        self.timed(|| {
            self.db.flush().map_err(io::Error::other)?;
            self.sync_new_blobs()?;
            self.file.sync_data()
        })
    }

    /// Makes what was written to these log segments durable, in order.
    fn sync_log(&self, files: &[Arc<File>]) -> io::Result<()> {
        self.timed(|| files.iter().try_for_each(|f| f.sync_data()))
    }

    /// Runs a durability point (skipped by the null control), timed for the metrics.
    #[allow(clippy::disallowed_methods)] // runtime: the sync's latency, for the metrics
    fn timed(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if self.no_sync {
            return Ok(());
        }
        let start = std::time::Instant::now();
        sync()?;
        self.metrics
            .sync_seconds
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Syncs each blob file not synced yet, then the directory (their names) if there was one. A
    /// blob sled creates after the listing and a log record pointing at it that the data file's sync
    /// then catches are not covered: such a record belongs to a write not yet acknowledged (but a crash
    /// right then could still leave sled a pointer to an empty blob).
    fn sync_new_blobs(&self) -> io::Result<()> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = HashSet::new();
        let mut new = false;
        for e in std::fs::read_dir(&self.blobs)? {
            let name = e?.file_name();
            if !synced.contains(&name) {
                match File::open(self.blobs.join(&name)) {
                    Ok(f) => f.sync_all()?,
                    // Removed by sled's blob collection meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

fn io_err(e: impl std::error::Error) -> io::Error {
    io::Error::other(e.to_string())
}

fn read_err(e: impl std::error::Error) -> StorageError {
    StorageIOError::read(&io_err(e)).into()
}

fn write_err(e: impl std::error::Error) -> StorageError {
    StorageIOError::write(&io_err(e)).into()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("storage types serialize")
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(b).map_err(read_err)
}

/// Opens (or creates) the storage of a member.
pub fn open(
    dir: &Path,
    options: StorageOptions,
) -> Result<(LogStore, StateMachine, StoreHandle), StorageError> {
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut config = sled::Config::new().path(dir.join("sled"));
    if options.unsafe_no_sync {
        // The null control: no background flush either (what sled has not yet handed to the OS
        // is lost with the process).
        config = config.flush_every_ms(None);
    }
    let db = config.open().map_err(write_err)?;
    let file = File::open(dir.join("sled").join("db")).map_err(write_err)?;
    let durable = Arc::new(Durable {
        db: db.clone(),
        file,
        blobs: dir.join("sled").join("blobs"),
        synced_blobs: Mutex::default(),
        no_sync: options.unsafe_no_sync,
        metrics: StorageMetrics::default(),
        growth: LogGrowth::default(),
    });
    let log = LogStore::new(&db, &dir.join("log"), durable.clone())?;
    let shared = Arc::new(Shared::load(
        &db,
        dir.join("snapshots"),
        durable,
        options.history_revisions,
    )?);
    Ok((
        log,
        StateMachine {
            shared: shared.clone(),
        },
        StoreHandle { shared },
    ))
}

// ------------------------------------------------------------------------------------------------
// Log storage
// ------------------------------------------------------------------------------------------------

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// An append waiting for its sync: the segment file written (none for an empty append) and
/// openraft's callback.
type Flush = (Option<Arc<File>>, LogFlushed<TypeConfig>);

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    files: Arc<Mutex<LogFiles>>,
    raft: sled::Tree,
    durable: Arc<Durable>,
    flusher: mpsc::Sender<Flush>,
}

impl LogStore {
    fn new(db: &sled::Db, dir: &Path, durable: Arc<Durable>) -> Result<Self, StorageError> {
        let raft = db.open_tree("raft").map_err(read_err)?;
        let purged = purged(&raft)?;
        let files = migrate_sled_log(db, dir, purged, &durable)?;
        let (tx, rx) = mpsc::channel::<Flush>();
        let d = durable.clone();
        std::thread::Builder::new()
            .name("gw-log-flusher".into())
            .spawn(move || {
                // Group commit: one sync covers every append queued while the previous one ran.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let mut files: Vec<Arc<File>> = Vec::new();
                    for f in batch.iter().filter_map(|(f, _)| f.as_ref()) {
                        if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                            files.push(f.clone());
                        }
                    }
                    let res = d.sync_log(&files);
                    d.metrics.sync_batch.observe(batch.len() as f64);
                    for (_, cb) in batch {
                        cb.log_io_completed(
                            res.as_ref()
                                .map(|_| ())
                                .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                        );
                    }
                }
            })
            .map_err(write_err)?;
        Ok(LogStore {
            files: Arc::new(Mutex::new(files)),
            raft,
            durable,
            flusher: tx,
        })
    }

    fn files(&self) -> std::sync::MutexGuard<'_, LogFiles> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn purged(raft: &sled::Tree) -> Result<Option<LogId>, StorageError> {
    raft.get(KEY_PURGED)
        .map_err(read_err)?
        .map(|b| decode(&b))
        .transpose()
}

/// Opens the log's segment files. Earlier versions kept the log's entries in sled (tree `log`): if any
/// are there, they are copied into a fresh log and synced, and only then removed from sled; a crash
/// in between leaves them in sled, and the copy is made again.
fn migrate_sled_log(
    db: &sled::Db,
    dir: &Path,
    purged: Option<LogId>,
    durable: &Durable,
) -> Result<LogFiles, StorageError> {
    let legacy = db.open_tree("log").map_err(read_err)?;
    if legacy.is_empty() {
        return LogFiles::open(dir, purged).map_err(read_err);
    }
    let mut entries = Vec::new();
    for item in legacy.iter() {
        let entry: Entry = decode(&item.map_err(read_err)?.1)?;
        if purged.is_none_or(|p| entry.log_id.index > p.index) {
            entries.push(entry);
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(write_err)?;
    }
    let mut files = LogFiles::open(dir, purged).map_err(write_err)?;
    let count = entries.len();
    if let Some((file, _)) = files.append(entries).map_err(write_err)? {
        file.sync_data().map_err(write_err)?;
    }
    legacy.clear().map_err(write_err)?;
    durable.sync().map_err(write_err)?;
    tracing::info!(entries = count, dir = %dir.display(), "moved the Raft log out of sled into segment files");
    Ok(files)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.files().read(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = purged(&self.raft)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: self.files().last().or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.raft
            .insert(KEY_VOTE, encode(vote))
            .map_err(write_err)?;
        let d = self.durable.clone();
        tokio::task::spawn_blocking(move || d.sync())
            .await
            .map_err(write_err)?
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))
    }

    /// The vote, read back as not granted: a restarted member never resumes leadership in its old
    /// term. openraft 0.9 restores a member whose saved vote is its own granted one as leader at once,
    /// with the term's first blank entry as its read index and the commit index it remembered (which
    /// may be behind what it had committed and acknowledged before the crash), so it would answer
    /// "linearizable" reads from a stale state until its commit index caught up: the power-loss
    /// nemesis saw revisions go backwards after the leader's machine crashed. Not granted, the vote
    /// still binds the member in its term; leading again takes a new election.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = self
            .raft
            .get(KEY_VOTE)
            .map_err(read_err)?
            .map(|b| decode(&b))
            .transpose()?;
        Ok(vote.map(|mut v| {
            v.committed = false;
            v
        }))
    }

    /// Remembered (without a sync: a lost update only means re-learning it from the leader) so that a
    /// restarted member re-applies its committed log at once, its state machine being in memory.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.raft
            .insert(KEY_COMMITTED, encode(&committed))
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .raft
            .get(KEY_COMMITTED)
            .map_err(read_err)?
            .map(|b| decode::<Option<LogId>>(&b))
            .transpose()?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = self.files().append(entries).map_err(write_err)?;
        let file = written.map(|(file, bytes)| {
            self.durable
                .growth
                .appended
                .fetch_add(bytes, Ordering::Relaxed);
            file
        });
        self.flusher
            .send((file, callback))
            .map_err(|_| write_err(io::Error::other("log flusher stopped")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.files().truncate(log_id.index).map_err(write_err)
    }

    /// The purge point is made durable before the entries go: after a crash, no entry at or before a
    /// durable purge point is read again.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.raft
            .insert(KEY_PURGED, encode(&log_id))
            .map_err(write_err)?;
        let d = self.durable.clone();
        tokio::task::spawn_blocking(move || d.sync())
            .await
            .map_err(write_err)?
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
        self.files()
            .purge(log_id.index)
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }
}

// ------------------------------------------------------------------------------------------------
// State machine
// ------------------------------------------------------------------------------------------------

/// The current snapshot's record: its meta and the name of its file.
const SNAP_CURRENT: &[u8] = b"current";
/// Where earlier versions kept the snapshot (meta, and the data as a sled value): read when there is no
/// record yet, removed once one is durable.
const LEGACY_META: &[u8] = b"meta";
const LEGACY_DATA: &[u8] = b"data";

/// Where a snapshot lives.
#[derive(Serialize, serde::Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta,
    file: String,
}

/// The applied state and its Raft bookkeeping, behind one lock so that readers see whole revisions.
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

struct Shared {
    applied: RwLock<Applied>,
    snapshot: sled::Tree,
    /// The directory of snapshot files.
    snapshots: PathBuf,
    durable: Arc<Durable>,
    hub: broadcast::Sender<HubMsg>,
    /// Serialises snapshot builds and installs with each other.
    snapshot_lock: Mutex<u64>,
}

impl Shared {
    /// The state as of the current snapshot (empty without one). Log entries after it are re-applied
    /// by openraft up to the saved committed index.
    fn load(
        db: &sled::Db,
        snapshots: PathBuf,
        durable: Arc<Durable>,
        history_limit: usize,
    ) -> Result<Self, StorageError> {
        let snapshot = db.open_tree("snapshot").map_err(read_err)?;
        std::fs::create_dir_all(&snapshots).map_err(write_err)?;
        let mut state = State::new(history_limit);
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        if let Some((meta, data)) = current_snapshot(&snapshot, &snapshots)? {
            state.install_snapshot(&data).map_err(read_err)?;
            durable.growth.snapshot(0, data.len());
            last_applied = meta.last_log_id;
            membership = meta.last_membership;
        }
        let (hub, _) = broadcast::channel(1024);
        Ok(Shared {
            applied: RwLock::new(Applied {
                state,
                last_applied,
                membership,
            }),
            snapshot,
            snapshots,
            durable,
            hub,
            snapshot_lock: Mutex::new(0),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The state machine side of the storage. It lives in memory: the durable record is the log (synced
/// before acknowledgement) and the last snapshot (synced before the log is purged behind it).
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let mut a = self
                .shared
                .applied
                .write()
                .unwrap_or_else(|e| e.into_inner());
            a.last_applied = Some(entry.log_id);
            let (reply, events) = match entry.payload {
                EntryPayload::Blank => (Response::None, vec![]),
                EntryPayload::Normal(Command::Txns(txns)) => {
                    let mut results = Vec::with_capacity(txns.len());
                    let mut events = Vec::new();
                    for txn in &txns {
                        let (res, ev) = a.state.apply_txn(txn);
                        results.push(res);
                        events.extend(ev);
                    }
                    (Response::Txns(results), events)
                }
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                    (Response::None, vec![])
                }
            };
            drop(a);
            for ev in events {
                let _ = self.shared.hub.send(HubMsg::Events(ev));
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let shared = self.shared.clone();
        let meta = meta.clone();
        let revision = tokio::task::spawn_blocking(move || -> Result<u64, StorageError> {
            let _guard = shared
                .snapshot_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Durable first: once installed, the log before the snapshot may be gone.
            store_snapshot(&shared, &meta, &data)?;
            let durable = &shared.durable;
            durable.snapshot_taken(durable.growth.appended.load(Ordering::Relaxed), data.len());
            // Decoded before taking the state: readers and the API keep being served meanwhile.
            let image = SnapshotImage::decode(&data).map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(
                    Some(meta.signature()),
                    &io_err(e),
                ))
            })?;
            let mut a = shared.applied.write().unwrap_or_else(|e| e.into_inner());
            a.state.install_image(image);
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            Ok(a.state.revision())
        })
        .await
        .map_err(write_err)??;
        let _ = self.shared.hub.send(HubMsg::Reset { revision });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(
            current_snapshot(&self.shared.snapshot, &self.shared.snapshots)?.map(|(meta, data)| {
                Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                }
            }),
        )
    }
}

/// The current snapshot: its meta and data (from its file, or from sled as earlier versions kept it).
fn current_snapshot(
    tree: &sled::Tree,
    dir: &Path,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    if let Some(record) = tree.get(SNAP_CURRENT).map_err(read_err)? {
        let record: SnapshotRecord = decode(&record)?;
        let data = std::fs::read(dir.join(&record.file)).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(record.meta.signature()),
                &e,
            ))
        })?;
        return Ok(Some((record.meta, data)));
    }
    let Some(meta) = tree.get(LEGACY_META).map_err(read_err)? else {
        return Ok(None);
    };
    let data = tree.get(LEGACY_DATA).map_err(read_err)?.unwrap_or_default();
    Ok(Some((decode(&meta)?, data.to_vec())))
}

/// Saves a snapshot as the current one, durably (the log may be purged behind it afterwards): its file
/// written and synced, then its record in sled synced, then the files of earlier snapshots deleted.
fn store_snapshot(shared: &Shared, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let failed = |e: io::Error| {
        StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
    };
    // Named after the snapshot (ids are the leader's "term-index-sequence"; anything else is dropped).
    let file: String = meta
        .snapshot_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let file = format!("snapshot-{file}");
    let tmp = shared.snapshots.join(format!("{file}.tmp"));
    (|| {
        let mut f = File::create(&tmp)?;
        io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, shared.snapshots.join(&file))?;
        File::open(&shared.snapshots)?.sync_all()
    })()
    .map_err(failed)?;
    let record = SnapshotRecord {
        meta: meta.clone(),
        file: file.clone(),
    };
    shared
        .snapshot
        .insert(SNAP_CURRENT, encode(&record))
        .map_err(write_err)?;
    shared.durable.sync().map_err(failed)?;
    // Durable: what came before can go (a crash from here on leaves only garbage).
    let mut legacy = sled::Batch::default();
    legacy.remove(LEGACY_META);
    legacy.remove(LEGACY_DATA);
    shared.snapshot.apply_batch(legacy).map_err(write_err)?;
    for e in std::fs::read_dir(&shared.snapshots).map_err(failed)? {
        let name = e.map_err(failed)?.file_name();
        if name != file.as_str() {
            let _ = std::fs::remove_file(shared.snapshots.join(name));
        }
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (done, built) = tokio::sync::oneshot::channel();
        // A thread of its own at the lowest priority: encoding a large state (a million session
        // entries) takes seconds of CPU, which the apply path and the API must not wait behind
        // (writes' p99 went from 1 to 5 ms whenever a snapshot of 100 000 sessions was built).
        let encoder = std::thread::Builder::new().name("gw-snapshot".into());
        let spawned = encoder.spawn(move || {
            if let Err(e) = rustix::process::setpriority_process(None, 19) {
                tracing::debug!(error = %e, "snapshot encoder left at normal priority");
            }
            let _ = done.send(build_snapshot(&shared));
        });
        spawned.map_err(write_err)?;
        built.await.map_err(write_err)?
    }
}

/// `build_snapshot`'s work, on its encoder thread.
#[allow(clippy::disallowed_methods)] // runtime: the build's duration, for the metrics
fn build_snapshot(shared: &Shared) -> Result<Snapshot<TypeConfig>, StorageError> {
    let start = std::time::Instant::now();
    let mut seq = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *seq += 1;
    // Taken under the lock (cheap: shared objects), encoded after it, so that applying
    // entries does not wait for the encoding.
    let (image, last_applied, membership, appended) = {
        let a = shared.read();
        (
            a.state.snapshot_image(),
            a.last_applied,
            a.membership.clone(),
            // Every entry applied so far was appended before; entries appended but not yet
            // applied count as covered too (the log since is slightly undercounted).
            shared.durable.growth.appended.load(Ordering::Relaxed),
        )
    };
    let data = image.encode();
    let snapshot_id = match last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, *seq),
        None => format!("0-0-{}", *seq),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    store_snapshot(shared, &meta, &data)?;
    let m = &shared.durable.metrics;
    m.snapshot_build_seconds
        .observe(start.elapsed().as_secs_f64());
    shared.durable.snapshot_taken(appended, data.len());
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

// ------------------------------------------------------------------------------------------------
// Read access for the API server
// ------------------------------------------------------------------------------------------------

/// Read access to a member's applied state and its change notifications.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl StoreHandle {
    /// Runs `f` on the applied state; `f` sees one whole revision.
    pub fn read<R>(&self, f: impl FnOnce(&Applied) -> R) -> R {
        f(&self.shared.read())
    }

    /// The bytes appended to the log since the last snapshot (built or installed; since this member
    /// started, if it started from one), and that snapshot's size (0 without one).
    pub fn log_growth(&self) -> (u64, u64) {
        let g = &self.shared.durable.growth;
        let appended = g.appended.load(Ordering::Relaxed);
        (
            appended.saturating_sub(g.appended_at_snapshot.load(Ordering::Relaxed)),
            g.snapshot_bytes.load(Ordering::Relaxed),
        )
    }

    /// The storage's own measurements.
    pub fn metrics(&self) -> StorageMetrics {
        self.shared.durable.metrics.clone()
    }

    /// Subscribes to the changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HubMsg> {
        self.shared.hub.subscribe()
    }

    /// The index of the last applied log entry (0 if none).
    pub fn applied_index(&self) -> u64 {
        self.read(|a| a.last_applied.map(|l| l.index).unwrap_or(0))
    }

    /// The members of the last applied membership, with their ids.
    pub fn members(&self) -> Vec<(NodeId, Member, bool)> {
        self.read(|a| {
            let m = a.membership.membership();
            let voters: std::collections::BTreeSet<NodeId> = m.voter_ids().collect();
            m.nodes()
                .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(write_err)?;
            let (log, sm, _) = open(dir.path(), StorageOptions::default())?;
            Ok((dir, log, sm))
        }
    }

    #[tokio::test]
    async fn a_granted_vote_reads_back_as_not_granted_so_a_restart_needs_an_election() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path(), StorageOptions::default()).unwrap();
        let mut vote = Vote::new(3, 1);
        vote.commit();
        log.save_vote(&vote).await.unwrap();
        let read = log.read_vote().await.unwrap().unwrap();
        assert_eq!(read.leader_id, vote.leader_id);
        assert!(!read.committed);
    }

    #[tokio::test]
    async fn a_snapshot_lives_in_its_own_file_and_replaces_the_one_before_once_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, _) = open(dir.path(), StorageOptions::default()).unwrap();
        let files = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir.path().join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        // A snapshot as earlier versions stored it is still the current one.
        let legacy = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "legacy".into(),
        };
        let shared = sm.shared.clone();
        let tree = &shared.snapshot;
        tree.insert(LEGACY_META, encode(&legacy)).unwrap();
        tree.insert(LEGACY_DATA, b"old".as_slice()).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, "legacy");
        assert_eq!(current.snapshot.into_inner(), b"old");

        let first = sm.build_snapshot().await.unwrap();
        assert_eq!(files(), [format!("snapshot-{}", first.meta.snapshot_id)]);
        assert!(
            tree.get(LEGACY_DATA).unwrap().is_none(),
            "the legacy copy goes"
        );
        let second = sm.build_snapshot().await.unwrap();
        assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
        assert_eq!(files(), [format!("snapshot-{}", second.meta.snapshot_id)]);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, second.meta.snapshot_id);
        assert_eq!(current.snapshot.into_inner(), second.snapshot.into_inner());
    }

    #[tokio::test]
    async fn a_log_kept_in_sled_by_an_earlier_version_moves_into_segment_files_intact() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("sled")).unwrap();
            let legacy = db.open_tree("log").unwrap();
            for i in 0..5u64 {
                let e = Entry {
                    log_id: openraft::testing::log_id(1, 1, i),
                    payload: EntryPayload::Blank,
                };
                legacy.insert(i.to_be_bytes(), encode(&e)).unwrap();
            }
            let purged = openraft::testing::log_id(1, 1, 1);
            db.open_tree("raft")
                .unwrap()
                .insert(KEY_PURGED, encode(&purged))
                .unwrap();
            db.flush().unwrap();
        }
        let (mut log, sm, _) = open(dir.path(), StorageOptions::default()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        let indexes: Vec<u64> = log
            .try_get_log_entries(0..10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, [2, 3, 4]);
        let db = &sm.shared.durable.db;
        assert!(db.open_tree("log").unwrap().is_empty(), "sled's copy goes");
    }

    /// openraft's own storage conformance suite, run against this store.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
