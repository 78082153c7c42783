//! Claims and recovery: a ready file moved into `processing/` and recorded,
//! inside its own task; at start, the occurrences the journal left
//! unfinished and the files in `processing/` it does not know.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::DaemonError;
use crate::claim;
use crate::config::{Config, Import, ImportMatch};
use crate::journal::Status;
use crate::pipeline::{self, Context, PipelineError, Report, Work};

/// How a file's task ended.
pub(super) enum TaskEnd {
    /// Claimed, then processed (or not, on an error of ours).
    Processed(Work, Box<Result<Report, PipelineError>>),
    /// Not claimed: it vanished, or the claim failed (logged).
    NotClaimed(String),
}

/// The import a ready name belongs to; `None` leaves it in the drop folder
/// (said once per name).
pub(super) fn import_of(
    config: &Config,
    name: &str,
    warned: &mut HashSet<String>,
) -> Option<Arc<Import>> {
    match config.import_for(name) {
        ImportMatch::One(import) => Some(import.clone()),
        ImportMatch::None => {
            if warned.insert(name.to_string()) {
                tracing::warn!(file = %name, "the name matches no import's pattern: left in the drop folder");
            }
            None
        }
        ImportMatch::Ambiguous(names) => {
            if warned.insert(name.to_string()) {
                tracing::error!(file = %name, imports = %names.join(", "),
                    "the name matches the patterns of several imports: left in the drop folder, never guessed at");
            }
            None
        }
    }
}

/// Claims `source` as `work` (rename, both folders synced, journal entry
/// committed, in that order), then runs it through the pipeline. A small
/// file is fingerprinted while the folders are synced, and its fingerprint
/// is recorded in the claim's journal write.
pub(super) async fn claim_and_process(ctx: Context, source: PathBuf, work: Work) -> TaskEnd {
    let id = work.occurrence_id.clone();
    let name = source
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let destination = ctx.dirs.processing_path(&id, &name);
    let moved = {
        let (source, destination) = (source.clone(), destination.clone());
        tokio::task::spawn_blocking(move || {
            let size = std::fs::symlink_metadata(&source).map_or(u64::MAX, |meta| meta.len());
            claim::claim_move_unsynced(&source, &destination).map(|()| size)
        })
        .await
    };
    let size = match moved {
        Ok(Ok(size)) => size,
        Ok(Err(err)) => {
            // If the file is still there, our side failed (full disk,
            // permissions) and the next rescan finds it again.
            if source.exists() {
                tracing::error!(file = %name, %err, "cannot claim the file: left in the drop folder, tried again at the next rescan");
            }
            return TaskEnd::NotClaimed(id);
        }
        Err(err) => {
            tracing::error!(file = %name, %err, "the claim stopped unexpectedly");
            return TaskEnd::NotClaimed(id);
        }
    };
    // A small file's events are soon there: small requests wait for them.
    let coming = pipeline::coming(&ctx, &work, &name, size);
    let reading = pipeline::start_fingerprint(&work, &destination, &name, size);
    if let Err(err) = ctx.dir_sync.sync_dirs_of(&[&destination, &source]).await {
        tracing::error!(file = %name, %err, "claimed, but the folders could not be synced: it is adopted at the next start");
        return TaskEnd::NotClaimed(id);
    }
    // Unreadable now: the pipeline's fingerprint step reads it again and says why.
    let fingerprint = match reading {
        Some(task) => task.await.ok().and_then(Result::ok),
        None => None,
    };
    let recorded = {
        let (id, import, name, destination) = (
            id.clone(),
            work.import.name.clone(),
            name.clone(),
            destination.clone(),
        );
        let print = fingerprint
            .as_ref()
            .map(|print| (print.sha256.clone(), print.size));
        ctx.record(move |journal| {
            journal.record_claim(&id, &import, &name, &destination, &pipeline::now_rfc3339())?;
            match print {
                Some((sha256, size)) => journal.record_fingerprint(&id, &sha256, size),
                None => Ok(()),
            }
        })
        .await
    };
    if let Err(err) = recorded {
        // The file is safe in processing/; the next start adopts it.
        tracing::error!(file = %name, %err, "claimed, but the journal could not record it: it is adopted at the next start");
        return TaskEnd::NotClaimed(id);
    }
    ctx.counters.files_claimed.fetch_add(1, Ordering::Relaxed);
    tracing::info!(occurrence = %id, import = %work.import.name, file = %name, "claimed");
    let result = pipeline::process_claimed(&ctx, &work, coming, fingerprint).await;
    TaskEnd::Processed(work, Box::new(result))
}

/// Occurrences to resume, and files in `processing/` the journal does not
/// know (a crash between claim and journal entry), adopted.
pub(super) fn recover(ctx: &Context, config: &Config) -> Result<Vec<Work>, DaemonError> {
    let mut works = Vec::new();
    let unfinished = ctx.journal().unfinished()?;
    let mut known: HashSet<String> = HashSet::new();
    for occurrence in unfinished {
        known.insert(occurrence.id.clone());
        if pipeline::settle_moved(ctx, &occurrence)? {
            continue;
        }
        if !occurrence.processing_path.exists() {
            tracing::error!(occurrence = %occurrence.id, file = %occurrence.file_name,
                "the file is gone from processing/ (removed by hand?): marked failed");
            ctx.journal().record_outcome(
                &occurrence.id,
                Status::Failed,
                Some("the file vanished from processing/"),
                &pipeline::now_rfc3339(),
            )?;
            continue;
        }
        match config.import_named(&occurrence.import) {
            Some(import) => {
                tracing::info!(occurrence = %occurrence.id, import = %occurrence.import,
                    file = %occurrence.file_name, acked = occurrence.batches_acked, "resuming");
                works.push(Work {
                    occurrence_id: occurrence.id.clone(),
                    import: import.clone(),
                });
            }
            None => tracing::error!(occurrence = %occurrence.id, import = %occurrence.import,
                "its import is no longer configured: the file waits in processing/"),
        }
    }
    let entries =
        std::fs::read_dir(&ctx.dirs.processing).map_err(|source| claim::ClaimError::Io {
            path: ctx.dirs.processing.clone(),
            source,
        })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".claiming") {
            // An interrupted copy: its original is still in the drop folder
            // (or the operator's, for `import`). A copy still being written
            // (an `import` beside the daemon) is left alone.
            claim::remove_if_abandoned(&entry.path());
            continue;
        }
        let Some((id, original)) = claim::parse_processing_name(&name) else {
            continue;
        };
        if known.contains(id) || ctx.journal().get(id)?.is_some() {
            continue;
        }
        let ImportMatch::One(import) = config.import_for(original) else {
            tracing::error!(file = %name, "a file in processing/ matches no single import: it waits there");
            continue;
        };
        ctx.journal().record_claim(
            id,
            &import.name,
            original,
            &entry.path(),
            &pipeline::now_rfc3339(),
        )?;
        tracing::info!(occurrence = %id, file = %original, "adopted from processing/");
        works.push(Work {
            occurrence_id: id.to_string(),
            import: import.clone(),
        });
    }
    Ok(works)
}
