//! commands::import: `import`: one file now, through the daemon's pipeline.
//! The operator's file is copied into `processing/`, never moved.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    file_name_of, import_for_file, io_at, load_config, one_thread_runtime, stdout_error,
    CommandError, Exit,
};
use crate::claim::{self, StateDirs};
use crate::journal::Journal;
use crate::metrics::{Counters, Metrics};
use crate::pipeline::{self, Context, Report, Verdict, Work};
use crate::sink::Sink;
use crate::unpack;

pub struct ImportOptions<'a> {
    pub config: Option<&'a Path>,
    pub file: &'a Path,
    pub import: Option<&'a str>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// One file now, through the same pipeline as the daemon. The operator's
/// file is copied into `processing/`, never moved.
pub fn import(options: &ImportOptions<'_>, out: &mut dyn Write) -> Result<Exit, CommandError> {
    let config = load_config(options.config)?;
    let import = import_for_file(&config, options.file, options.import)?.clone();
    let file_name = file_name_of(options.file)?;
    claim::open_regular(options.file).map_err(io_at(options.file))?;
    let dirs = StateDirs::create(&config.state_dir)?;
    let journal = Journal::open(&dirs.root)?;
    let occurrence_id = uuid::Uuid::new_v4().to_string();
    let processing = dirs.processing_path(&occurrence_id, &file_name);
    let copied = claim::claim_copy(options.file, &processing)?;
    journal.record_claim(
        &occurrence_id,
        &import.name,
        &file_name,
        &processing,
        &pipeline::now_rfc3339(),
    )?;
    // A packed file's fingerprint also probes its content: the pipeline's
    // fingerprint step reads that.
    let fingerprint = (unpack::Packing::of(&file_name) == unpack::Packing::Plain).then_some(copied);
    if let Some(print) = &fingerprint {
        journal.record_fingerprint(&occurrence_id, &print.sha256, print.size)?;
    }

    let runtime = one_thread_runtime()?;
    let shutdown = CancellationToken::new();
    let report = runtime.block_on(async {
        let counters = Arc::new(Counters::default());
        let metrics = Metrics::new(counters.clone());
        let sink = Sink::from_settings(&config.sink, shutdown.clone(), metrics)?;
        let ctx = Context::new(
            dirs,
            journal,
            sink,
            config.sink.batch_size(),
            shutdown.clone(),
            counters,
        )?;
        let on_interrupt = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_interrupt.cancel();
            }
        });
        let bar = (options.progress && std::io::stderr().is_terminal())
            .then(|| spawn_progress_bar(ctx.counters.clone(), ctx.batch_size as u64));
        let work = Work {
            occurrence_id: occurrence_id.clone(),
            import,
        };
        let result = pipeline::process_claimed(&ctx, &work, None, fingerprint).await;
        if let Some((bar, task)) = bar {
            task.abort();
            bar.finish_and_clear();
        }
        result.map_err(CommandError::from)
    })?;

    print_report(out, options.file, &report)?;
    Ok(match report.status {
        Verdict::Archived if report.rows_rejected + report.rows_refused > 0 => Exit::Rejected,
        Verdict::Archived | Verdict::Duplicate => Exit::Success,
        Verdict::Quarantined => Exit::Rejected,
        Verdict::Failed | Verdict::Interrupted => Exit::Failure,
    })
}

/// The outcome in a few lines: counts, then the reason and where the file
/// and its rejects went.
fn print_report(out: &mut dyn Write, file: &Path, report: &Report) -> Result<(), CommandError> {
    writeln!(
        out,
        "{}: {:?}, {} accepted, {} rejected, {} refused, {} delivered (occurrence {})",
        file.display(),
        report.status,
        report.rows_accepted,
        report.rows_rejected,
        report.rows_refused,
        report.rows_delivered,
        report.occurrence_id
    )
    .map_err(stdout_error)?;
    if let Some(reason) = &report.reason {
        writeln!(out, "  {reason}").map_err(stdout_error)?;
    }
    if let Some(file) = &report.file {
        writeln!(out, "  file: {}", file.display()).map_err(stdout_error)?;
    }
    if let Some(rejects) = &report.rejects_file {
        writeln!(out, "  rejects: {}", rejects.display()).map_err(stdout_error)?;
    }
    Ok(())
}

fn spawn_progress_bar(
    counters: Arc<Counters>,
    batch_size: u64,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events, {eta} left {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("validating");
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let planned = counters.batches_planned.load(Ordering::Relaxed);
            if planned > 0 {
                shown.set_length(planned * batch_size);
                shown.set_message("");
            }
            shown.set_position(counters.batches_acked.load(Ordering::Relaxed) * batch_size);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, task)
}
