//! A filesystem that loses what was not synced: a FUSE pass-through over a backing directory that keeps
//! every write in memory, per file, until the file is fsynced (or fdatasynced), and on a power cut
//! drops everything not yet synced — what a machine crash does to a disk's page cache. Members' data
//! directories live on it in the runs with the `power-loss` nemesis (after LazyFS, which Jepsen uses
//! for the same purpose).
//!
//! The model: file data (writes, truncations, extensions) is volatile until its file is synced; the
//! namespace (create, mkdir, unlink, rename) is applied to the backing directory at once, as a
//! filesystem with a synchronous metadata journal would. A power cut therefore leaves every file with
//! the contents and length of its last sync — a file created and never synced is empty — which is
//! one of the states a real crash can leave. Files are opened in direct-I/O mode and attributes are
//! never cached, so the kernel's page cache holds nothing the power cut should have lost.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

const PAGE: u64 = 4096;
/// Nothing is cached by the kernel: every attribute is asked for again.
const TTL: Duration = Duration::ZERO;

/// A file's writes since its last sync.
struct Unsynced {
    /// The file's length as its writers see it.
    len: u64,
    /// Bytes of the backing file at or past this offset are no longer the file's (it was truncated
    /// below them since the last sync): they read as zeros unless rewritten.
    floor: u64,
    /// Pages written since the last sync, whole.
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Unsynced {
    fn bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }
}

#[derive(Default)]
struct Inner {
    backing: PathBuf,
    /// Inode → path relative to the backing directory (the root is 1, the empty path).
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Open read-write handles on backing files, one per inode.
    files: HashMap<u64, File>,
    unsynced: HashMap<u64, Unsynced>,
    next_handle: u64,
}

/// What a power cut dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub files: usize,
    /// Unsynced bytes lost (whole pages).
    pub bytes: u64,
}

impl Inner {
    fn path(&self, inode: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&inode.0).cloned().ok_or(Errno::ENOENT)
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn inode_of(&mut self, rel: &Path) -> u64 {
        if let Some(i) = self.inodes.get(rel) {
            return *i;
        }
        self.next_inode += 1;
        let i = self.next_inode;
        self.inodes.insert(rel.to_path_buf(), i);
        self.paths.insert(i, rel.to_path_buf());
        i
    }

    /// Forgets a path that no longer exists, and everything under it (their unsynced data goes with
    /// them).
    fn forget_path(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .inodes
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in gone {
            if let Some(i) = self.inodes.remove(&p) {
                self.paths.remove(&i);
                self.files.remove(&i);
                self.unsynced.remove(&i);
            }
        }
    }

    fn file(&mut self, inode: u64) -> Result<&File, Errno> {
        if !self.files.contains_key(&inode) {
            let path = self.full(self.paths.get(&inode).ok_or(Errno::ENOENT)?);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            self.files.insert(inode, f);
        }
        Ok(&self.files[&inode])
    }

    fn attr(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        let md = std::fs::symlink_metadata(self.full(rel))?;
        let inode = self.inode_of(rel);
        let kind = FileType::from_std(md.file_type()).ok_or(Errno::EIO)?;
        let size = self.unsynced.get(&inode).map_or(md.len(), |u| u.len);
        let time = |s: i64, ns: i64| {
            SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino: INodeNo(inode),
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// The file's unsynced state, started from the backing file when there is none.
    fn unsynced(&mut self, inode: u64) -> Result<&mut Unsynced, Errno> {
        if !self.unsynced.contains_key(&inode) {
            let len = self.file(inode)?.metadata()?.len();
            self.unsynced.insert(
                inode,
                Unsynced {
                    len,
                    floor: len,
                    pages: BTreeMap::new(),
                },
            );
        }
        Ok(self.unsynced.get_mut(&inode).expect("just inserted"))
    }

    /// Reads page `p` as the file's writers see it (whole, zero past the end).
    fn page(&mut self, inode: u64, p: u64) -> Result<Box<[u8]>, Errno> {
        let (floor, dirty) = match self.unsynced.get(&inode) {
            Some(u) => (u.floor, u.pages.get(&p).cloned()),
            None => (u64::MAX, None),
        };
        if let Some(page) = dirty {
            return Ok(page);
        }
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = p * PAGE;
        let valid = floor.saturating_sub(start).min(PAGE) as usize;
        if valid > 0 {
            let f = self.file(inode)?;
            let mut read = 0;
            while read < valid {
                match f.read_at(&mut page[read..valid], start + read as u64)? {
                    0 => break,
                    n => read += n,
                }
            }
        }
        Ok(page)
    }

    fn len(&mut self, inode: u64) -> Result<u64, Errno> {
        match self.unsynced.get(&inode) {
            Some(u) => Ok(u.len),
            None => Ok(self.file(inode)?.metadata()?.len()),
        }
    }

    fn read(&mut self, inode: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let end = (offset + u64::from(size)).min(self.len(inode)?);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let page = self.page(inode, at / PAGE)?;
            let from = (at % PAGE) as usize;
            let to = ((end - at / PAGE * PAGE).min(PAGE)) as usize;
            out.extend_from_slice(&page[from..to]);
            at = at / PAGE * PAGE + to as u64;
        }
        Ok(out)
    }

    fn write(&mut self, inode: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.unsynced(inode)?;
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let p = at / PAGE;
            let mut page = self.page(inode, p)?;
            let from = (at % PAGE) as usize;
            let n = ((PAGE - at % PAGE).min(end - at)) as usize;
            let src = (at - offset) as usize;
            page[from..from + n].copy_from_slice(&data[src..src + n]);
            self.unsynced
                .get_mut(&inode)
                .expect("started above")
                .pages
                .insert(p, page);
            at += n as u64;
        }
        let u = self.unsynced.get_mut(&inode).expect("started above");
        u.len = u.len.max(end);
        Ok(())
    }

    fn truncate(&mut self, inode: u64, size: u64) -> Result<(), Errno> {
        let u = self.unsynced(inode)?;
        if size < u.len {
            u.floor = u.floor.min(size);
            let first_gone = size.div_ceil(PAGE);
            u.pages.retain(|p, _| *p < first_gone);
            if let Some(page) = u.pages.get_mut(&(size / PAGE)) {
                page[(size % PAGE) as usize..].fill(0);
            }
        }
        u.len = size;
        Ok(())
    }

    /// Makes the file's unsynced state durable on the backing file.
    fn sync(&mut self, inode: u64) -> Result<(), Errno> {
        let Some(u) = self.unsynced.remove(&inode) else {
            return Ok(());
        };
        let res = (|| {
            let f = self.file(inode)?;
            if f.metadata()?.len() > u.floor {
                f.set_len(u.floor)?;
            }
            for (p, page) in &u.pages {
                let start = p * PAGE;
                if start >= u.len {
                    continue;
                }
                let n = (u.len - start).min(PAGE) as usize;
                f.write_all_at(&page[..n], start)?;
            }
            f.set_len(u.len)?;
            f.sync_data()?;
            Ok(())
        })();
        if res.is_err() {
            // Not synced: still volatile.
            self.unsynced.insert(inode, u);
        }
        res
    }

    fn power_cut(&mut self) -> Dropped {
        let dropped = Dropped {
            files: self.unsynced.len(),
            bytes: self.unsynced.values().map(Unsynced::bytes).sum(),
        };
        self.unsynced.clear();
        dropped
    }

    /// Renames `from` to `to` in the inode table: `to`'s old inode goes, and every path under `from`
    /// moves with it.
    fn rename_paths(&mut self, from: &Path, to: &Path) {
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, inode) in moved {
            // (Joining an empty suffix would add a trailing slash.)
            let rest = old.strip_prefix(from).expect("filtered by prefix");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.inodes.remove(&old);
            self.inodes.insert(new.clone(), inode);
            self.paths.insert(inode, new);
        }
    }
}

/// The FUSE side (the kernel's requests).
struct LossyFs(Arc<Mutex<Inner>>);

impl LossyFs {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.inner().path(parent)?.join(name))
    }

    /// Removes a name (with `remove_file` or `remove_dir`) and forgets its inodes.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        remove: fn(&Path) -> io::Result<()>,
    ) -> Result<(), Errno> {
        let rel = self.child(parent, name)?;
        let mut inner = self.inner();
        remove(&inner.full(&rel))?;
        inner.forget_path(&rel);
        Ok(())
    }
}

fn entry(reply: ReplyEntry, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn truncates(flags: i32) -> bool {
    flags & nix::libc::O_TRUNC != 0
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.child(parent, name)
                .and_then(|rel| self.inner().attr(&rel)),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut inner = self.inner();
        match inner.path(ino).and_then(|rel| inner.attr(&rel)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut inner = self.inner();
        let res = (|| {
            let rel = inner.path(ino)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(
                    inner.full(&rel),
                    std::fs::Permissions::from_mode(mode & 0o7777),
                )?;
            }
            if let Some(size) = size {
                inner.truncate(ino.0, size)?;
            }
            inner.attr(&rel)
        })();
        match res {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.child(parent, name).and_then(|rel| {
            let mut inner = self.inner();
            let full = inner.full(&rel);
            std::fs::create_dir(&full)?;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & !umask))?;
            inner.attr(&rel)
        });
        entry(reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.remove(parent, name, |p| std::fs::remove_file(p)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.remove(parent, name, |p| std::fs::remove_dir(p)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let res = (|| {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            let mut inner = self.inner();
            std::fs::rename(inner.full(&from), inner.full(&to))?;
            inner.rename_paths(&from, &to);
            Ok(())
        })();
        empty(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut inner = self.inner();
        let res = (|| {
            inner.file(ino.0)?;
            if truncates(flags.0) {
                inner.truncate(ino.0, 0)?;
            }
            inner.next_handle += 1;
            Ok(inner.next_handle)
        })();
        match res {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.inner().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.inner().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a sync.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.inner().sync(ino.0);
        empty(reply, res);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut inner = self.inner();
        let res = (|| {
            let rel = inner.path(ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for e in std::fs::read_dir(inner.full(&rel))? {
                let e = e?;
                let kind = FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile);
                let child = rel.join(e.file_name());
                entries.push((inner.inode_of(&child), kind, e.file_name()));
            }
            Ok::<_, Errno>(entries)
        })();
        match res {
            Ok(entries) => {
                for (i, (inode, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*inode), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The namespace is never volatile here.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let backing = self.inner().backing.clone();
        match nix::sys::statvfs::statvfs(&backing) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = (|| {
            let rel = self.child(parent, name)?;
            let mut inner = self.inner();
            let full = inner.full(&rel);
            let mut open = std::fs::OpenOptions::new();
            open.read(true).write(true);
            if flags & nix::libc::O_EXCL != 0 {
                open.create_new(true);
            } else {
                open.create(true);
            }
            let f = open.open(&full)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode & !umask & 0o7777))?;
            let inode = inner.inode_of(&rel);
            inner.files.insert(inode, f);
            if truncates(flags) {
                inner.truncate(inode, 0)?;
            }
            inner.next_handle += 1;
            Ok::<_, Errno>((inner.attr(&rel)?, inner.next_handle))
        })();
        match res {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted lossy filesystem; unmounted when dropped (and by `fusermount3` when this process dies).
pub struct Disk {
    inner: Arc<Mutex<Inner>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Disk {
    /// Mounts a lossy view of `backing` (created if missing) at `mountpoint` (likewise). Needs
    /// `/dev/fuse` and `fusermount3` (Debian package fuse3).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Disk> {
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let mut inner = Inner {
            backing: backing.canonicalize()?,
            next_inode: 1,
            ..Inner::default()
        };
        inner.paths.insert(1, PathBuf::new());
        inner.inodes.insert(PathBuf::new(), 1);
        let inner = Arc::new(Mutex::new(inner));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("gw-lossyfs".into()),
            fuser::MountOption::AutoUnmount,
        ];
        config.acl = fuser::SessionACL::RootAndOwner;
        let session = fuser::spawn_mount(LossyFs(inner.clone()), mountpoint, &config)?;
        // fusermount3's auto-unmount was seen to leave a mount behind when this process was killed
        // while another process had files open on it: the watchdog unmounts it too.
        gw_testkit::procs::unmount_with_me(mountpoint);
        Ok(Disk {
            inner,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Drops every write not yet synced, as a power cut would. The processes using the disk should
    /// be dead first (a live one would go on from its own memory).
    pub fn power_cut(&self) -> Dropped {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_cut()
    }

    /// Bytes written and not yet synced (whole pages).
    pub fn unsynced_bytes(&self) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.unsynced.values().map(Unsynced::bytes).sum()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            // Mounted with auto-unmount, the session's thread ends only when the kernel ends the
            // connection, at the unmount: detach it first (it goes once nothing has a file open).
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            let _ = s.umount_and_join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn inner_over(dir: &Path) -> Inner {
        let mut inner = Inner {
            backing: dir.to_path_buf(),
            next_inode: 1,
            ..Inner::default()
        };
        inner.paths.insert(1, PathBuf::new());
        inner.inodes.insert(PathBuf::new(), 1);
        inner
    }

    fn backing(dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join(name)).unwrap()
    }

    // The model without the kernel: writes, truncations and syncs against the backing file.
    #[test]
    fn unsynced_writes_are_read_back_and_lost_on_a_power_cut_synced_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 5000]).unwrap();
        let mut fs = inner_over(dir.path());
        let f = fs.inode_of(Path::new("f"));
        fs.write(f, 4090, b"abcdefghij").unwrap();
        fs.write(f, 9000, b"tail").unwrap();
        assert_eq!(fs.len(f).unwrap(), 9004);
        let all = fs.read(f, 0, 20_000).unwrap();
        assert_eq!(all.len(), 9004);
        assert_eq!(&all[4088..4102], b"\x07\x07abcdefghij\x07\x07");
        assert!(
            all[5000..9000].iter().all(|b| *b == 0),
            "a hole reads as zeros"
        );
        assert_eq!(&all[9000..], b"tail");
        // Nothing reached the backing file.
        assert_eq!(backing(dir.path(), "f"), vec![7u8; 5000]);
        assert_eq!(
            fs.power_cut(),
            Dropped {
                files: 1,
                bytes: 3 * PAGE
            }
        );
        assert_eq!(fs.read(f, 0, 20_000).unwrap(), vec![7u8; 5000]);

        fs.write(f, 0, b"synced").unwrap();
        fs.sync(f).unwrap();
        fs.write(f, 6, b"-lost").unwrap();
        fs.power_cut();
        let after = fs.read(f, 0, 20).unwrap();
        assert_eq!(&after[..8], b"synced\x07\x07");
        assert_eq!(&backing(dir.path(), "f")[..6], b"synced");
    }

    #[test]
    fn a_truncation_is_volatile_and_what_it_cut_reads_as_zeros_when_extended_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![9u8; 10_000]).unwrap();
        let mut fs = inner_over(dir.path());
        let f = fs.inode_of(Path::new("f"));
        fs.truncate(f, 100).unwrap();
        assert_eq!(fs.read(f, 0, 20_000).unwrap(), vec![9u8; 100]);
        fs.truncate(f, 200).unwrap();
        let r = fs.read(f, 0, 20_000).unwrap();
        assert_eq!(r.len(), 200);
        assert!(r[100..].iter().all(|b| *b == 0));
        fs.power_cut();
        assert_eq!(fs.read(f, 0, 20_000).unwrap(), vec![9u8; 10_000]);

        fs.truncate(f, 100).unwrap();
        fs.write(f, 150, b"x").unwrap();
        fs.sync(f).unwrap();
        let mut want = vec![9u8; 100];
        want.extend(vec![0u8; 50]);
        want.push(b'x');
        assert_eq!(backing(dir.path(), "f"), want);
    }

    #[test]
    fn renaming_a_directory_moves_the_inodes_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = inner_over(dir.path());
        let a = fs.inode_of(Path::new("d/a"));
        let old = fs.inode_of(Path::new("e/a"));
        fs.rename_paths(Path::new("d"), Path::new("e"));
        assert_eq!(fs.paths[&a], Path::new("e/a"));
        assert_eq!(fs.inodes[Path::new("e/a")], a);
        assert!(!fs.paths.contains_key(&old));
    }

    // Through the kernel: needs /dev/fuse and fusermount3 (root, as CI runs).
    #[test]
    fn through_the_kernel_only_fsynced_data_survives_a_power_cut() {
        if !Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs /dev/fuse and root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        let mnt = disk.mountpoint().to_path_buf();
        std::fs::create_dir(mnt.join("sub")).unwrap();
        let mut kept = File::create(mnt.join("sub/kept")).unwrap();
        kept.write_all(b"durable").unwrap();
        kept.sync_data().unwrap();
        kept.write_all(b" and volatile").unwrap();
        let mut lost = File::create(mnt.join("lost")).unwrap();
        lost.write_all(&[1u8; 100_000]).unwrap();
        std::fs::rename(mnt.join("lost"), mnt.join("renamed")).unwrap();
        assert_eq!(
            std::fs::read(mnt.join("sub/kept")).unwrap(),
            b"durable and volatile"
        );
        assert_eq!(
            std::fs::metadata(mnt.join("renamed")).unwrap().len(),
            100_000
        );
        assert!(disk.unsynced_bytes() > 0);
        drop((kept, lost));

        let dropped = disk.power_cut();
        assert_eq!(dropped.files, 2);
        assert_eq!(std::fs::read(mnt.join("sub/kept")).unwrap(), b"durable");
        // Created, renamed, never synced: the name survives, the data does not.
        assert_eq!(std::fs::metadata(mnt.join("renamed")).unwrap().len(), 0);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join("sub/kept"))
            .unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"!").unwrap();
        f.sync_all().unwrap();
        let mut s = String::new();
        File::open(mnt.join("sub/kept"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "durable!");
        drop(f);
        drop(disk);
        assert_eq!(
            std::fs::read(dir.path().join("backing/sub/kept")).unwrap(),
            b"durable!"
        );
    }
}
