//! The FUSE operations of the power-cut file system: each call passed
//! through to the backing folder, what it changes told to the model, and
//! EIO for everything once the power is cut.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::MutexGuard;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::{Kind, NodeId};
use super::{PowerCutFilesystem, State, TTL};

fn attr(node: NodeId, meta: &fs::Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    FileAttr {
        ino: INodeNo(node),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.ctime(), meta.ctime_nsec()),
        kind: if meta.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (meta.mode() & 0o7777) as u16,
        nlink: if meta.is_dir() { 2 } else { 1 },
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(err: io::Error) -> Errno {
    Errno::from(err)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

fn open_backing(path: &Path, flags: OpenFlags) -> io::Result<File> {
    let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn set_times(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    let spec = |time: Option<TimeOrNow>| match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(at)) => {
            let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: since.as_secs() as libc::time_t,
                tv_nsec: since.subsec_nanos() as libc::c_long,
            }
        }
    };
    let times = [spec(atime), spec(mtime)];
    let path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid path and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PowerCutFilesystem {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, state: &State, node: NodeId, reply: ReplyEntry) {
        match fs::symlink_metadata(state.model.path(node)) {
            Ok(meta) => reply.entry(&TTL, &attr(node, &meta), Generation(0)),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn create_file(
        &self,
        state: &mut State,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<(NodeId, File)> {
        let path = state.model.path_of_entry(parent, name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        let node = state.model.created(parent, name, Kind::File)?;
        Ok((node, file))
    }
}

impl fuser::Filesystem for PowerCutFilesystem {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if self.control.blackout(false) {
            return reply.error(Errno::EIO);
        }
        let state = self.lock();
        match state.model.child(parent.0, name) {
            Some(node) => self.entry(&state, node, reply),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if self.control.blackout(false) {
            return reply.error(Errno::EIO);
        }
        let state = self.lock();
        let meta = match fh.and_then(|fh| state.files.get(&fh.0)) {
            Some((_, file)) => file.metadata(),
            None => fs::symlink_metadata(state.model.path(ino.0)),
        };
        match meta {
            Ok(meta) => reply.attr(&TTL, &attr(ino.0, &meta)),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        let path = state.model.path(ino.0);
        let result = (|| -> io::Result<()> {
            if let Some(size) = size {
                state.model.will_truncate(ino.0, size)?;
                match fh.and_then(|fh| state.files.get(&fh.0)) {
                    Some((_, file)) => file.set_len(size)?,
                    None => OpenOptions::new().write(true).open(&path)?.set_len(size)?,
                }
            }
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                set_times(&path, atime, mtime)?;
            }
            Ok(())
        })();
        match result.and_then(|()| fs::symlink_metadata(&path)) {
            Ok(meta) => reply.attr(&TTL, &attr(ino.0, &meta)),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        match self.create_file(&mut state, parent.0, name, mode & !umask) {
            Ok((node, _)) => self.entry(&state, node, reply),
            Err(err) => reply.error(errno(err)),
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
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        let path = state.model.path_of_entry(parent.0, name);
        let made = fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&path)
            .and_then(|()| state.model.created(parent.0, name, Kind::Dir));
        match made {
            Ok(node) => self.entry(&state, node, reply),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        match self.lock().model.unlink(parent.0, name) {
            Ok(_) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        match self.lock().model.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
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
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let renamed =
            self.lock()
                .model
                .rename((parent.0, name), (newparent.0, newname), no_replace);
        match renamed {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0;
        if self.control.blackout(truncate) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        let path = state.model.path(ino.0);
        let opened = open_backing(&path, flags).and_then(|file| {
            if truncate {
                state.model.will_truncate(ino.0, 0)?;
                file.set_len(0)?;
            }
            Ok(file)
        });
        match opened {
            Ok(file) => {
                let handle = state.handle();
                state.files.insert(handle, (ino.0, file));
                reply.opened(FileHandle(handle), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(err) => reply.error(errno(err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if self.control.blackout(false) {
            return reply.error(Errno::EIO);
        }
        let state = self.lock();
        let Some((_, file)) = state.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buffer = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return reply.error(errno(err)),
            }
        }
        reply.data(&buffer[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        if let Err(err) = state.model.will_write(ino.0, offset, data.len() as u64) {
            return reply.error(errno(err));
        }
        let Some((_, file)) = state.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(err) => reply.error(errno(err)),
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
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().files.remove(&fh.0);
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
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        match self.lock().model.sync_file(ino.0) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(err)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.control.blackout(false) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        if state.model.kind(ino.0) != Some(Kind::Dir) {
            return reply.error(Errno::ENOTDIR);
        }
        // A snapshot: entries that do not change during the listing are
        // listed exactly once, whatever else is renamed meanwhile.
        let mut entries = vec![
            (OsString::from("."), ino.0, Kind::Dir),
            (
                OsString::from(".."),
                state.model.parent(ino.0).unwrap_or(ino.0),
                Kind::Dir,
            ),
        ];
        entries.extend(state.model.children(ino.0));
        let handle = state.handle();
        state.dirs.insert(handle, entries);
        reply.opened(FileHandle(handle), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if self.control.blackout(false) {
            return reply.error(Errno::EIO);
        }
        let state = self.lock();
        let Some(entries) = state.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (index, (name, node, kind)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*node), index as u64 + 1, file_type(*kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        self.lock().model.sync_dir(ino.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let state = self.lock();
        let path = state.model.path(super::model::ROOT);
        let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: statvfs fills the struct it is given.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path and a struct to fill.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return reply.error(errno(io::Error::last_os_error()));
        }
        reply.statfs(
            stat.f_blocks,
            stat.f_bfree,
            stat.f_bavail,
            stat.f_files,
            stat.f_ffree,
            stat.f_bsize as u32,
            stat.f_namemax as u32,
            stat.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        if self.control.blackout(false) {
            return reply.error(Errno::EIO);
        }
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
        if self.control.blackout(true) {
            return reply.error(Errno::EIO);
        }
        let mut state = self.lock();
        let created = match state.model.child(parent.0, name) {
            Some(_) if flags & libc::O_EXCL != 0 => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Some(node) => {
                let path = state.model.path(node);
                open_backing(&path, OpenFlags(flags)).and_then(|file| {
                    if flags & libc::O_TRUNC != 0 {
                        state.model.will_truncate(node, 0)?;
                        file.set_len(0)?;
                    }
                    Ok((node, file))
                })
            }
            None => self.create_file(&mut state, parent.0, name, mode & !umask),
        };
        let (node, file) = match created {
            Ok(created) => created,
            Err(err) => return reply.error(errno(err)),
        };
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(err) => return reply.error(errno(err)),
        };
        let handle = state.handle();
        state.files.insert(handle, (node, file));
        reply.created(
            &TTL,
            &attr(node, &meta),
            Generation(0),
            FileHandle(handle),
            FopenFlags::FOPEN_KEEP_CACHE,
        );
    }
}
