//! The `consent-drop` binary: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use consent_drop::commands::{self, CheckOptions, Exit, ImportOptions, TraceOptions};
use consent_drop::logging::{self, LogFormat};

/// Watches an SFTP drop folder for consent-proof files and delivers them as consent events.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log lines as human text or JSON.
    #[arg(long, value_enum, global = true, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: watch the drop folder and deliver every ready file.
    Run {
        /// Config file (default: the embedded local config, file sink under ./var/).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and dry-run proof files: nothing is sent or moved.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Read the files with this import instead of matching their names.
        #[arg(long)]
        import: Option<String>,
        /// Also check the API credentials (opens a session; sends no event).
        #[arg(long)]
        online: bool,
        /// How many rejects and events to show per file.
        #[arg(long, default_value_t = 3)]
        show: usize,
        files: Vec<PathBuf>,
    },
    /// Import one file now, in the foreground.
    Import {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Read the file with this import instead of matching its name.
        #[arg(long)]
        import: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        file: PathBuf,
    },
    /// Recent import occurrences from the journal.
    Status {
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// The archived proof behind an event id, or every proof of one contact.
    Trace {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Every proof held for this e-mail (a data subject's access request).
        #[arg(long, conflicts_with = "event_id")]
        email: Option<String>,
        /// One JSON object a proof.
        #[arg(long)]
        json: bool,
        #[arg(required_unless_present = "email")]
        event_id: Option<String>,
    },
    /// Put quarantined files that the current config reads well back into the drop folder.
    Retry {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Every file in failed/.
        #[arg(long, conflicts_with = "files")]
        all: bool,
        /// Files of failed/ (`failed/NAME`, relative to the state folder or here).
        #[arg(required_unless_present = "all")]
        files: Vec<PathBuf>,
    },
    /// Write a sample proof file in an import's format.
    Sample {
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(long)]
        import: String,
        #[arg(long, default_value_t = 10)]
        rows: usize,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                Exit::Usage as u8
            } else {
                0
            });
        }
    };
    logging::init(cli.log_format);
    let exit = match dispatch(&cli.command) {
        Ok(exit) => exit,
        Err(err) => {
            let exit = err.exit();
            let message = format!("{:#}", anyhow::Error::from(err));
            match cli.log_format {
                // A JSON log stays JSON to its last line.
                LogFormat::Json => tracing::error!(exit_code = exit as u8, "{message}"),
                LogFormat::Human => eprintln!("consent-drop: {message}"),
            }
            exit
        }
    };
    ExitCode::from(exit as u8)
}

/// Runs one subcommand, its output on standard output.
fn dispatch(command: &Command) -> Result<Exit, commands::CommandError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Run { config } => commands::run(config.as_deref()),
        Command::Check {
            config,
            import,
            online,
            show,
            files,
        } => commands::check(
            &CheckOptions {
                config: config.as_deref(),
                files,
                import: import.as_deref(),
                online: *online,
                show: *show,
            },
            &mut out,
        ),
        Command::Import {
            config,
            import,
            quiet,
            file,
        } => commands::import(
            &ImportOptions {
                config: config.as_deref(),
                file,
                import: import.as_deref(),
                progress: !quiet,
            },
            &mut out,
        ),
        Command::Status {
            config,
            limit,
            json,
        } => commands::status(config.as_deref(), *limit, *json, &mut out),
        Command::Trace {
            config,
            email,
            json,
            event_id,
        } => commands::trace(
            &TraceOptions {
                config: config.as_deref(),
                event_id: event_id.as_deref(),
                email: email.as_deref(),
                json: *json,
            },
            &mut out,
        ),
        Command::Retry { config, all, files } => {
            commands::retry(config.as_deref(), files, *all, &mut out)
        }
        Command::Sample {
            config,
            import,
            rows,
            output,
        } => commands::sample(
            config.as_deref(),
            import,
            *rows,
            output.as_deref(),
            &mut out,
        ),
    }
}
