//! Throughput of the structural check (no token counter) on a large JSONL file.
//!
//! ```text
//! TUNA_BENCH_SOURCES=/path/alpaca_en_demo.jsonl:/path/alpaca_zh_demo.jsonl \
//!     cargo bench -p tuna-data --bench check
//! ```
//!
//! Builds `$TUNA_BENCH_FILE` (default `/tmp/tuna-bench-check.jsonl`) of `$TUNA_BENCH_BYTES` bytes
//! (default 1 GB) by repeating the lines of the source files (default: the identity fixture), each
//! copy made unique by a counter in its first `content` so that the duplicate tracker sees as many
//! distinct examples as a real file would. The file is reused when it already has that size.
//! Then checks it three times and prints MB/s (1 MB = 10^6 bytes). Not a criterion bench: one
//! pass over a gigabyte is the measurement, and repeating it dozens of times would take minutes.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tuna_data::{CheckOptions, check_file};

fn main() {
    let sources: Vec<PathBuf> = match std::env::var("TUNA_BENCH_SOURCES") {
        Ok(s) => s.split(':').map(PathBuf::from).collect(),
        Err(_) => vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datasets/identity.jsonl"),
        ],
    };
    let target: u64 = std::env::var("TUNA_BENCH_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000_000);
    let path = PathBuf::from(
        std::env::var("TUNA_BENCH_FILE").unwrap_or_else(|_| "/tmp/tuna-bench-check.jsonl".into()),
    );

    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(target) {
        generate(&sources, &path, target);
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let opts = CheckOptions::default();
    println!(
        "file {} ({bytes} bytes), {} rayon threads",
        path.display(),
        rayon::current_num_threads()
    );
    let mut rates = Vec::new();
    for run in 1..=3 {
        let start = Instant::now();
        let report = match check_file(&path, &opts, None) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("check failed: {e}");
                std::process::exit(1);
            }
        };
        let secs = start.elapsed().as_secs_f64();
        let rate = bytes as f64 / 1e6 / secs;
        rates.push(rate);
        println!(
            "run {run}: {secs:.2} s, {rate:.0} MB/s, {} examples, {} errors, {} warnings, {} duplicates",
            report.stats.examples,
            report.stats.error_count,
            report.stats.warning_count,
            report.stats.duplicates
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "check: median {:.0} MB/s, best {:.0} MB/s",
        rates[1], rates[2]
    );
}

/// Repeats the source lines up to `target` bytes (cut at a line end), each copy unique.
fn generate(sources: &[PathBuf], path: &Path, target: u64) {
    let mut lines = Vec::new();
    for s in sources {
        let text =
            std::fs::read_to_string(s).unwrap_or_else(|e| panic!("reading {}: {e}", s.display()));
        lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    assert!(!lines.is_empty(), "no lines in {sources:?}");
    let file =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    let mut n = 0u64;
    'outer: loop {
        for l in &lines {
            let unique = l.replacen("\"content\": \"", &format!("\"content\": \"[{n}] "), 1);
            n += 1;
            if written + unique.len() as u64 + 1 > target {
                break 'outer;
            }
            written += unique.len() as u64 + 1;
            out.write_all(unique.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .expect("writing the bench file");
        }
    }
    // Pad with one blank line to the exact size, so the size check above recognises the file next time.
    let pad = (target - written) as usize;
    if pad > 0 {
        out.write_all(format!("{}\n", " ".repeat(pad - 1)).as_bytes())
            .expect("writing the bench file");
    }
    out.flush().expect("writing the bench file");
    println!("wrote {} ({target} bytes)", path.display());
}
