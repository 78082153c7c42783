//! commands: `check`, `import`, `sample`, `status`, `trace` and `retry` (SPEC §5); `run` is
//! in [`crate::daemon`]. One file a command that needs more than a screen:
//! [`check`](mod@check) (the config, the folders, dry runs of files),
//! [`import`](mod@import) (one file through the pipeline now), and
//! [`status`](mod@status) (the journal's recent occurrences), and
//! [`audit`](mod@audit) (`trace` and `retry`).
//!
//! Each command takes its arguments as plain values and returns an [`Exit`];
//! [`CommandError::exit`] is the one place errors become exit codes. Output
//! for people goes to stdout; logs go to stderr.

mod audit;
mod check;
mod import;
mod status;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::claim;
use crate::config::{self, Config, ConfigError, Import, ImportMatch};
use crate::journal::JournalError;
use crate::pipeline::PipelineError;
use crate::sink::SinkError;

pub use audit::{retry, trace, TraceOptions};
pub use check::{check, CheckOptions};
pub use import::{import, ImportOptions};
pub use status::status;

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
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error(transparent)]
    Retention(#[from] crate::retention::RetentionError),
    #[error(transparent)]
    Retry(#[from] crate::retry::RetryError),
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
            CommandError::Config(_)
            | CommandError::Usage(_)
            | CommandError::Retry(crate::retry::RetryError::NotInFailed(..)) => Exit::Usage,
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

/// One file in the foreground: its heavy steps (validation, rows, events)
/// run on blocking threads of their own; its async part (sink requests,
/// acks, journal waits) on this one thread, so that its tasks never wake
/// each other across threads (about a tenth of `import`'s CPU on the http
/// sink).
fn one_thread_runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_current_thread()
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
