//! daemon: `consent-drop run`, the loop that ties the stages together.
//!
//! At start it resumes every occurrence the journal left unfinished and
//! adopts files in `processing/` it does not know (a crash between the claim
//! and its journal entry), then scans the drop folder and tells systemd it
//! is ready. From then on it claims each ready file and runs it through
//! [`pipeline::process`], a bounded number at a time. Failures of our own
//! state (full disk, journal) leave the file in `processing/` and it is
//! tried again later; the daemon itself stops only for what it cannot fix:
//! an unusable configuration or state folder.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::claim::{self, StateDirs};
use crate::config::{Config, ImportMatch};
use crate::journal::{Journal, Status};
use crate::metrics::{self, Metrics};
use crate::pipeline::{self, Context, Counters, PipelineError, Verdict, Work};
use crate::sink::Sink;
use crate::watch::{self, Hint, Readiness};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] claim::ClaimError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("the drop folder {0} does not exist or is not a folder")]
    DropFolder(PathBuf),
    #[error(transparent)]
    Metrics(#[from] metrics::ListenError),
}

/// How long to wait before trying again a file whose processing failed on
/// our side (full disk, journal), doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Signals from outside, as the daemon sees them.
#[derive(Debug, Clone)]
pub struct Controls {
    /// Stop taking files, checkpoint, exit.
    pub shutdown: CancellationToken,
    /// Reload the configuration (SIGHUP).
    pub reload: Arc<tokio::sync::Notify>,
}

/// Runs until `controls.shutdown`. `load` re-reads the config on reload.
pub async fn run(
    mut config: Config,
    load: impl Fn() -> Result<Config, crate::config::ConfigError>,
    controls: Controls,
) -> Result<(), DaemonError> {
    if !config.watch.dir.is_dir() {
        return Err(DaemonError::DropFolder(config.watch.dir.clone()));
    }
    let dirs = StateDirs::create(&config.state_dir)?;
    let journal = Arc::new(Mutex::new(Journal::open(&dirs.root)?));
    let counters = Arc::new(Counters::default());
    let metrics = Metrics::new(counters.clone());
    // Bound before any work, so that a taken address stops the start.
    let _metrics_server = match &config.metrics_listen {
        Some(listen) => {
            let listener = metrics::bind(listen).await?;
            let bound = listener
                .local_addr()
                .map_or_else(|_| listen.clone(), |address| address.to_string());
            tracing::info!(listen = %bound, "metrics on /metrics and /healthz");
            Some(metrics::serve(
                listener,
                metrics.clone(),
                controls.shutdown.clone(),
            ))
        }
        None => None,
    };
    let mut ctx = Context {
        dirs: dirs.clone(),
        journal,
        sink: Sink::from_settings(&config.sink, controls.shutdown.clone(), metrics.clone())?,
        batch_size: config.sink.batch_size(),
        shutdown: controls.shutdown.clone(),
        counters: counters.clone(),
    };

    ctx.sink.check_purposes(&config.imports);
    crate::retention::spawn(
        dirs.root.clone(),
        config.archive_days,
        controls.shutdown.clone(),
    );
    let backlog = crate::backlog::BacklogGauge::new(metrics.oldest_waiting_file_age.clone());
    let mut queue: Vec<(Instant, Work)> = Vec::new();
    let mut backoffs: HashMap<String, Duration> = HashMap::new();
    for work in recover(&ctx, &config)? {
        queue.push((Instant::now(), work));
    }

    let (_watcher, mut hints) = watch::start(&config.watch.dir)?;
    let mut readiness = Readiness::new(&config.watch.dir, config.watch.settle);
    readiness.scan(Instant::now(), false)?;
    tracing::info!(
        drop = %config.watch.dir.display(),
        state = %dirs.root.display(),
        resumed = queue.len(),
        waiting = readiness.waiting(),
        "consent-drop is running"
    );
    // READY only now: the recovery and the start-up scan are done, and the
    // status says what they found.
    let mut last_status = queue_status(readiness.waiting() + queue.len(), 0, &counters);
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&last_status),
    ]);

    let mut tasks: JoinSet<(Work, Result<pipeline::Report, PipelineError>)> = JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut warned: HashSet<String> = HashSet::new();
    let watchdog = watchdog_interval();
    let mut tick_every =
        (config.watch.settle / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    if let Some(every) = watchdog {
        // Ticks must come at least as often as the pings they carry.
        tick_every = tick_every.min(every).max(Duration::from_millis(1));
    }
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rescan = tokio::time::interval(config.watch.rescan);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_watchdog = Instant::now();
    if watchdog.is_some() {
        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
    }

    loop {
        tokio::select! {
            biased;
            () = controls.shutdown.cancelled() => break,
            () = controls.reload.notified() => {
                match load() {
                    Ok(mut new) => {
                        if new.sink == config.sink {
                            ctx.sink.credentials_changed();
                        } else {
                            match Sink::from_settings(&new.sink, controls.shutdown.clone(), metrics.clone()) {
                                Ok(sink) => ctx.sink = sink,
                                Err(err) => {
                                    tracing::error!(%err, "config reloaded, but the new sink cannot start: keeping the old sink");
                                }
                            }
                        }
                        ctx.batch_size = new.sink.batch_size();
                        readiness.set_settle(new.watch.settle);
                        if new.watch.dir != config.watch.dir || new.state_dir != config.state_dir {
                            tracing::warn!("watch.dir and state.dir changes take effect at the next restart");
                        }
                        if new.metrics_listen != config.metrics_listen {
                            tracing::warn!("metrics.listen changes take effect at the next restart");
                        }
                        new.watch.dir = config.watch.dir.clone();
                        new.state_dir = config.state_dir.clone();
                        config = new;
                        ctx.sink.check_purposes(&config.imports);
                        warned.clear();
                        readiness.reconsider_parked();
                        tracing::info!(source = %config.source, "configuration reloaded");
                    }
                    Err(err) => tracing::error!(%err, "configuration not reloaded: the running one is kept"),
                }
            }
            Some(hint) = hints.recv() => {
                let full = hint == Hint::Rescan;
                readiness.observe(hint, Instant::now());
                if full {
                    tracing::warn!("file events were lost: scanning the drop folder again");
                    if let Err(err) = readiness.scan(Instant::now(), true) {
                        tracing::error!(%err, "rescan failed");
                    }
                }
            }
            _ = rescan.tick() => {
                if let Err(err) = readiness.scan(Instant::now(), false) {
                    tracing::error!(%err, "rescan failed");
                }
                backlog.refresh(&config.watch, &dirs.processing);
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Ok((work, result)) => {
                        in_flight.remove(&work.occurrence_id);
                        match result {
                            Ok(report) if report.status == Verdict::Interrupted => {}
                            Ok(report) => {
                                backoffs.remove(&work.occurrence_id);
                                log_report(&report);
                            }
                            Err(err) => {
                                let backoff = backoffs.entry(work.occurrence_id.clone()).or_insert(RETRY_FIRST);
                                tracing::error!(occurrence = %work.occurrence_id, import = %work.import.name, %err,
                                    retry_in_s = backoff.as_secs(), "file left in processing/, will be tried again");
                                queue.push((Instant::now() + *backoff, work));
                                *backoff = (*backoff * 2).min(RETRY_MAX);
                            }
                        }
                    }
                    Err(err) => tracing::error!(%err, "a file task stopped unexpectedly"),
                }
            }
            _ = tick.tick() => {
                metrics.tick();
                let now = Instant::now();
                let slots = config.watch.max_files_in_flight.saturating_sub(tasks.len());
                // Resumed and retried occurrences first: they are older.
                let mut started = 0;
                let mut index = 0;
                while index < queue.len() && started < slots {
                    if queue[index].0 <= now {
                        let (_, work) = queue.remove(index);
                        spawn(&mut tasks, &mut in_flight, &ctx, work);
                        started += 1;
                    } else {
                        index += 1;
                    }
                }
                let slots = slots - started;
                if slots > 0 {
                    let ready = readiness.ready(now, &|name| config.watch.is_ignored(name));
                    for name in ready.into_iter().take(slots) {
                        metrics.files_seen.inc();
                        match claim_ready(&ctx, &config, &name, &mut warned) {
                            Claimed::Yes(work) => {
                                readiness.forget(&name);
                                spawn(&mut tasks, &mut in_flight, &ctx, work);
                            }
                            Claimed::Gone => readiness.forget(&name),
                            Claimed::Left => readiness.park(&name),
                        }
                    }
                }
                if let Some(every) = watchdog {
                    // Ping when the next tick could come too late: the gap
                    // between pings stays within half the watchdog timeout.
                    if last_watchdog.elapsed() + tick_every > every {
                        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                        last_watchdog = Instant::now();
                    }
                }
                let waiting = readiness.waiting() + queue.len();
                metrics.files_waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
                metrics.files_in_flight.set(i64::try_from(tasks.len()).unwrap_or(i64::MAX));
                let status = queue_status(waiting, tasks.len(), &counters);
                if status != last_status {
                    notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
                    last_status = status;
                }
            }
        }
    }

    tracing::info!(
        in_flight = tasks.len(),
        "stopping: checkpointing the files in flight"
    );
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    while let Some(joined) = tasks.join_next().await {
        if let Ok((work, Ok(report))) = joined {
            if report.status != Verdict::Interrupted {
                log_report(&report);
            } else {
                tracing::info!(occurrence = %work.occurrence_id, import = %work.import.name,
                    "checkpointed: resumes at the next start");
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The STATUS= line systemd shows.
fn queue_status(waiting: usize, in_flight: usize, counters: &Counters) -> String {
    format!(
        "{waiting} waiting, {in_flight} in flight, {} archived, {} failed",
        counters.files_archived.load(Ordering::Relaxed),
        counters.files_failed.load(Ordering::Relaxed)
    )
}

fn spawn(
    tasks: &mut JoinSet<(Work, Result<pipeline::Report, PipelineError>)>,
    in_flight: &mut HashSet<String>,
    ctx: &Context,
    work: Work,
) {
    if !in_flight.insert(work.occurrence_id.clone()) {
        return;
    }
    let ctx = ctx.clone();
    tasks.spawn(async move {
        let result = pipeline::process(&ctx, &work).await;
        (work, result)
    });
}

fn log_report(report: &pipeline::Report) {
    let reason = report.reason.as_deref().unwrap_or("");
    match report.status {
        Verdict::Archived | Verdict::Duplicate => tracing::info!(
            occurrence = %report.occurrence_id, import = %report.import, file = %report.file_name,
            organization = report.organization_id.as_deref().unwrap_or("-"),
            status = ?report.status, accepted = report.rows_accepted, rejected = report.rows_rejected,
            refused = report.rows_refused, delivered = report.rows_delivered, reason,
            "file done"
        ),
        _ => tracing::error!(
            occurrence = %report.occurrence_id, import = %report.import, file = %report.file_name,
            status = ?report.status, accepted = report.rows_accepted, rejected = report.rows_rejected,
            reason, "file moved to failed/"
        ),
    }
}

enum Claimed {
    Yes(Work),
    /// It vanished before the claim.
    Gone,
    /// Left in the drop folder on purpose (no import, two imports, error).
    Left,
}

fn claim_ready(
    ctx: &Context,
    config: &Config,
    name: &str,
    warned: &mut HashSet<String>,
) -> Claimed {
    let import = match config.import_for(name) {
        ImportMatch::One(import) => import.clone(),
        ImportMatch::None => {
            if warned.insert(name.to_string()) {
                tracing::warn!(file = %name, "the name matches no import's pattern: left in the drop folder");
            }
            return Claimed::Left;
        }
        ImportMatch::Ambiguous(names) => {
            if warned.insert(name.to_string()) {
                tracing::error!(file = %name, imports = %names.join(", "),
                    "the name matches the patterns of several imports: left in the drop folder, never guessed at");
            }
            return Claimed::Left;
        }
    };
    let source = config.watch.dir.join(name);
    let occurrence_id = uuid::Uuid::new_v4().to_string();
    let destination = ctx.dirs.processing_path(&occurrence_id, name);
    if let Err(err) = claim::claim_move(&source, &destination) {
        // Forgotten for now either way: if the file is still there, our side
        // failed (full disk, permissions) and the next rescan finds it again.
        if source.exists() {
            tracing::error!(file = %name, %err, "cannot claim the file: left in the drop folder, tried again at the next rescan");
        }
        return Claimed::Gone;
    }
    let recorded = ctx.journal().record_claim(
        &occurrence_id,
        &import.name,
        name,
        &destination,
        &pipeline::now_rfc3339(),
    );
    if let Err(err) = recorded {
        // The file is safe in processing/; the next start adopts it.
        tracing::error!(file = %name, %err, "claimed, but the journal could not record it: it is adopted at the next start");
        return Claimed::Gone;
    }
    ctx.counters.files_claimed.fetch_add(1, Ordering::Relaxed);
    tracing::info!(occurrence = %occurrence_id, import = %import.name, file = %name, "claimed");
    Claimed::Yes(Work {
        occurrence_id,
        import,
    })
}

/// Occurrences to resume, and files in `processing/` the journal does not
/// know (a crash between claim and journal entry), adopted.
fn recover(ctx: &Context, config: &Config) -> Result<Vec<Work>, DaemonError> {
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
            // An interrupted cross-device copy; the original is still in the drop folder.
            let _ = std::fs::remove_file(entry.path());
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

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, states);
    }
}

/// Half the systemd watchdog interval, when one is set for this process
/// (`WATCHDOG_USEC`, and `WATCHDOG_PID` ours if set).
fn watchdog_interval() -> Option<Duration> {
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        // Set for another process (we were started by a child of the service).
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}

/// Remarks for `check` about the folders.
pub fn check_folders(config: &Config) -> Vec<String> {
    let mut remarks = Vec::new();
    let drop = &config.watch.dir;
    if !drop.is_dir() {
        remarks.push(format!(
            "error: the drop folder {} does not exist",
            drop.display()
        ));
    } else if !writable(drop) {
        remarks.push(format!(
            "error: the drop folder {} is not writable by this user (claiming moves files out of it)",
            drop.display()
        ));
    }
    let state = &config.state_dir;
    if state.exists() && !writable(state) {
        remarks.push(format!(
            "error: the state folder {} is not writable by this user",
            state.display()
        ));
    }
    if let (Some(drop_dev), Some(state_dev)) = (device_of(drop), device_of(nearest_existing(state)))
    {
        if drop_dev != state_dev {
            remarks.push(format!(
                "warning: {} and {} are on different file systems: claims will copy, fsync and unlink instead of an atomic rename",
                drop.display(),
                state.display()
            ));
        }
    }
    remarks
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".consent-drop-check-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn nearest_existing(path: &Path) -> &Path {
    let mut current = path;
    while !current.exists() {
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent,
            _ => return Path::new("."),
        }
    }
    current
}

fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|meta| meta.dev())
}
