//! commands: `check`, `import`, `sample` and `status` (SPEC §5); `run` is
//! in [`crate::daemon`].
//!
//! Each command takes its arguments as plain values and returns an [`Exit`];
//! [`CommandError::exit`] is the one place errors become exit codes. Output
//! for people goes to stdout; logs go to stderr.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::claim::{self, StateDirs};
use crate::config::{self, Config, ConfigError, Import, ImportMatch, SinkSettings};
use crate::event::EventWriter;
use crate::journal::{Journal, JournalError};
use crate::metrics::{Counters, Metrics};
use crate::parse::Record;
use crate::pipeline::{self, Context, PipelineError, Verdict, Work};
use crate::sink::{Sink, SinkError};

/// Exit codes of SPEC §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// The work was done, but rows were rejected.
    Rejected = 1,
    Usage = 2,
    Failure = 3,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    State(#[from] claim::ClaimError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CommandError {
    pub fn exit(&self) -> Exit {
        match self {
            CommandError::Config(_) | CommandError::Usage(_) => Exit::Usage,
            _ => Exit::Failure,
        }
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> CommandError + '_ {
    move |source| CommandError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A failed write of a command's own output (a closed pipe, a full disk).
fn stdout_error(source: std::io::Error) -> CommandError {
    CommandError::Io {
        path: PathBuf::from("<stdout>"),
        source,
    }
}

/// The config file given, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => config::load(path),
        None => config::parse_config(
            config::EMBEDDED_DEFAULT,
            "<embedded default>",
            Path::new(""),
        ),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_at(Path::new("<runtime>")))
}

fn import_for_file<'c>(
    config: &'c Config,
    file: &Path,
    forced: Option<&str>,
) -> Result<&'c Arc<Import>, CommandError> {
    if let Some(name) = forced {
        return config
            .import_named(name)
            .ok_or_else(|| CommandError::Usage(format!("no import is named {name:?}")));
    }
    let file_name = file_name_of(file)?;
    match config.import_for(&file_name) {
        ImportMatch::One(import) => Ok(import),
        ImportMatch::None => Err(CommandError::Usage(format!(
            "{}: the name matches no import's pattern (use --import NAME)",
            file.display()
        ))),
        ImportMatch::Ambiguous(names) => Err(CommandError::Usage(format!(
            "{}: the name matches the patterns of several imports ({}); use --import NAME",
            file.display(),
            names.join(", ")
        ))),
    }
}

fn file_name_of(file: &Path) -> Result<String, CommandError> {
    file.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| CommandError::Usage(format!("{}: not a file name", file.display())))
}

// ------------------------------------------------------------------ check

pub struct CheckOptions<'a> {
    pub config: Option<&'a Path>,
    pub files: &'a [PathBuf],
    pub import: Option<&'a str>,
    pub online: bool,
    /// How many rejects and events to show per file.
    pub show: usize,
}

pub fn check(options: &CheckOptions<'_>, out: &mut dyn Write) -> Result<Exit, CommandError> {
    let config = load_config(options.config)?;
    writeln!(out, "config {}: ok", config.source).map_err(stdout_error)?;
    writeln!(out, "  drop folder: {}", config.watch.dir.display()).map_err(stdout_error)?;
    writeln!(out, "  state folder: {}", config.state_dir.display()).map_err(stdout_error)?;
    match &config.sink {
        SinkSettings::File(file) => {
            writeln!(out, "  sink: file → {}", file.dir.display()).map_err(stdout_error)?
        }
        SinkSettings::Http(http) => writeln!(
            out,
            "  sink: http → {} (organization {})",
            http.base_url, http.organization_id
        )
        .map_err(stdout_error)?,
    }
    for import in &config.imports {
        writeln!(
            out,
            "  import {:?}: files matching /{}/, dates {:?} in {}, organization {}",
            import.name,
            import.pattern.as_str(),
            import.format.date_format.pattern(),
            import.format.timezone,
            import.organization().unwrap_or("-")
        )
        .map_err(stdout_error)?;
    }
    for warning in config.warnings() {
        writeln!(out, "warning: {warning}").map_err(stdout_error)?;
    }
    let mut folders_ok = true;
    let remarks = crate::daemon::check_folders(&config)
        .into_iter()
        .chain(drop_folder_names(&config));
    for remark in remarks {
        folders_ok &= !remark.starts_with("error");
        writeln!(out, "{remark}").map_err(stdout_error)?;
    }
    if options.online {
        let message = match &config.sink {
            SinkSettings::Http(http) => {
                let settings = http.clone();
                runtime()?.block_on(crate::sink::http::check_credentials(&settings))?
            }
            SinkSettings::File(_) => "the file sink has no credentials to check".to_string(),
        };
        writeln!(out, "online: {message}").map_err(stdout_error)?;
    }

    let mut exit = if folders_ok {
        Exit::Success
    } else {
        Exit::Usage
    };
    for file in options.files {
        let import = import_for_file(&config, file, options.import)?;
        let outcome = dry_run(import, file, options.show, out)?;
        // The most serious outcome wins: failure, usage, rejects, success.
        if outcome as u8 > exit as u8 {
            exit = outcome;
        }
    }
    Ok(exit)
}

fn dry_run(
    import: &Import,
    file: &Path,
    show: usize,
    out: &mut dyn Write,
) -> Result<Exit, CommandError> {
    let fingerprint = match claim::fingerprint(file) {
        Ok(fingerprint) => fingerprint,
        Err(err) => {
            writeln!(out, "{}: cannot read: {err}", file.display()).map_err(stdout_error)?;
            return Ok(Exit::Failure);
        }
    };
    let (mut reader, encoding) =
        pipeline::open_rows(import, file, &fingerprint).map_err(io_at(file))?;
    let mut writer = EventWriter::new(import, &file_name_of(file)?, &fingerprint.sha256);
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut rejects = Vec::new();
    let mut events = Vec::new();
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(row))) => {
                accepted += 1;
                if events.len() < show {
                    let mut json = Vec::new();
                    writer.write(&row, &mut json);
                    events.push(json);
                }
            }
            Ok(Some(Record::Reject(reject))) => {
                rejected += 1;
                if rejects.len() < show {
                    rejects.push(format!("  line {}: {}", reject.line, reject.reason));
                }
            }
            Err(err) => {
                writeln!(out, "{}: {err}", file.display()).map_err(stdout_error)?;
                return Ok(Exit::Failure);
            }
        }
    }
    let total = accepted + rejected;
    writeln!(
        out,
        "{}: import {:?}, {:?} encoding, {} rows: {} accepted, {} rejected",
        file.display(),
        import.name,
        encoding,
        total,
        accepted,
        rejected
    )
    .map_err(stdout_error)?;
    if pipeline::rejected_share(accepted, rejected) > import.max_reject_ratio {
        writeln!(
            out,
            "  would be QUARANTINED: more than {}% of rows rejected, nothing would be sent",
            import.max_reject_ratio * 100.0
        )
        .map_err(stdout_error)?;
    }
    if !rejects.is_empty() {
        writeln!(out, "first rejects:").map_err(stdout_error)?;
        for line in &rejects {
            writeln!(out, "{line}").map_err(stdout_error)?;
        }
    }
    for json in events {
        let pretty = serde_json::from_slice::<serde_json::Value>(&json)
            .and_then(|value| serde_json::to_string_pretty(&value))
            .unwrap_or_else(|_| String::from_utf8_lossy(&json).into_owned());
        writeln!(out, "{pretty}").map_err(stdout_error)?;
    }
    Ok(if rejected > 0 {
        Exit::Rejected
    } else {
        Exit::Success
    })
}

/// The names waiting in the drop folder, against the import patterns: a
/// name two patterns match is never imported, one no pattern matches waits.
fn drop_folder_names(config: &Config) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(&config.watch.dir) else {
        return Vec::new();
    };
    let mut remarks = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if config.watch.is_ignored(&name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match config.import_for(&name) {
            ImportMatch::One(_) => {}
            ImportMatch::None => remarks.push(format!(
                "warning: {name} in the drop folder matches no import's pattern: it will wait there"
            )),
            ImportMatch::Ambiguous(names) => remarks.push(format!(
                "error: {name} in the drop folder matches the patterns of several imports ({}): it will never be imported until one pattern is narrowed",
                names.join(", ")
            )),
        }
    }
    remarks.sort();
    remarks
}

// ----------------------------------------------------------------- import

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
    claim::claim_copy(options.file, &processing)?;
    journal.record_claim(
        &occurrence_id,
        &import.name,
        &file_name,
        &processing,
        &pipeline::now_rfc3339(),
    )?;

    let runtime = runtime()?;
    let shutdown = CancellationToken::new();
    let report = runtime.block_on(async {
        let counters = Arc::new(Counters::default());
        let metrics = Metrics::new(counters.clone());
        let sink = Sink::from_settings(&config.sink, shutdown.clone(), metrics)?;
        let ctx = Context {
            dirs,
            journal: Arc::new(Mutex::new(journal)),
            sink,
            batch_size: config.sink.batch_size(),
            shutdown: shutdown.clone(),
            counters,
        };
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
        let result = pipeline::process(&ctx, &work).await;
        if let Some((bar, task)) = bar {
            task.abort();
            bar.finish_and_clear();
        }
        result.map_err(CommandError::from)
    })?;

    writeln!(
        out,
        "{}: {:?}, {} accepted, {} rejected, {} refused, {} delivered (occurrence {})",
        options.file.display(),
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
    Ok(match report.status {
        Verdict::Archived if report.rows_rejected + report.rows_refused > 0 => Exit::Rejected,
        Verdict::Archived | Verdict::Duplicate => Exit::Success,
        Verdict::Quarantined => Exit::Rejected,
        Verdict::Failed | Verdict::Interrupted => Exit::Failure,
    })
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

// ----------------------------------------------------------------- status

pub fn status(
    config_path: Option<&Path>,
    limit: usize,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CommandError> {
    let config = load_config(config_path)?;
    if !config.state_dir.join(crate::journal::FILE_NAME).exists() {
        if json {
            writeln!(out, "[]").map_err(stdout_error)?;
        } else {
            writeln!(
                out,
                "no import yet ({} has no journal)",
                config.state_dir.display()
            )
            .map_err(stdout_error)?;
        }
        return Ok(Exit::Success);
    }
    let journal = Journal::open(&config.state_dir)?;
    let recent = journal.recent(limit)?;
    // The organization of an occurrence is its import's, as configured now.
    let organization = |import: &str| {
        config
            .import_named(import)
            .and_then(|import| import.organization())
            .unwrap_or("-")
            .to_string()
    };
    if json {
        let mut rows = serde_json::to_value(&recent)
            .map_err(|err| stdout_error(std::io::Error::other(err)))?;
        if let Some(rows) = rows.as_array_mut() {
            for row in rows.iter_mut() {
                let import = row.get("import").and_then(|v| v.as_str()).unwrap_or("");
                let org = organization(import);
                if let Some(object) = row.as_object_mut() {
                    object.insert("organization_id".into(), org.into());
                }
            }
        }
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|err| stdout_error(std::io::Error::other(err)))?;
        writeln!(out, "{text}").map_err(stdout_error)?;
        return Ok(Exit::Success);
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:<16}  {:<10}  {:>9}  {:>8}  {:>7}  {:<24}  file",
        "occurrence",
        "import",
        "organization",
        "status",
        "accepted",
        "rejected",
        "refused",
        "claimed at"
    )
    .map_err(stdout_error)?;
    for occurrence in recent {
        let count = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<36}  {:<20}  {:<16}  {:<10}  {:>9}  {:>8}  {:>7}  {:<24}  {}",
            occurrence.id,
            occurrence.import,
            organization(&occurrence.import),
            occurrence.status.as_str(),
            count(occurrence.rows_accepted),
            count(occurrence.rows_rejected),
            occurrence.rows_refused,
            occurrence.claimed_at,
            occurrence.file_name
        )
        .map_err(stdout_error)?;
    }
    Ok(Exit::Success)
}

// ----------------------------------------------------------------- sample

pub fn sample(
    config_path: Option<&Path>,
    import_name: &str,
    rows: usize,
    output: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Exit, CommandError> {
    let config = load_config(config_path)?;
    let import = config
        .import_named(import_name)
        .ok_or_else(|| CommandError::Usage(format!("no import is named {import_name:?}")))?;
    match output {
        Some(path) => {
            let mut bytes = Vec::new();
            crate::parse::sample::write_sample(&import.format, rows, &mut bytes)
                .map_err(io_at(path))?;
            std::fs::write(path, bytes).map_err(io_at(path))?;
        }
        None => {
            crate::parse::sample::write_sample(&import.format, rows, out).map_err(stdout_error)?
        }
    }
    Ok(Exit::Success)
}

// -------------------------------------------------------------------- run

/// The daemon, until SIGTERM or SIGINT; SIGHUP reloads the config.
pub fn run(config_path: Option<&Path>) -> Result<Exit, CommandError> {
    let config = load_config(config_path)?;
    let runtime = runtime()?;
    let owned_path = config_path.map(Path::to_path_buf);
    runtime.block_on(async move {
        let controls = crate::daemon::Controls {
            shutdown: CancellationToken::new(),
            reload: Arc::new(tokio::sync::Notify::new()),
        };
        spawn_signal_handlers(&controls).map_err(io_at(Path::new("<signals>")))?;
        let load = move || load_config(owned_path.as_deref());
        crate::daemon::run(config, load, controls)
            .await
            .map_err(CommandError::from)
            .map(|()| Exit::Success)
    })
}

fn spawn_signal_handlers(controls: &crate::daemon::Controls) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let shutdown = controls.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
        shutdown.cancel();
    });
    let reload = controls.reload.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            reload.notify_one();
        }
    });
    Ok(())
}
