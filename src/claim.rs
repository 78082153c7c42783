//! claim: moves files between the drop folder and the state folder, durably.
//!
//! Owns the on-disk life of a proof file: the claim into `processing/`
//! (an atomic rename, or copy + fsync + unlink across file systems), and the
//! final move into `archive/YYYY-MM-DD/` or `failed/` beside its report.
//! Every move is followed by an fsync of the folders involved. It never
//! deletes a proof file, and never opens one through a symbolic link.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::parse::{Bom, ContentProbe};

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ClaimError + '_ {
    move |source| ClaimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folders of the state directory.
#[derive(Debug, Clone)]
pub struct StateDirs {
    pub root: PathBuf,
    /// Claimed files, until their last batch is acknowledged.
    pub processing: PathBuf,
    /// Delivered files, by day, with their reports.
    pub archive: PathBuf,
    /// Quarantined or unreadable files, with their reports.
    pub failed: PathBuf,
    /// Scratch files of files in flight (rejects being collected).
    pub work: PathBuf,
}

impl StateDirs {
    pub fn create(root: &Path) -> Result<StateDirs, ClaimError> {
        let dirs = StateDirs {
            root: root.to_path_buf(),
            processing: root.join("processing"),
            archive: root.join("archive"),
            failed: root.join("failed"),
            work: root.join("work"),
        };
        for dir in [
            &dirs.root,
            &dirs.processing,
            &dirs.archive,
            &dirs.failed,
            &dirs.work,
        ] {
            create_dir_durably(dir)?;
        }
        Ok(dirs)
    }

    /// Where a claimed file lives: its occurrence id, `--`, its original
    /// name (shortened to fit a file name; the journal keeps it whole).
    pub fn processing_path(&self, occurrence_id: &str, file_name: &str) -> PathBuf {
        let name = format!("{occurrence_id}--{file_name}");
        self.processing.join(fit_name(&name, ""))
    }

    pub fn rejects_work_path(&self, occurrence_id: &str) -> PathBuf {
        self.work.join(format!("{occurrence_id}.rejects.csv"))
    }
}

/// Splits a `processing/` name back into occurrence id and original name.
pub fn parse_processing_name(name: &str) -> Option<(&str, &str)> {
    let (id, original) = name.split_once("--")?;
    uuid::Uuid::parse_str(id).ok()?;
    (!original.is_empty()).then_some((id, original))
}

/// Moves a ready file from the drop folder into `processing/`.
pub fn claim_move(source: &Path, destination: &Path) -> Result<(), ClaimError> {
    claim_move_unsynced(source, destination)?;
    sync_dir_of(destination)?;
    sync_dir_of(source)
}

/// [`claim_move`] without the folder fsyncs: the caller syncs both
/// folders (the daemon shares those fsyncs between files) before it
/// records the claim.
pub fn claim_move_unsynced(source: &Path, destination: &Path) -> Result<(), ClaimError> {
    match fs::rename(source, destination) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            copy_durably(source, destination)?;
            fs::remove_file(source).map_err(io_at(source))
        }
        Err(err) => Err(io_at(source)(err)),
    }
}

/// Copies a file into `processing/` and leaves the original in place (the
/// `import` command: the operator's own file is not ours to move). Returns
/// the fingerprint of the bytes copied: the file is read once, and what is
/// hashed is what was written, whatever happens to the original meanwhile.
pub fn claim_copy(source: &Path, destination: &Path) -> Result<Fingerprint, ClaimError> {
    let input = open_regular(source).map_err(io_at(source))?;
    let mut fingerprint = None;
    replace_durably(destination, "claiming", |output| {
        fingerprint = Some(copy_fingerprinted(&input, output)?);
        Ok(())
    })?;
    sync_dir_of(destination)?;
    fingerprint.ok_or_else(|| io_at(source)(io::Error::other("the copy made no fingerprint")))
}

/// The copy goes this many bytes at a time; the hashing thread reads each
/// stretch back (from the page cache) while the kernel copies the next.
const COPY_STRETCH: u64 = 8 << 20;
const HASH_READ: usize = 1 << 20;

/// Copies `input` to `output` in the kernel (`copy_file_range`, through
/// `io::copy`), while a second thread reads back and hashes what is already
/// copied: SHA-256 costs as much as the copy, so each runs on its own core,
/// and what is hashed is the copy itself.
fn copy_fingerprinted(input: &File, output: &File) -> io::Result<Fingerprint> {
    use std::sync::mpsc;
    let (copied_to, to_hash) = mpsc::channel::<u64>();
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || hash_as_copied(output, &to_hash));
        let copied = (|| {
            let mut total = 0u64;
            loop {
                let stretch = io::copy(&mut input.take(COPY_STRETCH), &mut &*output)?;
                if stretch == 0 {
                    // The hasher is still reading the last stretches: the
                    // copy's writeback runs meanwhile rather than after it
                    // (the caller's fsync then finds nothing left to write).
                    return output.sync_data();
                }
                total += stretch;
                // A hasher gone has failed: its join below says why.
                let _ = copied_to.send(total);
            }
        })();
        drop(copied_to);
        let hashed = hasher
            .join()
            .map_err(|_| io::Error::other("the hashing thread stopped"))?;
        copied.and(hashed)
    })
}

/// Reads `copy` back up to each length received, hashing it.
fn hash_as_copied(
    copy: &File,
    lengths: &std::sync::mpsc::Receiver<u64>,
) -> io::Result<Fingerprint> {
    use std::os::unix::fs::FileExt;
    let mut print = Fingerprinting::new();
    let mut buffer = vec![0u8; HASH_READ];
    for length in lengths {
        while print.size < length {
            let want =
                usize::try_from(length - print.size).map_or(HASH_READ, |left| left.min(HASH_READ));
            let read = match copy.read_at(&mut buffer[..want], print.size) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the copy is shorter than copied",
                    ))
                }
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            print.feed(&buffer[..read]);
        }
    }
    Ok(print.finish())
}

/// Copy to a temporary name, fsync, then rename: the destination is either
/// absent or whole.
fn copy_durably(source: &Path, destination: &Path) -> Result<(), ClaimError> {
    let mut input = open_regular(source).map_err(io_at(source))?;
    replace_durably(destination, "claiming", |output| {
        io::copy(&mut input, output).map(drop)
    })
}

/// Fills a temporary file beside `destination`, fsyncs it and renames it
/// into place: see [`fill_and_rename`].
fn replace_durably(
    destination: &Path,
    suffix: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), ClaimError> {
    let temporary = temporary_beside(destination, suffix);
    fill_and_rename(&temporary, destination, fill).map_err(io_at(destination))
}

/// Fills `temporary`, fsyncs it and renames it to `destination`, so that
/// `destination` is either absent or whole; the caller syncs the folder.
/// On failure `temporary` is removed: a full disk must not keep half
/// files. Its writer locks it until the rename (see
/// [`remove_if_abandoned`]); it is readable too, for `claim_copy`, which
/// hashes the copy as it is written.
pub fn fill_and_rename(
    temporary: &Path,
    destination: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(temporary);
    let written = created.and_then(|mut file| {
        lock(&file, libc::LOCK_EX | libc::LOCK_NB);
        fill(&mut file)?;
        file.sync_all()?;
        fs::rename(temporary, destination)
    });
    if written.is_err() {
        let _ = fs::remove_file(temporary);
    }
    written
}

/// Removes a temporary file left by an interrupted copy, unless its writer
/// still holds it (an `import` beside the daemon copies into `processing/`
/// too): every temporary is locked by its writer until its rename. Whether
/// it was removed.
pub fn remove_if_abandoned(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    lock(&file, libc::LOCK_EX | libc::LOCK_NB) && fs::remove_file(path).is_ok()
}

/// `flock(2)`: whether the lock was taken.
fn lock(file: &File, operation: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; flock only changes its lock.
    unsafe { libc::flock(file.as_raw_fd(), operation) == 0 }
}

/// Opens a regular file for reading, refusing symbolic links (`O_NOFOLLOW`)
/// and anything that is not a regular file, without blocking on FIFOs.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// What the content of a file is, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub sha256: String,
    pub size: u64,
    /// Whether the whole file is valid UTF-8 (resolves `encoding = "auto"`).
    pub is_utf8: bool,
    /// The byte-order mark the file starts with (says UTF-16 LE or BE).
    pub bom: Option<Bom>,
}

pub fn fingerprint(path: &Path) -> io::Result<Fingerprint> {
    let mut file = open_regular(path)?;
    let mut print = Fingerprinting::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        print.feed(&buffer[..read]);
    }
    Ok(print.finish())
}

/// A [`Fingerprint`] being computed, chunk by chunk.
struct Fingerprinting {
    hasher: Sha256,
    probe: ContentProbe,
    size: u64,
}

impl Fingerprinting {
    fn new() -> Fingerprinting {
        Fingerprinting {
            hasher: Sha256::new(),
            probe: ContentProbe::new(),
            size: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.probe.feed(chunk);
        self.size += chunk.len() as u64;
    }

    fn finish(self) -> Fingerprint {
        Fingerprint {
            sha256: hex(&self.hasher.finalize()),
            size: self.size,
            is_utf8: self.probe.is_utf8(),
            bom: self.probe.bom(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 15) as usize] as char);
    }
    text
}

/// Longest file name most file systems take, in bytes.
const NAME_MAX: usize = 255;

/// `name` + `suffix` within [`NAME_MAX`]: a long name keeps its start and
/// its extension.
pub fn fit_name(name: &str, suffix: &str) -> String {
    if name.len() + suffix.len() <= NAME_MAX {
        return format!("{name}{suffix}");
    }
    let extension = match name.rfind('.') {
        Some(dot) if name.len() - dot <= 16 => &name[dot..],
        _ => "",
    };
    let mut keep = NAME_MAX - suffix.len() - extension.len() - 1;
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}~{extension}{suffix}", &name[..keep])
}

/// Where a finished file and its report go.
#[derive(Debug, Clone)]
pub struct Placement {
    pub file: PathBuf,
    pub report: PathBuf,
    pub rejects: PathBuf,
}

/// Chooses free names in `dir` for the file, its report and its rejects:
/// the original name, or `<occurrence>--<name>` when that is taken.
pub fn choose_placement(dir: &Path, file_name: &str, occurrence_id: &str) -> Placement {
    let placement = |name: &str| Placement {
        file: dir.join(fit_name(name, "")),
        report: dir.join(fit_name(name, ".report.json")),
        rejects: dir.join(fit_name(name, ".rejects.csv")),
    };
    let plain = placement(file_name);
    // A report of this same occurrence, left by a crash before its file
    // moved, is rewritten rather than left beside no file.
    let ours = || {
        fs::read(&plain.report)
            .ok()
            .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
            .is_some_and(|report| report["occurrence_id"] == occurrence_id)
    };
    if plain.file.exists() || (plain.report.exists() && !ours()) {
        placement(&format!("{occurrence_id}--{file_name}"))
    } else {
        plain
    }
}

/// A short unique name in the same folder (so the final rename is atomic),
/// whatever the length of the final name.
fn temporary_beside(path: &Path, suffix: &str) -> PathBuf {
    let name = format!("{}.{suffix}", uuid::Uuid::new_v4().simple());
    match path.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// The proof files of an outcome folder (`failed/` or an archive day),
/// sorted: not the reports and rejects that [`choose_placement`] puts
/// beside them.
pub fn proof_files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let companion = name.ends_with(".report.json") || name.ends_with(".rejects.csv");
        if !companion && entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Writes a small file durably: temporary name, fsync, rename, fsync folder.
pub fn write_durably(path: &Path, content: &[u8]) -> Result<(), ClaimError> {
    write_synced(path, content)?;
    sync_dir_of(path)
}

/// [`write_durably`] without the folder fsync, which the caller does (shared
/// with other files) before relying on the file.
pub fn write_synced(path: &Path, content: &[u8]) -> Result<(), ClaimError> {
    replace_durably(path, "writing", |file| file.write_all(content))
}

/// A rename within the state folder; the caller syncs both folders.
pub fn rename(source: &Path, destination: &Path) -> Result<(), ClaimError> {
    fs::rename(source, destination).map_err(io_at(source))
}

/// Moves a file within the state folder (same file system) durably.
pub fn move_durably(source: &Path, destination: &Path) -> Result<(), ClaimError> {
    if let Some(parent) = destination.parent() {
        create_dir_durably(parent)?;
    }
    fs::rename(source, destination).map_err(io_at(source))?;
    sync_dir_of(destination)?;
    sync_dir_of(source)
}

/// Creates `dir` and its missing parents, each new folder made durable:
/// an fsync of the folder that holds it, or a power cut takes the folder
/// back, and everything moved into it since.
pub fn create_dir_durably(dir: &Path) -> Result<(), ClaimError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // Made meanwhile by another file's finish: synced here too.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(err) => return Err(io_at(dir)(err)),
    }
    // The new folder's name is durable only once its parent is synced.
    sync_dir_of(dir)
}

pub fn sync_dir_of(path: &Path) -> Result<(), ClaimError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(io_at(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_to_fit_with_their_extension() {
        let long = format!("pr-{}.csv", "é".repeat(200));
        let fitted = fit_name(&long, ".report.json");
        assert!(fitted.len() <= NAME_MAX, "{}", fitted.len());
        assert!(fitted.ends_with("~.csv.report.json"), "{fitted}");
        assert_eq!(fit_name("a.csv", ".report.json"), "a.csv.report.json");
    }

    #[test]
    fn a_failed_durable_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.report.json");
        write_durably(&path, b"{}").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
        // A folder in the way (not empty): the final rename fails.
        let blocked = dir.path().join("blocked.report.json");
        std::fs::create_dir_all(blocked.join("inside")).expect("mkdir");
        let err = write_durably(&blocked, b"{}").expect_err("a folder is in the way");
        assert!(err.to_string().contains("blocked.report.json"), "{err}");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["blocked.report.json", "x.report.json"]);
    }

    #[test]
    fn processing_names_round_trip() {
        let id = "6f1c3c3e-8e3b-4d0c-9f4e-2b7a0c1d2e3f";
        let name = format!("{id}--pr-a--b.csv");
        assert_eq!(parse_processing_name(&name), Some((id, "pr-a--b.csv")));
        assert_eq!(parse_processing_name("pr-a--b.csv"), None);
    }

    #[test]
    fn fingerprint_hashes_and_detects_utf8() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.csv");
        fs::write(&path, "test").expect("write");
        let print = fingerprint(&path).expect("fingerprint");
        assert_eq!(
            print.sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(print.size, 4);
        assert!(print.is_utf8);
        fs::write(&path, b"caf\xe9").expect("write");
        assert!(!fingerprint(&path).expect("fingerprint").is_utf8);
    }

    #[test]
    fn a_copy_is_whole_and_its_fingerprint_is_of_the_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("big.csv");
        // Several stretches, and a last one cut short.
        let content: Vec<u8> = (0..(HASH_READ * 3 + COPY_STRETCH as usize * 2 + 12_345))
            .map(|i| b"abc;\n\xe9"[i % 6])
            .collect();
        fs::write(&source, &content).expect("write");
        let destination = dir.path().join("copy.csv");
        let print = claim_copy(&source, &destination).expect("copy");
        assert_eq!(fs::read(&destination).expect("read"), content);
        assert_eq!(print, fingerprint(&destination).expect("fingerprint"));
        assert_eq!(print.size, content.len() as u64);
        assert!(!print.is_utf8, "a lone \\xe9 is not UTF-8");
        assert!(source.exists(), "the operator's file stays");
        let empty = dir.path().join("empty.csv");
        fs::write(&empty, "").expect("write");
        let print = claim_copy(&empty, &dir.path().join("empty-copy.csv")).expect("copy");
        assert_eq!(print, fingerprint(&empty).expect("fingerprint"));
    }

    #[test]
    fn a_temporary_is_removed_only_once_its_writer_let_it_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let temporary = dir.path().join("0123.claiming");
        let writer = File::create(&temporary).expect("create");
        assert!(lock(&writer, libc::LOCK_EX | libc::LOCK_NB));
        assert!(
            !remove_if_abandoned(&temporary),
            "its writer still holds it"
        );
        assert!(temporary.exists());
        drop(writer);
        assert!(remove_if_abandoned(&temporary), "abandoned");
        assert!(!temporary.exists());
        assert!(!remove_if_abandoned(&temporary), "already gone");
    }

    #[test]
    fn symbolic_links_and_fifos_are_never_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("secret");
        fs::write(&target, "x").expect("write");
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(open_regular(&link).is_err());
        let fifo = dir.path().join("fifo.csv");
        let c_path = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert!(open_regular(&fifo).is_err());
    }

    #[test]
    fn claim_moves_and_placement_avoids_overwriting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = StateDirs::create(&dir.path().join("state")).expect("dirs");
        let source = dir.path().join("a.csv");
        fs::write(&source, "x").expect("write");
        let destination = dirs.processing_path("6f1c3c3e-8e3b-4d0c-9f4e-2b7a0c1d2e3f", "a.csv");
        claim_move(&source, &destination).expect("claim");
        assert!(!source.exists());
        assert_eq!(fs::read(&destination).expect("read"), b"x");
        let first = choose_placement(&dirs.archive, "a.csv", "o1");
        assert_eq!(first.file, dirs.archive.join("a.csv"));
        fs::write(&first.file, "x").expect("write");
        let second = choose_placement(&dirs.archive, "a.csv", "o2");
        assert_eq!(second.file, dirs.archive.join("o2--a.csv"));
    }

    /// A crash after a file's report was written, before the file moved:
    /// finishing again rewrites that report, never leaves it beside no file.
    #[test]
    fn regression_a_report_left_by_a_crash_is_rewritten_not_orphaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("b.csv.report.json");
        fs::write(&report, r#"{"occurrence_id": "o1"}"#).expect("write");
        let again = choose_placement(dir.path(), "b.csv", "o1");
        assert_eq!(again.file, dir.path().join("b.csv"));
        assert_eq!(again.report, report);
        let other = choose_placement(dir.path(), "b.csv", "o2");
        assert_eq!(other.file, dir.path().join("o2--b.csv"));
    }
}
