//! daemon: `consent-drop run`, the loop that ties the stages together.
//!
//! At start it resumes every occurrence the journal left unfinished and
//! adopts files in `processing/` it does not know (a crash between the claim
//! and its journal entry), then scans the drop folder and tells systemd it
//! is ready. From then on it claims each ready file and runs it through
//! [`pipeline::process`], up to `max_files_in_flight` at a time. A file
//! starts the moment it is ready and a slot is free, not at a tick; a file
//! not yet claimed is only a name in a list (no task, no open file).
//! Failures of our own state (full disk, journal) leave the file in
//! `processing/` and it is tried again later ([`schedule`]); the daemon
//! itself stops only for what it cannot fix: an unusable configuration or
//! state folder.

mod claims;
mod folders;
mod schedule;
mod systemd;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::claims::TaskEnd;
use self::schedule::Schedule;
use self::systemd::{notify_systemd, queue_status, watchdog_interval};
use crate::claim::{self, StateDirs};
use crate::config::Config;
use crate::journal::Journal;
use crate::metrics::{self, Metrics};
use crate::pipeline::{self, Context, Counters, Verdict, Work};
use crate::sink::Sink;
use crate::watch::{self, Hint, Readiness};

pub use self::folders::check_folders;

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
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("the drop folder {0} does not exist or is not a folder")]
    DropFolder(PathBuf),
    #[error(transparent)]
    Metrics(#[from] metrics::ListenError),
}

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
    config: Config,
    load: impl Fn() -> Result<Config, crate::config::ConfigError>,
    controls: Controls,
) -> Result<(), DaemonError> {
    if !config.watch.dir.is_dir() {
        return Err(DaemonError::DropFolder(config.watch.dir.clone()));
    }
    let dirs = StateDirs::create(&config.state_dir)?;
    let journal = Journal::open(&dirs.root)?;
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
    let ctx = Context::new(
        dirs.clone(),
        journal,
        Sink::from_settings(&config.sink, controls.shutdown.clone(), metrics.clone())?,
        config.sink.batch_size(),
        controls.shutdown.clone(),
        counters.clone(),
    )?;
    ctx.sink.check_purposes(&config.imports);
    let retention = crate::retention::spawn(
        dirs.root.clone(),
        config.archive_days,
        controls.shutdown.clone(),
    );
    let backlog = crate::backlog::BacklogGauge::new(metrics.oldest_waiting_file_age.clone());
    let mut daemon = Daemon::start(config, ctx, metrics, backlog, retention)?;
    daemon.run(load, &controls).await;
    daemon.stop().await;
    Ok(())
}

/// The loop's state: what is waiting, what is in flight.
struct Daemon {
    config: Config,
    ctx: Context,
    metrics: Metrics,
    /// The age of the oldest waiting file, refreshed at each rescan.
    backlog: crate::backlog::BacklogGauge,
    /// `[state] archive_days`, handed the reloaded value.
    retention: crate::retention::Retention,
    readiness: Readiness,
    schedule: Schedule,
    /// Names found ready and not yet claimed, oldest first.
    ready: VecDeque<String>,
    listed: HashSet<String>,
    tasks: JoinSet<TaskEnd>,
    warned: HashSet<String>,
    watchdog: Option<schedule::Watchdog>,
    last_status: String,
    hints: tokio::sync::mpsc::UnboundedReceiver<Hint>,
    _watcher: notify::RecommendedWatcher,
}

impl Daemon {
    fn start(
        config: Config,
        ctx: Context,
        metrics: Metrics,
        backlog: crate::backlog::BacklogGauge,
        retention: crate::retention::Retention,
    ) -> Result<Daemon, DaemonError> {
        let mut schedule = Schedule::new(config.watch.max_files_in_flight);
        for work in claims::recover(&ctx, &config)? {
            schedule.resume(work, Instant::now());
        }
        let (watcher, hints) = watch::start(&config.watch.dir)?;
        let mut readiness = Readiness::new(&config.watch.dir, config.watch.settle);
        readiness.scan(Instant::now().into_std(), false)?;
        tracing::info!(
            drop = %config.watch.dir.display(),
            state = %ctx.dirs.root.display(),
            resumed = schedule.queued(),
            waiting = readiness.waiting(),
            "consent-drop is running"
        );
        // READY only now: the recovery and the start-up scan are done, and the
        // status says what they found.
        let last_status = queue_status(readiness.waiting() + schedule.queued(), 0, &ctx.counters);
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&last_status),
        ]);
        let watchdog = watchdog_interval().map(|every| {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            schedule::Watchdog::new(every, Instant::now())
        });
        Ok(Daemon {
            config,
            ctx,
            metrics,
            backlog,
            retention,
            readiness,
            schedule,
            ready: VecDeque::new(),
            listed: HashSet::new(),
            tasks: JoinSet::new(),
            warned: HashSet::new(),
            watchdog,
            last_status,
            hints,
            _watcher: watcher,
        })
    }

    /// How often settling files are looked at (and the watchdog pinged).
    fn tick_every(&self) -> Duration {
        let mut every = (self.config.watch.settle / 4)
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        if let Some(watchdog) = self.watchdog.as_ref().map(schedule::Watchdog::every) {
            // Ticks must come at least as often as the pings they carry.
            every = every.min(watchdog).max(Duration::from_millis(1));
        }
        every
    }

    async fn run(
        &mut self,
        load: impl Fn() -> Result<Config, crate::config::ConfigError>,
        controls: &Controls,
    ) {
        let mut tick = tokio::time::interval(self.tick_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescan = tokio::time::interval(self.config.watch.rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The periodic listing runs on a blocking thread (a folder of
        // 100,000 names takes longer than a tick); one at a time.
        let mut listing: Option<tokio::task::JoinHandle<ListingResult>> = None;
        loop {
            self.start_files(Instant::now());
            let retry_at = self.schedule.next_due();
            tokio::select! {
                biased;
                () = controls.shutdown.cancelled() => break,
                () = controls.reload.notified() => self.reload(&load, &controls.shutdown),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => self.joined(joined),
                Some(hint) = self.hints.recv() => self.hint(hint),
                // Before the listing: the tick carries the watchdog pings.
                _ = tick.tick() => self.tick(),
                () = sleep_until(retry_at) => {}
                listed = join_listing(&mut listing), if listing.is_some() => {
                    listing = None;
                    self.merge_listing(listed);
                }
                _ = rescan.tick(), if listing.is_none() => {
                    let dir = self.config.watch.dir.clone();
                    listing = Some(tokio::task::spawn_blocking(move || watch::list_names(&dir)));
                    self.backlog.refresh(&self.config.watch, &self.ctx.dirs.processing);
                }
            }
        }
    }

    /// Starts due retries, then ready files, while there are free slots.
    fn start_files(&mut self, now: Instant) {
        for work in self.schedule.take_due(now) {
            let ctx = self.ctx.clone();
            self.tasks.spawn(async move {
                let result = pipeline::process(&ctx, &work).await;
                TaskEnd::Processed(work, Box::new(result))
            });
        }
        while self.schedule.free() > 0 {
            let Some(name) = self.ready.pop_front() else {
                break;
            };
            self.listed.remove(&name);
            let Some(import) = claims::import_of(&self.config, &name, &mut self.warned) else {
                self.readiness.park(&name);
                continue;
            };
            self.readiness.forget(&name);
            self.metrics.files_seen.inc();
            let work = Work {
                occurrence_id: uuid::Uuid::new_v4().to_string(),
                import,
            };
            self.schedule.start(&work.occurrence_id);
            let source = self.config.watch.dir.join(&name);
            self.tasks
                .spawn(claims::claim_and_process(self.ctx.clone(), source, work));
        }
        self.set_in_flight_gauge();
    }

    fn joined(&mut self, joined: Result<TaskEnd, tokio::task::JoinError>) {
        match joined {
            Ok(TaskEnd::NotClaimed(id)) => self.schedule.done(&id),
            Ok(TaskEnd::Processed(work, result)) => match *result {
                Ok(report) => {
                    self.schedule.done(&work.occurrence_id);
                    if report.status != Verdict::Interrupted {
                        log_report(&report);
                    }
                }
                Err(err) => {
                    let (id, import) = (work.occurrence_id.clone(), work.import.name.clone());
                    let wait = self.schedule.failed(work, Instant::now());
                    tracing::error!(occurrence = %id, import = %import, %err,
                        retry_in_s = wait.as_secs(), "file left in processing/, will be tried again");
                }
            },
            Err(err) => tracing::error!(%err, "a file task stopped unexpectedly"),
        }
        self.set_in_flight_gauge();
    }

    fn hint(&mut self, hint: Hint) {
        let full = hint == Hint::Rescan;
        let arrived = match &hint {
            Hint::Arrived(name) => Some(name.clone()),
            _ => None,
        };
        let now = Instant::now().into_std();
        self.readiness.observe(hint, now);
        if let Some(name) = arrived.filter(|_| self.ready_list_has_room()) {
            let config = &self.config;
            if self
                .readiness
                .ready_now(&name, now, &|name| config.watch.is_ignored(name))
            {
                self.queue_ready([name]);
            }
        }
        if full {
            tracing::warn!("file events were lost: scanning the drop folder again");
            self.scan(true);
        }
    }

    fn merge_listing(&mut self, listed: Result<ListingResult, tokio::task::JoinError>) {
        match listed {
            Ok(Ok(names)) => self
                .readiness
                .merge_listing(names, Instant::now().into_std(), false),
            Ok(Err(err)) => tracing::error!(%err, "rescan failed"),
            Err(err) => tracing::error!(%err, "rescan stopped unexpectedly"),
        }
    }

    fn scan(&mut self, full: bool) {
        if let Err(err) = self.readiness.scan(Instant::now().into_std(), full) {
            tracing::error!(%err, "rescan failed");
        }
    }

    /// Ready files are looked for only while the list is short: a long
    /// list already keeps every slot busy.
    fn ready_list_has_room(&self) -> bool {
        self.ready.len() < 4 * self.config.watch.max_files_in_flight.max(1)
    }

    fn queue_ready(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if self.listed.insert(name.clone()) {
                self.ready.push_back(name);
            }
        }
    }

    /// Settled files join the ready list; watchdog, metrics.
    fn tick(&mut self) {
        self.metrics.tick();
        if self.ready_list_has_room() {
            let config = &self.config;
            let found = self.readiness.ready(Instant::now().into_std(), &|name| {
                config.watch.is_ignored(name)
            });
            self.queue_ready(found);
            self.start_files(Instant::now());
        }
        let tick = self.tick_every();
        if let Some(watchdog) = &mut self.watchdog {
            if watchdog.due(Instant::now(), tick) {
                notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            }
        }
        let waiting = self.readiness.waiting() + self.schedule.queued();
        self.metrics
            .files_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let in_flight = self.set_in_flight_gauge();
        let status = queue_status(waiting, in_flight, &self.ctx.counters);
        if status != self.last_status {
            notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    /// Files in flight are counted at every start and end of a file, not
    /// only at the tick: a renamed file starts as its event comes, and may
    /// end before the next tick. (Files waiting are counted at the tick,
    /// after its look has dropped the names gone since.)
    fn set_in_flight_gauge(&self) -> usize {
        let in_flight = self.schedule.in_flight();
        self.metrics
            .files_in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        in_flight
    }

    fn reload(
        &mut self,
        load: &impl Fn() -> Result<Config, crate::config::ConfigError>,
        shutdown: &CancellationToken,
    ) {
        let mut new = match load() {
            Ok(new) => new,
            Err(err) => {
                tracing::error!(%err, "configuration not reloaded: the running one is kept");
                return;
            }
        };
        let config = &self.config;
        if new.sink == config.sink {
            self.ctx.sink.credentials_changed();
        } else {
            match Sink::from_settings(&new.sink, shutdown.clone(), self.metrics.clone()) {
                Ok(sink) => self.ctx.sink = sink,
                Err(err) => {
                    tracing::error!(%err, "config reloaded, but the new sink cannot start: keeping the old sink");
                }
            }
        }
        self.ctx.batch_size = new.sink.batch_size();
        self.readiness.set_settle(new.watch.settle);
        self.schedule.set_cap(new.watch.max_files_in_flight);
        self.retention.set(new.archive_days);
        if new.watch.dir != config.watch.dir || new.state_dir != config.state_dir {
            tracing::warn!("watch.dir and state.dir changes take effect at the next restart");
        }
        if new.metrics_listen != config.metrics_listen {
            tracing::warn!("metrics.listen changes take effect at the next restart");
        }
        new.watch.dir = config.watch.dir.clone();
        new.state_dir = config.state_dir.clone();
        self.config = new;
        self.ctx.sink.check_purposes(&self.config.imports);
        self.warned.clear();
        self.readiness.reconsider_parked();
        tracing::info!(source = %self.config.source, "configuration reloaded");
    }

    /// Shutdown: every file in flight checkpoints (or finishes).
    async fn stop(&mut self) {
        tracing::info!(
            in_flight = self.tasks.len(),
            "stopping: checkpointing the files in flight"
        );
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        while let Some(joined) = self.tasks.join_next().await {
            let Ok(TaskEnd::Processed(work, result)) = joined else {
                continue;
            };
            if let Ok(report) = *result {
                if report.status != Verdict::Interrupted {
                    log_report(&report);
                } else {
                    tracing::info!(occurrence = %work.occurrence_id, import = %work.import.name,
                        "checkpointed: resumes at the next start");
                }
            }
        }
        let (commits, writes) = self.ctx.writer.stats();
        let (syncs, asked) = self.ctx.dir_sync.stats();
        tracing::info!(
            journal_commits = commits,
            journal_writes = writes,
            folder_flushes = syncs,
            folder_syncs_asked = asked,
            "stopped"
        );
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

type ListingResult = Result<Vec<std::ffi::OsString>, watch::WatchError>;

async fn join_listing(
    listing: &mut Option<tokio::task::JoinHandle<ListingResult>>,
) -> Result<ListingResult, tokio::task::JoinError> {
    match listing.as_mut() {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
