//! Throughput of training-example tokenization (`ChatTokenizer::encode_example`: chat template
//! renders for the label mask + tokenization with offsets) on ~100 MB of chat JSONL, in parallel
//! with rayon on 2 threads; plus tokenization alone of the pre-rendered texts, the number to put
//! beside Python `tokenizers`' `encode_batch` (`benches/tokenize_python.py`).
//!
//! Not criterion: one pass over 100 MB is the measurement. Run by hand:
//!
//! ```sh
//! cargo bench -p tuna-data --bench tokenize -- /work/shared/data/alpaca_en_demo.jsonl
//! ```
//!
//! The source file is repeated into `/tmp/tuna-bench-<name>-100mb.jsonl` (made once, not
//! committed). `TUNA_BENCH_MB` changes the size, `TUNA_BENCH_THREADS` the thread count,
//! `TUNA_BENCH_MODEL` the tokenizer directory (default `assets/qwen3`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Deserialize;
use tuna_data::tokenize::ChatTokenizer;
use tuna_data::{Conversation, Message};

#[derive(Deserialize)]
struct Row {
    messages: Vec<Message>,
}

/// CPU seconds (user + system, all threads) this process has used: unlike wall time, it is not
/// inflated when other processes share the cores. Linux only (`/proc/self/stat`); 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Repeats `src`'s lines into a file of at least `mb` MB under /tmp (reused when present).
fn big_file(src: &Path, mb: usize) -> std::io::Result<PathBuf> {
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = std::env::temp_dir().join(format!("tuna-bench-{stem}-{mb}mb.jsonl"));
    let target = (mb * 1_000_000) as u64;
    if std::fs::metadata(&out)
        .map(|m| m.len() >= target)
        .unwrap_or(false)
    {
        return Ok(out);
    }
    let data = std::fs::read(src)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let mut written = 0u64;
    while written < target {
        w.write_all(&data)?;
        if !data.ends_with(b"\n") {
            w.write_all(b"\n")?;
        }
        written += data.len() as u64;
    }
    w.flush()?;
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .or_else(|| std::env::var("TUNA_BENCH_DATA").ok())
        .ok_or("usage: cargo bench -p tuna-data --bench tokenize -- FILE.jsonl (or TUNA_BENCH_DATA=FILE.jsonl)")?;
    let mb = env_usize("TUNA_BENCH_MB", 100);
    let threads = env_usize("TUNA_BENCH_THREADS", 2);
    let model = std::env::var("TUNA_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/qwen3"));

    let path = big_file(Path::new(&src), mb)?;
    let bytes = std::fs::metadata(&path)?.len();
    let text = std::fs::read_to_string(&path)?;
    let convs: Vec<Conversation> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Row>(l).map(|r| Conversation {
                messages: r.messages,
            })
        })
        .collect::<Result<_, _>>()?;
    drop(text);
    let tok = ChatTokenizer::from_model_dir(&model)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "{}: {:.1} MB, {} conversations; {} threads; tokenizer {}",
        path.display(),
        bytes as f64 / 1e6,
        convs.len(),
        threads,
        model.display()
    );

    // 1. encode_example: renders + tokenization + labels.
    let (t, c) = (Instant::now(), cpu_seconds());
    let (tokens, trained) = pool.install(|| {
        convs
            .par_iter()
            .map(|c| tok.encode_example(c).map(|e| (e.len(), e.trained_tokens())))
            .try_reduce(|| (0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1)))
    })?;
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    println!(
        "encode_example: {tokens} tokens ({trained} trained) in {secs:.2} s = {:.0} tokens/s, {:.1} MB/s; {cpu:.1} CPU s = {:.0} tokens per CPU second",
        tokens as f64 / secs,
        bytes as f64 / 1e6 / secs,
        tokens as f64 / cpu
    );

    // 2. Tokenization alone of the rendered texts (what Python's encode_batch does).
    let rendered: Vec<String> = pool.install(|| {
        convs
            .par_iter()
            .map(|c| tok.template().render(&c.messages, false, None))
            .collect::<Result<_, _>>()
    })?;
    let (t, c) = (Instant::now(), cpu_seconds());
    let tokens2: usize = pool
        .install(|| {
            rendered
                .par_iter()
                .map(|s| tok.inner().encode(s.as_str(), false).map(|e| e.len()))
                .sum::<Result<usize, _>>()
        })
        .map_err(|e| e.to_string())?;
    let (secs2, cpu2) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    println!(
        "encode (with offsets) of rendered texts: {tokens2} tokens in {secs2:.2} s = {:.0} tokens/s; {cpu2:.1} CPU s = {:.0} tokens per CPU second",
        tokens2 as f64 / secs2,
        tokens2 as f64 / cpu2
    );
    assert_eq!(
        tokens, tokens2,
        "encode_example tokenizes the same rendered text"
    );
    Ok(())
}
