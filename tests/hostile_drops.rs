//! Hostile drops of the kinds partners send: compressed files that explode,
//! lie or break off, a UTF-16 file cut in the middle of a character, and a
//! quote opened at the start of a large file and never closed.
//!
//! Each must end with a clear reason (in `failed/`, or as one rejected row),
//! with the daemon's peak RSS (VmHWM) below `HOSTILE_RSS_MIB` (default 64),
//! and the daemon must go on serving. Default sizes keep `cargo test` quick;
//! the ignored `hostile_drops_at_scale` runs the 1 GiB cases
//! (`HOSTILE_BIG_MB`, default 1024) and prints each peak RSS.

#[path = "support/harness.rs"]
mod harness;

use std::io::Write;
use std::time::Duration;

use harness::{env_number, proof_rows, wait_until, Daemon, Site, IMPORT};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(300);

/// Peak resident set size of a process, in KiB (VmHWM).
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits for `name`'s report; returns where it went, the report and the
/// daemon's peak RSS in KiB.
fn reported(site: &Site, daemon: &Daemon, name: &str) -> (String, Value, u64) {
    let mut found = None;
    assert!(
        wait_until(LONG, || {
            found = ["archive", "failed"].into_iter().find_map(|under| {
                site.reports(under)
                    .into_iter()
                    .find(|report| report["file_name"] == name)
                    .map(|report| (under.to_string(), report))
            });
            found.is_some()
                && !site
                    .files_under("processing")
                    .iter()
                    .any(|path| path.to_string_lossy().ends_with(name))
        }),
        "{name} never reported; log:\n{}",
        site.log()
    );
    let (under, report) = found.expect("report");
    (under, report, vm_hwm_kib(daemon.child.id()))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A gzip file of about `mib` MiB of zeros: 10 compressed MiB, repeated as
/// members (`cat a.gz a.gz …` is a valid gzip file). Zeros compress about
/// 1026 to 1 in 10 MiB (998 to 1 in 1 MiB): just over the 1000× limit.
fn zeros_gz(mib: u64) -> Vec<u8> {
    let member = gzip(&vec![0u8; 10 << 20]);
    member.repeat(usize::try_from(mib.div_ceil(10)).unwrap_or(1))
}

/// The checks every case shares: the reason, bounded memory, and a good
/// file served after it.
fn assert_case(site: &Site, daemon: &Daemon, name: &str, want: (&str, &str)) -> u64 {
    let (under, report, rss) = reported(site, daemon, name);
    let reason = report["reason"].as_str().unwrap_or_default().to_string();
    let limit = env_number("HOSTILE_RSS_MIB", 64);
    eprintln!(
        "{name}: {under}, {reason:?}, peak RSS {:.1} MiB",
        rss as f64 / 1024.0
    );
    assert_eq!(under, want.0, "{name}: {report}");
    assert!(reason.contains(want.1), "{name}: {reason}");
    assert!(
        rss > 0 && rss < limit * 1024,
        "{name}: peak RSS {rss} KiB, over {limit} MiB"
    );
    let good = format!("pr-good-after-{name}.csv");
    site.drop_file(&good, proof_rows(&format!("{}-", name.len()), 3).as_bytes());
    let (under, _, _) = reported(site, daemon, &good);
    assert_eq!(under, "archive", "the daemon still serves after {name}");
    rss
}

fn bomb_case(site: &Site, daemon: &Daemon, mib: u64) -> u64 {
    let name = format!("pr-bomb-{mib}.csv.gz");
    site.drop_file(&name, &zeros_gz(mib));
    assert_case(
        site,
        daemon,
        &name,
        (
            "failed",
            "1000 times the size of the file as dropped): a decompression bomb",
        ),
    )
}

fn unclosed_quote_case(site: &Site, daemon: &Daemon, mib: u64) -> u64 {
    let name = format!("pr-unclosed-{mib}.csv");
    // The quote opened in line 2 is never closed; the rest of the file is
    // good rows, `mib` MiB of them, written as a stream.
    let path = site.path(&name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    out.write_all(
        b"email;purpose;date;origin\nq@example.com;\"never closed;01/06/2020 10:00:00;ip\n",
    )
    .expect("write");
    let block = proof_rows("u", 10_000);
    let block = block.split_once('\n').map_or("", |(_, rows)| rows);
    let mut written = 0u64;
    while written < mib << 20 {
        out.write_all(block.as_bytes()).expect("write");
        written += block.len() as u64;
    }
    out.flush().expect("flush");
    drop(out);
    std::fs::rename(&path, site.drop.join(&name)).expect("drop");
    let rss = assert_case(site, daemon, &name, ("archive", ""));
    let rejects = site
        .files_under("archive")
        .into_iter()
        .find(|path| {
            path.to_string_lossy()
                .ends_with(&format!("{name}.rejects.csv"))
        })
        .expect("rejects file");
    let text = std::fs::read_to_string(rejects).expect("rejects");
    assert!(
        text.starts_with("line,reason,original_line\n2,record is longer than 65536 bytes: a quoted field opened here is not closed"),
        "{}",
        &text[..text.len().min(300)]
    );
    let records = csv::Reader::from_reader(text.as_bytes()).records().count();
    assert_eq!(records, 1, "one reject: the rows after it read on");
    rss
}

/// Runs `case` against a daemon of its own, so that its peak RSS is its own.
fn alone(import: &str, case: impl FnOnce(&Site, &Daemon) -> u64) -> u64 {
    let site = Site::new(import);
    let daemon = site.start();
    let rss = case(&site, &daemon);
    daemon.stop_cleanly();
    rss
}

#[test]
fn a_gzip_bomb_fails_with_a_reason_in_bounded_memory() {
    alone(IMPORT, |site, daemon| {
        bomb_case(site, daemon, env_number("HOSTILE_BOMB_MIB", 32))
    });
}

#[test]
fn a_zip_of_many_members_and_a_truncated_gzip_fail_with_a_reason() {
    let site = Site::new(IMPORT);
    let daemon = site.start();

    // A zip of 10,000 members: refused from its end record, before its
    // directory is read.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..10_000 {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file(format!("part-{i}.csv"), options)
            .expect("member");
        zip.write_all(b"a@example.com;news;01/06/2020 10:00:00;ip\n")
            .expect("member");
    }
    let bytes = zip.finish().expect("zip").into_inner();
    site.drop_file("pr-many.zip", &bytes);
    assert_case(
        &site,
        &daemon,
        "pr-many.zip",
        (
            "failed",
            "the zip archive holds 10000 members; a proof drop must hold exactly one file",
        ),
    );

    // A gzip file cut short.
    let whole = gzip(proof_rows("t", 2_000).as_bytes());
    site.drop_file("pr-truncated.csv.gz", &whole[..whole.len() / 2]);
    assert_case(
        &site,
        &daemon,
        "pr-truncated.csv.gz",
        ("failed", "the gzip file is corrupt or truncated"),
    );
    daemon.stop_cleanly();
}

#[test]
fn a_utf16_file_with_an_odd_number_of_bytes_rejects_its_last_row_only() {
    let site = Site::new(&IMPORT.replace("encoding = \"auto\"", "encoding = \"utf-16\""));
    let daemon = site.start();
    let mut bytes = b"\xFF\xFE".to_vec();
    bytes.extend(
        proof_rows("w", 20)
            .encode_utf16()
            .flat_map(u16::to_le_bytes),
    );
    bytes.extend_from_slice(b"x\0y");
    site.drop_file("pr-odd.txt", &bytes);
    let (under, report, rss) = reported(&site, &daemon, "pr-odd.txt");
    eprintln!(
        "pr-odd.txt: {under}, peak RSS {:.1} MiB",
        rss as f64 / 1024.0
    );
    assert_eq!(under, "archive", "{report}");
    assert_eq!(report["rows_accepted"], 20, "{report}");
    assert_eq!(report["rows_rejected"], 1, "{report}");
    let rejects = site
        .files_under("archive")
        .into_iter()
        .find(|path| path.to_string_lossy().ends_with("pr-odd.txt.rejects.csv"))
        .expect("rejects");
    let text = std::fs::read_to_string(rejects).expect("rejects");
    assert!(
        text.contains("\n22,\"not valid UTF-16 (a lone byte at the end of the file"),
        "{text}"
    );
    daemon.stop_cleanly();
}

#[test]
fn an_unclosed_quote_at_the_start_of_a_large_file_is_one_reject() {
    alone(IMPORT, |site, daemon| {
        unclosed_quote_case(site, daemon, env_number("HOSTILE_BIG_MB", 4).min(16))
    });
}

/// The 1 GiB cases: `cargo test --release --test hostile_drops -- --ignored`.
#[test]
#[ignore]
fn hostile_drops_at_scale() {
    let mib = env_number("HOSTILE_BIG_MB", 1024);
    let bomb = alone(IMPORT, |site, daemon| bomb_case(site, daemon, mib));
    let quote = alone(IMPORT, |site, daemon| {
        unclosed_quote_case(site, daemon, mib)
    });
    eprintln!(
        "{mib} MiB: gzip bomb peak RSS {:.1} MiB, unclosed quote peak RSS {:.1} MiB",
        bomb as f64 / 1024.0,
        quote as f64 / 1024.0
    );
}
