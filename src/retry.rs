//! retry: puts quarantined files back into the drop folder once the config
//! reads them well (SPEC §5, `consent-drop retry`).
//!
//! Each file in `failed/` is first read in full against the current config,
//! as `check` would (nothing is sent): only a file that would now import
//! goes back, under its original name, where the daemon takes it as a new
//! occurrence. The move never overwrites a file of the drop folder (a hard
//! link, which fails when the name is taken, or across file systems a
//! durable copy under an ignored name, then the link) and the source is
//! removed only once the file is whole in the drop folder. The old report
//! and rejects stay in `failed/`, and the journal keeps the old occurrence,
//! so the history shows both. It never touches `archive/` or `processing/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::claim;
use crate::config::{Config, ImportMatch};
use crate::parse::Record;
use crate::pipeline;

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("{0}: not a file of failed/ ({1})")]
    NotInFailed(PathBuf, PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> RetryError + '_ {
    move |source| RetryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In the drop folder at this path.
    Back {
        to: PathBuf,
        accepted: u64,
        rejected: u64,
    },
    /// Still in `failed/`, for this reason.
    Stays(String),
}

/// The files of `failed/` (not their reports or rejects).
pub fn failed_files(config: &Config) -> Result<Vec<PathBuf>, RetryError> {
    let failed = config.state_dir.join("failed");
    match claim::proof_files_in(&failed) {
        Ok(files) => Ok(files),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(io_at(&failed)(err)),
    }
}

/// `failed/NAME` as given: relative to the working folder if it is there,
/// else to the state folder; it must be a file directly in `failed/`.
pub fn resolve(config: &Config, given: &Path) -> Result<PathBuf, RetryError> {
    let failed = config.state_dir.join("failed");
    let candidate = if given.exists() {
        given.to_path_buf()
    } else {
        config.state_dir.join(given)
    };
    let canonical = candidate.canonicalize().map_err(io_at(&candidate))?;
    let failed_canonical = failed.canonicalize().map_err(io_at(&failed))?;
    if canonical.parent() != Some(failed_canonical.as_path()) || !canonical.is_file() {
        return Err(RetryError::NotInFailed(given.to_path_buf(), failed));
    }
    Ok(canonical)
}

/// The name the file was dropped under: the report's `file_name`, else the
/// name without the `<occurrence>--` that a taken name got.
fn original_name(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = file.with_file_name(claim::fit_name(&name, ".report.json"));
    let from_report = fs::read(&report)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|value| value.get("file_name")?.as_str().map(str::to_string));
    from_report.unwrap_or_else(|| match claim::parse_processing_name(&name) {
        Some((_, original)) => original.to_string(),
        None => name,
    })
}

/// Dry-runs one file of `failed/` and, if it would now import, moves it
/// back into the drop folder.
pub fn retry_one(config: &Config, file: &Path) -> Result<Outcome, RetryError> {
    let name = original_name(file);
    let import = match config.import_for(&name) {
        ImportMatch::One(import) => import,
        ImportMatch::None => {
            return Ok(Outcome::Stays(format!(
                "{name} matches no import's pattern"
            )))
        }
        ImportMatch::Ambiguous(names) => {
            return Ok(Outcome::Stays(format!(
                "{name} matches the patterns of several imports ({})",
                names.join(", ")
            )))
        }
    };
    let print = match crate::unpack::fingerprint(
        file,
        import.format.encoding,
        import.max_decompressed_bytes,
    ) {
        Ok(print) => print,
        Err(err) => return Ok(Outcome::Stays(format!("cannot read: {err}"))),
    };
    let (mut reader, _) = pipeline::open_rows(import, file, &print).map_err(io_at(file))?;
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut first_reject = None;
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(_))) => accepted += 1,
            Ok(Some(Record::Reject(reject))) => {
                rejected += 1;
                first_reject
                    .get_or_insert_with(|| format!("line {}: {}", reject.line, reject.reason));
            }
            Err(err) => return Ok(Outcome::Stays(err.to_string())),
        }
    }
    let share = pipeline::rejected_share(accepted, rejected);
    if share > import.max_reject_ratio {
        return Ok(Outcome::Stays(format!(
            "would still be quarantined with import {:?}: {rejected} of {} rows rejected ({:.0}%, above max_reject_ratio {}); first: {}",
            import.name,
            accepted + rejected,
            share * 100.0,
            import.max_reject_ratio,
            first_reject.unwrap_or_default()
        )));
    }
    let target = config.watch.dir.join(&name);
    match put_back(config, file, &target) {
        Ok(()) => Ok(Outcome::Back {
            to: target,
            accepted,
            rejected,
        }),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(Outcome::Stays(format!(
            "{} is already in the drop folder: not overwritten",
            target.display()
        ))),
        Err(err) => Err(io_at(&target)(err)),
    }
}

/// Moves `file` to `target` without ever overwriting it; the source goes
/// only once the target is whole and its folder synced.
fn put_back(config: &Config, file: &Path, target: &Path) -> io::Result<()> {
    let sync = |path: &Path| claim::sync_dir_of(path).map_err(io::Error::other);
    match fs::hard_link(file, target) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            copy_in(config, file, target)?;
        }
        Err(err) => return Err(err),
    }
    sync(target)?;
    fs::remove_file(file)?;
    sync(file)
}

/// Across file systems: a durable copy under a name the daemon ignores,
/// then a link to the final name (which fails if it is taken).
fn copy_in(config: &Config, file: &Path, target: &Path) -> io::Result<()> {
    let temporary_name = format!(".retry-{}.tmp", uuid::Uuid::new_v4().simple());
    if !config.watch.is_ignored(&temporary_name) {
        return Err(io::Error::other(format!(
            "the drop folder is on another file system and watch.ignore does not ignore {temporary_name:?} (add \".*\"): move the file by hand"
        )));
    }
    let temporary = target.with_file_name(&temporary_name);
    let result = (|| {
        let mut input = claim::open_regular(file)?;
        let mut output = fs::File::create(&temporary)?;
        io::copy(&mut input, &mut output)?;
        output.sync_all()?;
        fs::hard_link(&temporary, target)
    })();
    let _ = fs::remove_file(&temporary);
    result
}
