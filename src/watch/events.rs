//! watch::events: the `notify` watcher of the drop folder (top level
//! only) and what its events mean for readiness, as [`Hint`]s. It never
//! looks at a file: a hint only says which name to look at again.

use std::path::Path;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedReceiver;

use super::WatchError;

/// What the watcher saw, reduced to what readiness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A new name: written next by its creator, or complete already (an
    /// SFTP server carries out a rename as `link` + `unlink`).
    Created(String),
    /// Written to: someone is writing.
    Written(String),
    /// Attributes changed (chmod, times): the content did not.
    Touched(String),
    /// Closed after writing.
    Closed(String),
    /// Renamed into the folder: complete as it appears.
    Arrived(String),
    /// Events may have been lost: scan the folder again.
    Rescan,
}

/// Starts watching `dir` (top level only). Keep the returned watcher alive.
pub fn start(
    dir: &Path,
) -> Result<(notify::RecommendedWatcher, UnboundedReceiver<Hint>), WatchError> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        let hints = match result {
            Ok(event) => hints_of(&event),
            Err(_) => vec![Hint::Rescan],
        };
        for hint in hints {
            let _ = sender.send(hint);
        }
    })
    .map_err(|err| watch_error(dir, err))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|err| watch_error(dir, err))?;
    Ok((watcher, receiver))
}

fn watch_error(dir: &Path, err: notify::Error) -> WatchError {
    let limit_reached = match &err.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        // inotify_add_watch says ENOSPC for the same limit.
        notify::ErrorKind::Io(io) => io.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    };
    let message = if limit_reached {
        "the inotify watch limit is reached: raise it with `sysctl fs.inotify.max_user_watches=524288`".to_string()
    } else {
        err.to_string()
    };
    WatchError::Watch {
        path: dir.to_path_buf(),
        message,
    }
}

fn hints_of(event: &notify::Event) -> Vec<Hint> {
    if event.need_rescan() {
        return vec![Hint::Rescan];
    }
    let names = || {
        event
            .paths
            .iter()
            .filter_map(|path| path.file_name())
            // Names that are not UTF-8 are reported by the scan.
            .filter_map(|name| name.to_str().map(str::to_string))
    };
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            names().map(Hint::Closed).collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => names().map(Hint::Arrived).collect(),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event
            .paths
            .last()
            .and_then(|path| path.file_name())
            .and_then(|name| name.to_str())
            .map(|name| vec![Hint::Arrived(name.to_string())])
            .unwrap_or_default(),
        EventKind::Create(CreateKind::File | CreateKind::Any) => {
            names().map(Hint::Created).collect()
        }
        EventKind::Modify(ModifyKind::Metadata(_)) => names().map(Hint::Touched).collect(),
        EventKind::Modify(_) => names().map(Hint::Written).collect(),
        _ => Vec::new(),
    }
}
