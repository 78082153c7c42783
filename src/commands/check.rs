//! commands::check: `check`: the config, the folders, and dry runs of files
//! (what each would give, nothing sent, nothing moved). It never writes
//! the journal or the state folder.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    file_name_of, import_for_file, io_at, load_config, runtime, stdout_error, CommandError, Exit,
};
use crate::config::{Config, Import, ImportMatch, SinkSettings};
use crate::event::EventWriter;
use crate::parse::Record;
use crate::pipeline;
use crate::sink::http::purposes::PurposeCheck;

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
    let mut online_exit = Exit::Success;
    if options.online {
        let message = match &config.sink {
            SinkSettings::Http(http) => {
                let settings = http.clone();
                runtime()?.block_on(crate::sink::http::check_credentials(&settings))?
            }
            SinkSettings::File(_) => "the file sink has no credentials to check".to_string(),
        };
        writeln!(out, "online: {message}").map_err(stdout_error)?;
        if let SinkSettings::Http(http) = &config.sink {
            let check =
                runtime()?.block_on(crate::sink::http::check_purposes(http, &config.imports))?;
            online_exit = print_purposes(&check, out)?;
        }
    }

    let mut exit = if folders_ok { online_exit } else { Exit::Usage };
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

/// Each import's mapped purpose ids, present or MISSING in its
/// organization: `Rejected` (1) when one is missing, `Failure` (3) when a
/// list could not be read.
fn print_purposes(check: &PurposeCheck, out: &mut dyn Write) -> Result<Exit, CommandError> {
    let mut exit = Exit::Success;
    for import in &check.imports {
        match &import.listed {
            Ok(count) => writeln!(
                out,
                "purposes of import {:?} (organization {}, which has {count}):",
                import.import, import.organization
            ),
            Err(reason) => {
                exit = Exit::Failure;
                writeln!(
                    out,
                    "purposes of import {:?} (organization {}): cannot be listed: {reason}",
                    import.import, import.organization
                )
            }
        }
        .map_err(stdout_error)?;
        for purpose in &import.mapped {
            let verdict = match purpose.present {
                Some(true) => "present".to_string(),
                Some(false) => {
                    if exit == Exit::Success {
                        exit = Exit::Rejected;
                    }
                    format!(
                        "MISSING from organization {}: the API would refuse these events",
                        import.organization
                    )
                }
                None => "not checked".to_string(),
            };
            writeln!(out, "  {} {:?}: {verdict}", purpose.key, purpose.id).map_err(stdout_error)?;
        }
        if import.passthrough {
            writeln!(
                out,
                "  unknown_subscription = \"passthrough\": unverifiable (any subscription number may become a purpose id)"
            )
            .map_err(stdout_error)?;
        }
    }
    Ok(exit)
}

/// What a dry run of one file found.
struct DryRun {
    accepted: u64,
    rejected: u64,
    /// The first rejects, as lines to print.
    rejects: Vec<String>,
    /// The first events' JSON.
    events: Vec<Vec<u8>>,
}

fn dry_run(
    import: &Import,
    file: &Path,
    show: usize,
    out: &mut dyn Write,
) -> Result<Exit, CommandError> {
    let fingerprint = match crate::unpack::fingerprint(
        file,
        import.format.encoding,
        import.max_decompressed_bytes,
    ) {
        Ok(fingerprint) => fingerprint,
        Err(err) => {
            writeln!(out, "{}: cannot read: {err}", file.display()).map_err(stdout_error)?;
            return Ok(Exit::Failure);
        }
    };
    let (mut reader, encoding) =
        pipeline::open_rows(import, file, &fingerprint).map_err(io_at(file))?;
    let mut writer = EventWriter::new(import, &file_name_of(file)?, &fingerprint.sha256);
    let mut found = DryRun {
        accepted: 0,
        rejected: 0,
        rejects: Vec::new(),
        events: Vec::new(),
    };
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(row))) => {
                found.accepted += 1;
                if found.events.len() < show {
                    let mut json = Vec::new();
                    writer.write(&row, &mut json);
                    found.events.push(json);
                }
            }
            Ok(Some(Record::Reject(reject))) => {
                found.rejected += 1;
                if found.rejects.len() < show {
                    found
                        .rejects
                        .push(format!("  line {}: {}", reject.line, reject.reason));
                }
            }
            Err(err) => {
                writeln!(out, "{}: {err}", file.display()).map_err(stdout_error)?;
                return Ok(Exit::Failure);
            }
        }
    }
    writeln!(
        out,
        "{}: import {:?}, {:?} encoding, {} rows: {} accepted, {} rejected",
        file.display(),
        import.name,
        encoding,
        found.accepted + found.rejected,
        found.accepted,
        found.rejected
    )
    .map_err(stdout_error)?;
    print_findings(import, file, &found, out)?;
    Ok(if found.rejected > 0 {
        Exit::Rejected
    } else {
        Exit::Success
    })
}

/// The verdict a run would give, the first rejects and the first events.
fn print_findings(
    import: &Import,
    file: &Path,
    found: &DryRun,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    if pipeline::rejected_share(found.accepted, found.rejected) > import.max_reject_ratio {
        writeln!(
            out,
            "  would be QUARANTINED: more than {}% of rows rejected, nothing would be sent",
            import.max_reject_ratio * 100.0
        )
        .map_err(stdout_error)?;
        if let Some(cause) =
            crate::unpack::diagnose(file, &import.format, import.max_decompressed_bytes)
        {
            writeln!(out, "  likely cause: {cause}").map_err(stdout_error)?;
        }
    }
    if !found.rejects.is_empty() {
        writeln!(out, "first rejects:").map_err(stdout_error)?;
        for line in &found.rejects {
            writeln!(out, "{line}").map_err(stdout_error)?;
        }
    }
    for json in &found.events {
        let pretty = serde_json::from_slice::<serde_json::Value>(json)
            .and_then(|value| serde_json::to_string_pretty(&value))
            .unwrap_or_else(|_| String::from_utf8_lossy(json).into_owned());
        writeln!(out, "{pretty}").map_err(stdout_error)?;
    }
    Ok(())
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
