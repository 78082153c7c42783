//! A power-cut file system for tests: FUSE (the `fuser` crate, its own
//! mount code, so no libfuse), passing every call through to a backing
//! folder while [`model::Model`] records what was made durable (`fsync` and
//! `fdatasync` of files, `fsync` of folders for creates, renames and
//! unlinks). [`PowerCutFs::power_cut`] unmounts and rebuilds the backing
//! folder as a power loss would leave it; the next [`PowerCutFs::mount`]
//! starts from there.
//!
//! It runs in the test's own process, on a thread of the FUSE session: the
//! test arms the cut and reads the operation count directly, without a
//! protocol to a helper process. The programs under test are other
//! processes (the real binary), so the mount never calls back into the
//! thread that serves it.
//!
//! The cut is armed with an operation count: before the N-th changing
//! operation (write, truncate, create, mkdir, rename, unlink, rmdir, fsync,
//! fsyncdir) the power goes: the processes registered as victims get
//! SIGKILL, and that operation and every later one fail with EIO without
//! touching anything. SQLite works on it: files are opened without
//! `direct_io` and keep their page cache, so the WAL index (`-shm`) can be
//! mmap'd; POSIX locks are left to the kernel, which keeps them locally.
//!
//! Mounting needs `/dev/fuse` and root (or `fusermount3`, from Debian's
//! `fuse3`); [`fuse_unavailable`] says why it cannot run here.
#![allow(dead_code)]

#[path = "powercut_model.rs"]
pub mod model;
#[path = "powercut_fs/ops.rs"]
mod ops;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};

use model::{CutSummary, Kind, Model, NodeId};

const TTL: Duration = Duration::from_secs(1);

/// Why FUSE cannot be used here, if it cannot.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let helper = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|path| Path::new(path).exists());
    if !root && !helper {
        return Some("not root and no fusermount3 (Debian package fuse3)".into());
    }
    None
}

/// The cut: the operation count, when to cut, whom to kill.
#[derive(Default)]
struct Control {
    ops: AtomicU64,
    /// Cut before this operation (0: not armed).
    cut_at: AtomicU64,
    cut: AtomicBool,
    victims: Mutex<Vec<i32>>,
}

impl Control {
    /// Whether the power is out; counts a changing operation, and cuts
    /// when it is the armed one.
    fn blackout(&self, changes: bool) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            return true;
        }
        if changes {
            let count = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
            let at = self.cut_at.load(Ordering::SeqCst);
            if at != 0 && count >= at {
                self.cut();
                return true;
            }
        }
        false
    }

    fn cut(&self) {
        if self.cut.swap(true, Ordering::SeqCst) {
            return;
        }
        for pid in self
            .victims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            // SAFETY: kill(2) on a pid the test registered.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
}

struct State {
    model: Model,
    next_handle: u64,
    files: HashMap<u64, (NodeId, File)>,
    dirs: HashMap<u64, Vec<(OsString, NodeId, Kind)>>,
}

impl State {
    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }
}

struct PowerCutFilesystem {
    control: Arc<Control>,
    state: Arc<Mutex<State>>,
}

/// A mounted power-cut file system.
pub struct PowerCutFs {
    session: Option<BackgroundSession>,
    control: Arc<Control>,
    state: Arc<Mutex<State>>,
    /// Where the programs see it.
    pub mountpoint: PathBuf,
    work: PathBuf,
}

impl PowerCutFs {
    /// Mounts `work/backing` at `work/mnt` (both created if needed); what
    /// the backing folder holds now is durable.
    pub fn mount(work: &Path) -> io::Result<PowerCutFs> {
        let (backing, mountpoint) = (work.join("backing"), work.join("mnt"));
        let (shadows, graves) = (work.join("shadows"), work.join("graves"));
        for dir in [&shadows, &graves] {
            if dir.exists() {
                fs::remove_dir_all(dir)?;
            }
        }
        for dir in [&backing, &mountpoint, &shadows, &graves] {
            fs::create_dir_all(dir)?;
        }
        let model = Model::load(&backing, &shadows, &graves)?;
        let control = Arc::new(Control::default());
        let state = Arc::new(Mutex::new(State {
            model,
            next_handle: 0,
            files: HashMap::new(),
            dirs: HashMap::new(),
        }));
        let filesystem = PowerCutFilesystem {
            control: control.clone(),
            state: state.clone(),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powercut".into())];
        config.n_threads = Some(1);
        let session = fuser::spawn_mount(filesystem, &mountpoint, &config)?;
        Ok(PowerCutFs {
            session: Some(session),
            control,
            state,
            mountpoint,
            work: work.to_path_buf(),
        })
    }

    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// Changing operations so far in this mount.
    pub fn ops(&self) -> u64 {
        self.control.ops.load(Ordering::SeqCst)
    }

    /// The power goes before the `after`-th changing operation from now.
    pub fn arm(&self, after: u64) {
        let at = self.ops() + after.max(1);
        self.control.cut_at.store(at, Ordering::SeqCst);
    }

    /// Killed with SIGKILL at the cut.
    pub fn add_victim(&self, pid: u32) {
        let mut victims = self
            .control
            .victims
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        victims.push(pid as i32);
    }

    pub fn is_cut(&self) -> bool {
        self.control.cut.load(Ordering::SeqCst)
    }

    /// The power goes now.
    pub fn cut_now(&self) {
        self.control.cut();
    }

    /// Everything as it is now becomes durable (setting up a test).
    pub fn sync_everything(&self) -> io::Result<()> {
        self.lock().model.sync_everything()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the power (if the armed cut has not come), unmounts, and
    /// rebuilds the backing folder as the power loss leaves it. The victims
    /// must be reaped by the caller before (they hold files open).
    pub fn power_cut(mut self, random: &mut dyn FnMut() -> u64) -> io::Result<CutSummary> {
        self.cut_now();
        self.unmount()?;
        let next = self.work.join("after-cut");
        if next.exists() {
            fs::remove_dir_all(&next)?;
        }
        fs::create_dir(&next)?;
        let summary = self.lock().model.crash_image(&next, random)?;
        let backing = self.work.join("backing");
        fs::remove_dir_all(&backing)?;
        fs::rename(&next, &backing)?;
        Ok(summary)
    }

    /// Unmounts without a cut: the backing folder stays as it is.
    pub fn unmount(&mut self) -> io::Result<()> {
        if let Some(session) = self.session.take() {
            if let Err(err) = session.umount_and_join() {
                // Busy: detach it, it goes once the last file closes.
                let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                    .map_err(io::Error::other)?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        self.cut_now();
        let _ = self.unmount();
    }
}

// ------------------------------------------------------------ FUSE calls
