//! Dataset statistics: counts per role, turns, duplicates and, with a token counter, token
//! distributions and what an epoch costs.
//!
//! Memory stays bounded whatever the file: token distributions are kept as counts per distinct
//! length (at most one entry per possible length, and lengths are bounded by the line limit), and
//! duplicate detection remembers at most [`super::CheckOptions::max_tracked_examples`] hashes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use super::issue::Code;
use super::{CheckOptions, DataFormat, Overflow, TokenCount};

/// Everything counted in one pass. Counts cover valid examples only, except the line counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The format the lines were checked against (given, or recognised from the first line).
    #[serde(default)]
    pub format: DataFormat,
    /// Lines read (blank and invalid ones included).
    pub lines: u64,
    /// Valid conversations (preference pairs in a preference file): what training will see.
    pub examples: u64,
    /// Lines with at least one error.
    pub invalid_lines: u64,
    pub blank_lines: u64,
    /// In a preference file: the messages of the inputs, plus the preferred output as the one
    /// trained assistant message of each pair.
    pub messages: RoleCounts,
    pub examples_with_system: u64,
    /// User → assistant exchanges (an assistant message right after a user message), all examples.
    pub turns: u64,
    /// Examples with more than one turn.
    pub multi_turn_examples: u64,
    pub max_turns: u64,
    /// Examples equal to an earlier one (after trimming whitespace around each message).
    pub duplicates: u64,
    /// False when the file had more examples than the duplicate tracker remembers, so duplicates
    /// of later examples were only looked up among the first ones.
    pub duplicates_exact: bool,
    /// All errors found; `errors` in the report keeps only the first ones.
    pub error_count: u64,
    pub warning_count: u64,
    pub errors_by_code: BTreeMap<Code, u64>,
    pub warnings_by_code: BTreeMap<Code, u64>,
    /// Present when a token counter was given.
    pub tokens: Option<TokenStats>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleCounts {
    pub system: u64,
    pub user: u64,
    pub assistant: u64,
    /// Assistant messages with weight 1 (the default).
    pub assistant_trained: u64,
}

/// Tokens of the valid examples, as the chat template and tokenizer produce them.
///
/// A preference pair is two sequences, prompt + preferred output and prompt + non-preferred
/// output, trained together: its totals are the sums over both, and it is over `max_seq_len` (and
/// in the histogram's bucket) by its longer sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    pub max_seq_len: usize,
    /// What happens to an example over `max_seq_len`: `drop` or `truncate`.
    pub overflow: Overflow,
    /// Examples counted (all valid ones).
    pub examples: u64,
    /// Tokens per example, before any truncation.
    pub total: Summary,
    /// Trained (assistant, weight 1) tokens per example, before any truncation.
    pub trained: Summary,
    /// Preference files only: prompt and answer tokens per pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PairTokenStats>,
    pub over_max_seq_len: u64,
    pub dropped: u64,
    pub truncated: u64,
    /// Tokens one epoch trains on, after dropping or truncating: what the cost estimate uses.
    pub epoch_tokens: u64,
    pub epoch_trained_tokens: u64,
    /// False when truncated examples' trained tokens had to be estimated (the counter could not
    /// say where they sit); the estimate is an upper bound.
    pub epoch_trained_tokens_exact: bool,
    /// Examples per total-token bucket (pairs by their longer sequence), for the console.
    pub histogram: Vec<Bucket>,
}

/// Tokens per preference pair, before any truncation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairTokenStats {
    /// Tokens of the prompt + preferred sequence that are not trained: the rendered input with the
    /// generation prompt (plus what the template writes after the answer, one newline for Qwen).
    pub prompt: Summary,
    /// Trained tokens of the preferred output (what the template renders for it, up to its
    /// end-of-turn token).
    pub chosen: Summary,
    /// Trained tokens of the non-preferred output.
    pub rejected: Summary,
}

/// min / mean / p50 / p95 / max; percentiles by nearest rank (the smallest value with at least
/// p% of the examples at or below it). All zero when there are no examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

/// Examples with `min <= tokens < max` (`max: null` = no upper bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub min: u64,
    pub max: Option<u64>,
    pub count: u64,
}

/// Fixed bucket edges: powers of two from 64 to 32768 tokens, so histograms of two datasets compare.
pub const HISTOGRAM_EDGES: [u64; 10] = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768];

/// Counts per distinct value: exact percentiles in memory bounded by the largest value.
#[derive(Debug, Default)]
pub(crate) struct Distribution {
    counts: BTreeMap<u64, u64>,
    n: u64,
    sum: u128,
}

impl Distribution {
    pub fn add(&mut self, v: u64) {
        *self.counts.entry(v).or_insert(0) += 1;
        self.n += 1;
        self.sum += u128::from(v);
    }

    pub fn summary(&self) -> Summary {
        if self.n == 0 {
            return Summary::default();
        }
        Summary {
            min: self.counts.keys().next().copied().unwrap_or(0),
            mean: self.sum as f64 / self.n as f64,
            p50: self.percentile(50),
            p95: self.percentile(95),
            max: self.counts.keys().next_back().copied().unwrap_or(0),
        }
    }

    /// Nearest rank: the value at 1-based rank ceil(p/100 · n).
    fn percentile(&self, p: u64) -> u64 {
        let rank = (p * self.n).div_ceil(100).max(1);
        let mut seen = 0;
        for (&v, &c) in &self.counts {
            seen += c;
            if seen >= rank {
                return v;
            }
        }
        0
    }
}

/// Token statistics while they are being gathered.
#[derive(Debug)]
pub(crate) struct TokenAcc {
    total: Distribution,
    trained: Distribution,
    over: u64,
    dropped: u64,
    truncated: u64,
    epoch_tokens: u64,
    epoch_trained: u64,
    exact: bool,
    buckets: [u64; HISTOGRAM_EDGES.len() + 1],
    /// Preference pairs: prompt, chosen and rejected distributions.
    pairs: Option<[Distribution; 3]>,
}

impl TokenAcc {
    pub fn new() -> Self {
        Self {
            total: Distribution::default(),
            trained: Distribution::default(),
            over: 0,
            dropped: 0,
            truncated: 0,
            epoch_tokens: 0,
            epoch_trained: 0,
            exact: true,
            buckets: [0; HISTOGRAM_EDGES.len() + 1],
            pairs: None,
        }
    }

    /// One chat example.
    pub fn add(&mut self, tc: &TokenCount, opts: &CheckOptions) {
        self.add_sequences(&[*tc], opts);
    }

    /// One preference pair: its prompt + preferred and prompt + non-preferred sequences.
    pub fn add_pair(&mut self, chosen: &TokenCount, rejected: &TokenCount, opts: &CheckOptions) {
        let [prompt, c, r] = self.pairs.get_or_insert_with(Default::default);
        prompt.add(chosen.total.saturating_sub(chosen.trained) as u64);
        c.add(chosen.trained as u64);
        r.add(rejected.trained as u64);
        self.add_sequences(&[*chosen, *rejected], opts);
    }

    /// One example made of `seqs` trained together: kept or dropped as a whole, by its longest.
    fn add_sequences(&mut self, seqs: &[TokenCount], opts: &CheckOptions) {
        let total: u64 = seqs.iter().map(|s| s.total as u64).sum();
        let trained: u64 = seqs.iter().map(|s| s.trained as u64).sum();
        let longest = seqs.iter().map(|s| s.total as u64).max().unwrap_or(0);
        self.total.add(total);
        self.trained.add(trained);
        self.buckets[HISTOGRAM_EDGES.partition_point(|&e| e <= longest)] += 1;
        let max = opts.max_seq_len as u64;
        if longest <= max {
            self.epoch_tokens += total;
            self.epoch_trained += trained;
            return;
        }
        self.over += 1;
        match opts.overflow {
            Overflow::Drop => self.dropped += 1,
            Overflow::Truncate => {
                self.truncated += 1;
                for s in seqs {
                    let (total, trained) = (s.total as u64, s.trained as u64);
                    self.epoch_tokens += total.min(max);
                    self.epoch_trained += match s.trained_within_limit {
                        Some(t) => t as u64,
                        None if total <= max => trained,
                        None => {
                            self.exact = false;
                            trained.min(max)
                        }
                    };
                }
            }
        }
    }

    /// Examples that stay in training after dropping.
    pub fn kept(&self) -> u64 {
        self.total.n - self.dropped
    }

    pub fn finish(&self, opts: &CheckOptions) -> TokenStats {
        let mut histogram = Vec::with_capacity(self.buckets.len());
        let mut lo = 0;
        for (i, &count) in self.buckets.iter().enumerate() {
            let hi = HISTOGRAM_EDGES.get(i).copied();
            histogram.push(Bucket {
                min: lo,
                max: hi,
                count,
            });
            lo = hi.unwrap_or(lo);
        }
        TokenStats {
            max_seq_len: opts.max_seq_len,
            overflow: opts.overflow,
            examples: self.total.n,
            total: self.total.summary(),
            trained: self.trained.summary(),
            pairs: self.pairs.as_ref().map(|[p, c, r]| PairTokenStats {
                prompt: p.summary(),
                chosen: c.summary(),
                rejected: r.summary(),
            }),
            over_max_seq_len: self.over,
            dropped: self.dropped,
            truncated: self.truncated,
            epoch_tokens: self.epoch_tokens,
            epoch_trained_tokens: self.epoch_trained,
            epoch_trained_tokens_exact: self.exact,
            histogram,
        }
    }
}

/// Hashes are already uniform 64-bit values: use them as they are.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Conversation hash → first line it was seen on.
pub(crate) type SeenMap = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Sorting all values and indexing by nearest rank: the definition, written the slow way.
    fn nearest_rank(values: &[u64], p: f64) -> u64 {
        let mut v = values.to_vec();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank - 1]
    }

    #[test]
    fn percentiles_match_sorting() {
        // A fixed pseudo-random sequence (LCG) with repeats.
        let mut x = 12345u64;
        for n in [1usize, 2, 3, 19, 20, 21, 100, 1001] {
            let values: Vec<u64> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 33) % 500
                })
                .collect();
            let mut d = Distribution::default();
            values.iter().for_each(|&v| d.add(v));
            let s = d.summary();
            assert_eq!(s.p50, nearest_rank(&values, 50.0), "n {n}");
            assert_eq!(s.p95, nearest_rank(&values, 95.0), "n {n}");
            assert_eq!(s.min, *values.iter().min().unwrap());
            assert_eq!(s.max, *values.iter().max().unwrap());
            let mean = values.iter().sum::<u64>() as f64 / n as f64;
            assert!((s.mean - mean).abs() < 1e-9);
        }
        assert_eq!(Distribution::default().summary(), Summary::default());
    }

    #[test]
    fn histogram_buckets_are_half_open() {
        let opts = CheckOptions::default();
        let mut acc = TokenAcc::new();
        for t in [0, 63, 64, 127, 32767, 32768, 1 << 40] {
            acc.add(
                &TokenCount {
                    total: t,
                    trained: 0,
                    trained_within_limit: None,
                },
                &opts,
            );
        }
        let h = acc.finish(&opts).histogram;
        assert_eq!(h.len(), 11);
        assert_eq!((h[0].min, h[0].max, h[0].count), (0, Some(64), 2));
        assert_eq!((h[1].min, h[1].max, h[1].count), (64, Some(128), 2));
        assert_eq!((h[9].min, h[9].max, h[9].count), (16384, Some(32768), 1));
        assert_eq!((h[10].min, h[10].max, h[10].count), (32768, None, 2));
    }
}
