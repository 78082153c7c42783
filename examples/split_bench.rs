//! The record splitter alone against `csv-core`, on the same file:
//! records and fields counted, nothing decoded or validated.
//!
//!   cargo run --release --example split_bench -- FILE [SEPARATOR] [ROUNDS]
//!
//! The file is read into memory first; each round splits it with both, in
//! turn, and the best and median rows/s of each are printed. The separator
//! is one byte (default `;`).
use std::time::Instant;

use consent_drop::parse::{split_only, Separator};

fn ours(data: &[u8], separator: Separator) -> (u64, u64) {
    split_only(data, separator, 64 * 1024).unwrap_or((0, 0))
}

/// csv-core over the same bytes, 64 KiB at a time (as the reader reads).
fn csv_core(data: &[u8], sep: u8) -> (u64, u64) {
    use csv_core::ReadRecordResult::*;
    let mut reader = csv_core::ReaderBuilder::new().delimiter(sep).build();
    let (mut output, mut ends) = (vec![0u8; 64 * 1024], vec![0usize; 64]);
    let (mut rows, mut fields, mut pos, mut outlen, mut endlen) = (0u64, 0u64, 0, 0, 0);
    loop {
        let chunk = &data[pos..(pos + 64 * 1024).min(data.len())];
        let (result, nin, nout, nend) =
            reader.read_record(chunk, &mut output[outlen..], &mut ends[endlen..]);
        pos += nin;
        outlen += nout;
        endlen += nend;
        match result {
            InputEmpty => {}
            OutputFull | OutputEndsFull => {
                eprintln!("a record longer than the buffers");
                return (rows, fields);
            }
            Record => {
                rows += 1;
                fields += endlen as u64;
                (outlen, endlen) = (0, 0);
            }
            End => return (rows, fields),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: split_bench FILE [SEPARATOR] [ROUNDS]");
        std::process::exit(2);
    };
    let sep_text = args.next().unwrap_or_else(|| ";".into());
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    let Some(separator) = Separator::from_config(&sep_text) else {
        eprintln!("{sep_text:?}: not a separator");
        std::process::exit(2);
    };
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(err) => {
            eprintln!("{path}: {err}");
            std::process::exit(2);
        }
    };
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut counts = [(0, 0); 2];
    for _ in 0..rounds {
        for (which, slot) in times.iter_mut().enumerate() {
            let start = Instant::now();
            counts[which] = if which == 0 {
                ours(&data, separator)
            } else {
                csv_core(&data, separator.byte())
            };
            slot.push(start.elapsed().as_secs_f64());
        }
    }
    println!(
        "{:<10} {:>10} {:>10} {:>14} {:>14} {:>10}",
        "splitter", "rows", "fields", "best rows/s", "median rows/s", "MB/s best"
    );
    for (which, name) in ["ours", "csv-core"].iter().enumerate() {
        let mut sorted = times[which].clone();
        sorted.sort_by(f64::total_cmp);
        let best = sorted[0].max(1e-9);
        let median = sorted[sorted.len() / 2].max(1e-9);
        let (rows, fields) = counts[which];
        println!(
            "{name:<10} {rows:>10} {fields:>10} {:>14.0} {:>14.0} {:>10.0}",
            rows as f64 / best,
            rows as f64 / median,
            data.len() as f64 / best / 1e6
        );
    }
}
