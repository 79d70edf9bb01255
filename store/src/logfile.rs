//! The Raft log's entries in segment files of their own (`<data-dir>/log/<first index>.log`), appended
//! with one write per batch and made durable by the log flusher's `fdatasync` of the segment written.
//!
//! Why not sled: every sled flush hands its buffers to sled's I/O thread pool, whose queue wakes all
//! of its idle threads for each job; on this machine that was about 22 context switches per write on
//! every member, and a flush plus `fdatasync` per batch besides.
//!
//! A segment is a sequence of records, `[payload length: u32 LE][CRC-32 of the payload: u32 LE]
//! [payload: the entry as JSON]`, with consecutive indexes starting at the index its name gives. A new
//! segment starts when the last one has reached [`SEGMENT_BYTES`], or when an append does not follow
//! the last entry (after everything was purged behind an installed snapshot). A segment's creation is
//! made durable (directory sync) before anything in it is acknowledged.
//!
//! Recovery reads every segment in order and keeps the longest valid prefix: at the first record that is
//! cut short or fails its checksum (a write that a crash interrupted before its sync, hence never
//! acknowledged), the segment is cut there and later segments are removed; so is a segment that does
//! not continue the one before (left over from a truncation or purge the crash interrupted). The
//! purge point and the vote stay in sled (`storage.rs`).

use crate::types::{Entry, LogId};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment this long takes no more appends.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Record header: payload length and CRC-32.
const HEADER: usize = 8;

/// Where one entry's record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// The segment, by its first index.
    segment: u64,
    /// The record's offset in the segment.
    offset: u64,
    /// The payload's length.
    len: u32,
    log_id: LogId,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of valid records.
    len: u64,
    /// The index of its last record (`None` while empty).
    last: Option<u64>,
}

impl Segment {
    /// The index its next record must have.
    fn next(&self) -> u64 {
        self.last.map_or(self.first, |l| l + 1)
    }
}

/// The entries of the log not yet purged, and the files holding them.
pub(crate) struct LogFiles {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// One per entry, consecutive indexes.
    entries: VecDeque<Loc>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl LogFiles {
    /// Opens the log in `dir` (created if missing), recovering what a crash left: see the module
    /// documentation. Entries at or before `purged` are dropped, and segments holding nothing after it
    /// removed.
    pub(crate) fn open(dir: &Path, purged: Option<LogId>) -> io::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let first = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                names.push(first);
            }
        }
        names.sort_unstable();
        if let Some(p) = purged {
            // The live log starts in the last segment starting at or before the entry after the purge
            // point; those before it hold only purged entries (or stale ones a crash left).
            if let Some(keep) = names.iter().rposition(|&f| f <= p.index + 1) {
                for first in names.drain(..keep) {
                    std::fs::remove_file(segment_path(dir, first))?;
                }
            }
        }
        let mut log = LogFiles {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            entries: VecDeque::new(),
        };
        let mut valid = true;
        for first in names {
            let path = segment_path(dir, first);
            let follows = log.segments.last().is_none_or(|s| s.next() == first);
            if !valid || !follows {
                tracing::warn!(file = %path.display(), "removing a log segment that does not continue the log (left by a crash)");
                std::fs::remove_file(&path)?;
                valid = false;
                continue;
            }
            valid = log.recover_segment(first, path)?;
        }
        if let Some(p) = purged {
            log.purge(p.index)?;
            if let Some(front) = log.entries.front()
                && front.log_id.index != p.index + 1
            {
                return Err(corrupt(format!(
                    "log in {}: entries {}..{} are missing (purged through {}; the first entry kept is {})",
                    dir.display(),
                    p.index + 1,
                    front.log_id.index,
                    p.index,
                    front.log_id.index
                )));
            }
        }
        Ok(log)
    }

    /// Reads one segment's records into the index; `false` if it ended in an invalid record (cut
    /// off there: nothing after it is kept).
    fn recover_segment(&mut self, first: u64, path: PathBuf) -> io::Result<bool> {
        let file = open_rw(&path, false)?;
        let data = std::fs::read(&path)?;
        let mut seg = Segment {
            first,
            path,
            file: Arc::new(file),
            len: 0,
            last: None,
        };
        let mut complete = true;
        let mut at = 0usize;
        while at < data.len() {
            match record(&data[at..], seg.next()) {
                Some((entry_len, log_id)) => {
                    self.entries.push_back(Loc {
                        segment: first,
                        offset: at as u64,
                        len: entry_len as u32,
                        log_id,
                    });
                    seg.last = Some(log_id.index);
                    at += HEADER + entry_len;
                }
                None => {
                    tracing::warn!(file = %seg.path.display(), offset = at, bytes = data.len() - at,
                        "log segment ends in an incomplete or corrupt record (a write a crash interrupted before its sync): cut there");
                    seg.file.set_len(at as u64)?;
                    seg.file.sync_all()?;
                    complete = false;
                    break;
                }
            }
        }
        seg.len = at as u64;
        self.segments.push(seg);
        Ok(complete)
    }

    /// The last entry's log id.
    pub(crate) fn last(&self) -> Option<LogId> {
        self.entries.back().map(|l| l.log_id)
    }

    /// Appends entries (whose indexes follow the last entry's) with one write, and returns the file to
    /// sync before they are durable and the bytes appended. The file's new segment, if this append
    /// started one, is already durable.
    pub(crate) fn append(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> io::Result<Option<(Arc<File>, u64)>> {
        let mut buf = Vec::new();
        let mut new = Vec::new();
        for e in entries {
            let expected = new
                .last()
                .map(|l: &Loc| l.log_id.index + 1)
                .or_else(|| self.last().map(|l| l.index + 1));
            if expected.is_some_and(|x| x != e.log_id.index) {
                return Err(io::Error::other(format!(
                    "log append of entry {} after entry {}",
                    e.log_id.index,
                    expected.unwrap_or_default().saturating_sub(1)
                )));
            }
            let payload = serde_json::to_vec(&e).map_err(io::Error::other)?;
            new.push(Loc {
                segment: 0,
                offset: buf.len() as u64,
                len: payload.len() as u32,
                log_id: e.log_id,
            });
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        let Some(first) = new.first().map(|l| l.log_id.index) else {
            return Ok(None);
        };
        let reuse = self
            .segments
            .last()
            .is_some_and(|s| s.len < SEGMENT_BYTES && s.next() == first);
        if !reuse {
            let path = segment_path(&self.dir, first);
            let file = open_rw(&path, true)?;
            file.set_len(0)?;
            sync_dir(&self.dir)?;
            self.segments.push(Segment {
                first,
                path,
                file: Arc::new(file),
                len: 0,
                last: None,
            });
        }
        let seg = self.segments.last_mut().expect("a segment to append to");
        if let Err(e) = seg.file.write_all_at(&buf, seg.len) {
            // What was written of it is cut off again (if this fails too, recovery's checksums do).
            let _ = seg.file.set_len(seg.len);
            return Err(e);
        }
        for mut l in new {
            l.segment = seg.first;
            l.offset += seg.len;
            seg.last = Some(l.log_id.index);
            self.entries.push_back(l);
        }
        seg.len += buf.len() as u64;
        Ok(Some((seg.file.clone(), buf.len() as u64)))
    }

    /// The entries with indexes in `start..end` that the log holds, in order.
    pub(crate) fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let Some(front) = self.entries.front().map(|l| l.log_id.index) else {
            return Ok(Vec::new());
        };
        let from = start.saturating_sub(front) as usize;
        let to = (end.saturating_sub(front) as usize).min(self.entries.len());
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        let mut i = from;
        while i < to {
            // One read per segment for the run of entries in it.
            let seg_first = self.entries[i].segment;
            let mut j = i;
            while j < to && self.entries[j].segment == seg_first {
                j += 1;
            }
            let (a, b) = (self.entries[i], self.entries[j - 1]);
            let base = a.offset;
            let mut buf = vec![0u8; (b.offset + HEADER as u64 + b.len as u64 - base) as usize];
            self.segment(seg_first)?
                .file
                .read_exact_at(&mut buf, base)?;
            for l in self.entries.range(i..j) {
                let at = (l.offset - base) as usize + HEADER;
                let payload = &buf[at..at + l.len as usize];
                out.push(
                    serde_json::from_slice(payload)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                );
            }
            i = j;
        }
        Ok(out)
    }

    fn segment(&self, first: u64) -> io::Result<&Segment> {
        self.segments
            .iter()
            .find(|s| s.first == first)
            .ok_or_else(|| io::Error::other(format!("log segment {first} is gone")))
    }

    /// Removes the entry at `index` and every one after it, durably.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(front) = self.entries.front().map(|l| l.log_id.index) else {
            return Ok(());
        };
        let pos = index.saturating_sub(front) as usize;
        let Some(cut) = self.entries.get(pos).copied() else {
            return Ok(());
        };
        let mut removed = false;
        while self.segments.last().is_some_and(|s| s.first > cut.segment) {
            let s = self.segments.pop().expect("checked");
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
        let seg = self.segments.last_mut().expect("the cut entry's segment");
        seg.file.set_len(cut.offset)?;
        seg.file.sync_all()?;
        seg.len = cut.offset;
        seg.last = cut.log_id.index.checked_sub(1).filter(|&i| i >= seg.first);
        self.entries.truncate(pos);
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Drops the entries at or before `index` and removes the segments holding nothing after it. The
    /// purge point itself must already be durable (recovery drops what is left behind it).
    pub(crate) fn purge(&mut self, index: u64) -> io::Result<()> {
        while self
            .entries
            .front()
            .is_some_and(|l| l.log_id.index <= index)
        {
            self.entries.pop_front();
        }
        while self.segments.first().is_some_and(|s| s.next() <= index + 1) {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path)?;
        }
        Ok(())
    }
}

/// The record at the start of `data` if it is whole, its checksum holds and it is the entry with index
/// `index`: its payload's length and the entry's log id.
fn record(data: &[u8], index: u64) -> Option<(usize, LogId)> {
    let header = data.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = data.get(HEADER..HEADER + len)?;
    if len == 0 || crc32fast::hash(payload) != crc {
        return None;
    }
    let entry: Entry = serde_json::from_slice(payload).ok()?;
    (entry.log_id.index == index).then_some((len, entry.log_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: openraft::testing::log_id(term, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(log: &mut LogFiles, term: u64, indexes: std::ops::Range<u64>) {
        let (file, _) = log
            .append(indexes.map(|i| entry(term, i)))
            .unwrap()
            .unwrap();
        file.sync_data().unwrap();
    }

    /// Puts into `dir` a segment of its own holding entries `indexes` (term 1), as a crash can leave.
    fn stray_segment(dir: &Path, indexes: std::ops::Range<u64>) {
        let scratch = dir.join("scratch");
        let first = indexes.start;
        append(&mut LogFiles::open(&scratch, None).unwrap(), 1, indexes);
        std::fs::rename(segment_path(&scratch, first), segment_path(dir, first)).unwrap();
    }

    /// (term, index) of every entry the log holds.
    fn held(log: &LogFiles) -> Vec<(u64, u64)> {
        log.read(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_torn_last_record_is_cut_off_on_reopening_and_the_log_goes_on_from_the_entry_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..3);
        append(&mut log, 1, 3..5);
        let path = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        drop(log);
        // The last record loses its last three bytes, as a write a crash cut short.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        assert_eq!(held(&log), [(1, 0), (1, 1), (1, 2), (1, 3)]);
        append(&mut log, 2, 4..6);
        let log = LogFiles::open(dir.path(), None).unwrap();
        assert_eq!(held(&log), [(1, 0), (1, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
    }

    #[test]
    fn a_record_whose_checksum_fails_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..4);
        let second = log.entries[2];
        drop(log);
        // One payload byte of the third record flipped.
        let path = segment_path(dir.path(), 0);
        let mut data = std::fs::read(&path).unwrap();
        data[second.offset as usize + HEADER + 1] ^= 0x20;
        std::fs::write(&path, data).unwrap();
        let log = LogFiles::open(dir.path(), None).unwrap();
        assert_eq!(held(&log), [(1, 0), (1, 1)]);
    }

    #[test]
    fn truncation_and_purge_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..10);
        log.truncate(6).unwrap();
        append(&mut log, 2, 6..8);
        log.purge(2).unwrap();
        assert_eq!(log.read(5, 7).unwrap().len(), 2);
        let purged = Some(openraft::testing::log_id(1, 1, 2));
        let log = LogFiles::open(dir.path(), purged).unwrap();
        assert_eq!(held(&log), [(1, 3), (1, 4), (1, 5), (2, 6), (2, 7)]);
        assert_eq!(log.last(), Some(openraft::testing::log_id(2, 1, 7)));
    }

    #[test]
    fn after_a_purge_past_the_last_entry_the_log_starts_a_new_segment_and_a_stale_one_left_behind_is_dropped()
     {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..5);
        let old = std::fs::read(segment_path(dir.path(), 0)).unwrap();
        // A snapshot through 100 was installed: everything goes, and the log resumes at 101.
        log.purge(100).unwrap();
        append(&mut log, 3, 101..103);
        assert_eq!(segments(dir.path()), [format!("{:020}.log", 101)]);
        drop(log);
        // A crash brought the old segment's removal back.
        std::fs::write(segment_path(dir.path(), 0), old).unwrap();
        let purged = Some(openraft::testing::log_id(2, 1, 100));
        let log = LogFiles::open(dir.path(), purged).unwrap();
        assert_eq!(held(&log), [(3, 101), (3, 102)]);
        assert_eq!(segments(dir.path()), [format!("{:020}.log", 101)]);
    }

    #[test]
    fn a_segment_that_does_not_continue_the_one_before_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..3);
        drop(log);
        // Left by a crash: a segment starting past a gap.
        stray_segment(dir.path(), 7..9);
        let log = LogFiles::open(dir.path(), None).unwrap();
        assert_eq!(held(&log), [(1, 0), (1, 1), (1, 2)]);
        assert!(!segment_path(dir.path(), 7).exists());
    }

    #[test]
    fn missing_entries_after_the_purge_point_are_an_error_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..3);
        log.purge(2).unwrap();
        append(&mut log, 1, 3..5);
        drop(log);
        std::fs::remove_file(segment_path(dir.path(), 3)).unwrap();
        stray_segment(dir.path(), 6..8);
        let purged = Some(openraft::testing::log_id(1, 1, 2));
        let err = LogFiles::open(dir.path(), purged).err().unwrap();
        assert!(
            err.to_string().contains("entries 3..6 are missing"),
            "{err}"
        );
    }

    #[test]
    fn an_append_that_does_not_follow_the_last_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open(dir.path(), None).unwrap();
        append(&mut log, 1, 0..3);
        let err = log.append([entry(1, 5)]).err().unwrap();
        assert!(err.to_string().contains("entry 5 after entry 2"), "{err}");
        assert_eq!(held(&log).len(), 3);
    }
}
