//! How `trace` prints proofs: text for people, one JSON object a line for
//! tools.

use std::io::{self, Write};

use super::{Fate, Proof};

/// One JSON object a line.
pub fn json_lines(proofs: &[Proof], out: &mut dyn Write) -> io::Result<()> {
    for proof in proofs {
        let text = serde_json::to_string(proof).map_err(io::Error::other)?;
        writeln!(out, "{text}")?;
    }
    Ok(())
}

/// A block of text a proof.
pub fn text(proof: &Proof, out: &mut dyn Write) -> io::Result<()> {
    let fate = match proof.fate {
        Fate::Delivered => "delivered",
        Fate::Refused => "REFUSED by the receiver",
        Fate::Rejected => "REJECTED on import (never sent)",
        Fate::Duplicate => "duplicate file (not sent again)",
    };
    let id = proof.event_id.as_deref().unwrap_or("(no event)");
    writeln!(out, "event {id}: {fate}")?;
    if !proof.sha256_matches {
        writeln!(
            out,
            "  !!! SHA-256 MISMATCH: THE ARCHIVED FILE WAS ALTERED !!!\n  !!! journal: {}\n  !!! now:     {}",
            proof.sha256_journal.as_deref().unwrap_or("(none recorded)"),
            proof.sha256_now
        )?;
    }
    let organization = proof
        .organization_id
        .as_deref()
        .map(|org| format!(", organization {org}"))
        .unwrap_or_default();
    writeln!(
        out,
        "  occurrence  {} (import {}{organization}, claimed {})",
        proof.occurrence_id, proof.import, proof.claimed_at
    )?;
    writeln!(out, "  file        {}", proof.file.display())?;
    if proof.sha256_matches {
        writeln!(
            out,
            "  sha256      {} (computed now; matches the journal)",
            proof.sha256_now
        )?;
    }
    writeln!(out, "  line        {}", proof.line)?;
    writeln!(out, "  original    {}", proof.original_line)?;
    if let Some(reason) = &proof.reason {
        writeln!(out, "  reason      {reason}")?;
    }
    writeln!(out, "  report      {}", proof.report_file.display())?;
    if let Some(report) = &proof.report {
        let field = |key: &str| report.get(key).map(|v| v.to_string()).unwrap_or_default();
        writeln!(
            out,
            "              status {}, {} accepted, {} rejected, {} refused, finished {}",
            field("status"),
            field("rows_accepted"),
            field("rows_rejected"),
            field("rows_refused"),
            field("finished_at")
        )?;
    }
    if let Some(batch) = proof.batch {
        writeln!(
            out,
            "  batch       {batch}, acknowledged {}",
            proof.acknowledged_at.as_deref().unwrap_or("(not recorded)")
        )?;
    }
    if let Some(event) = &proof.event {
        let pretty = serde_json::to_string_pretty(event).map_err(io::Error::other)?;
        writeln!(out, "  event as sent:")?;
        for line in pretty.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    for note in &proof.notes {
        writeln!(out, "  note: {note}")?;
    }
    Ok(())
}
