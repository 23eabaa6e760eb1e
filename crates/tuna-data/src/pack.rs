//! Example order and batching: a seeded shuffle per epoch, a seeded validation split, the length
//! policy, and padding-free packing of examples into rows with per-example boundaries.
//!
//! Packing concatenates examples without padding. Each example keeps its own positions (they
//! restart at 0) and its own targets (shifted inside the example only); `seq_lens` records the
//! boundaries, and the attention kernel keeps every token inside its example (block-diagonal
//! causal attention, tested in tuna-engine). So a packed row computes exactly what the examples
//! would compute one by one.

use serde::{Deserialize, Serialize};

use crate::mask::IGNORE_INDEX;
use crate::tokenize::TokenizedExample;

/// What happens to an example longer than the maximum sequence length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LengthPolicy {
    /// Leave it out of training.
    #[default]
    Drop,
    /// Keep its first `max_seq_len` tokens.
    Truncate,
}

impl LengthPolicy {
    /// Applies the policy: `None` when the example is dropped. Examples within the limit are
    /// returned unchanged.
    pub fn apply(self, mut ex: TokenizedExample, max_seq_len: usize) -> Option<TokenizedExample> {
        if ex.input_ids.len() <= max_seq_len {
            return Some(ex);
        }
        match self {
            LengthPolicy::Drop => None,
            LengthPolicy::Truncate => {
                ex.input_ids.truncate(max_seq_len);
                ex.labels.truncate(max_seq_len);
                Some(ex)
            }
        }
    }
}

/// Examples packed into one row of tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedBatch {
    /// (t) token ids of all examples, concatenated.
    pub input_ids: Vec<u32>,
    /// (t) shifted targets: `targets[t]` is the label of token t+1 of the same example
    /// ([`IGNORE_INDEX`] at each example's last position, and wherever the label is ignored).
    pub targets: Vec<i32>,
    /// (t) position of each token inside its example: 0, 1, ... restarting at each example.
    pub position_ids: Vec<u32>,
    /// Length of each example, in order; they sum to `input_ids.len()`.
    pub seq_lens: Vec<usize>,
}

impl PackedBatch {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions with a target (the loss's normalizer for this row).
    pub fn trained_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }

    /// Appends the first `len` tokens of `ex`.
    fn push(&mut self, ex: &TokenizedExample, len: usize) {
        debug_assert!(len <= ex.input_ids.len() && ex.labels.len() == ex.input_ids.len());
        self.input_ids.extend_from_slice(&ex.input_ids[..len]);
        self.targets.extend_from_slice(&ex.labels[1..len]);
        self.targets.push(IGNORE_INDEX);
        self.position_ids.extend(0..len as u32);
        self.seq_lens.push(len);
    }
}

/// Packs `examples`, in the given order, greedily into rows of at most `max_tokens` tokens: a
/// new row starts when the next example does not fit. Examples are never split across rows.
/// An example longer than `max_tokens` is cut to its first `max_tokens` tokens (callers apply
/// [`LengthPolicy`] first; this keeps the row bound whatever they pass). Empty examples are
/// skipped; `max_tokens == 0` gives no rows.
pub fn pack_examples(examples: &[&TokenizedExample], max_tokens: usize) -> Vec<PackedBatch> {
    let mut rows = Vec::new();
    let mut row = PackedBatch::default();
    for ex in examples {
        let len = ex.input_ids.len().min(ex.labels.len()).min(max_tokens);
        if len == 0 {
            continue;
        }
        if !row.is_empty() && row.len() + len > max_tokens {
            rows.push(std::mem::take(&mut row));
        }
        row.push(ex, len);
    }
    if !row.is_empty() {
        rows.push(row);
    }
    rows
}

/// The epoch stream used by [`split_validation`], apart from the epochs' shuffles.
const SPLIT_STREAM: u64 = u64::MAX;

/// A permutation of `0..n`, determined by `(seed, epoch)`: the order examples are visited in
/// epoch `epoch`. Uses a fixed generator (SplitMix64 + Fisher–Yates) rather than `rand`'s
/// `StdRng`, whose algorithm may change between rand versions: a resumed run must see the same
/// order as the run it continues, whatever build resumes it.
pub fn shuffle_indices(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed, epoch);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Splits `0..n` into (train, validation), both in ascending (file) order. Validation gets
/// `round(fraction · n)` examples chosen by `seed`, at least 1 when `fraction > 0` and `n ≥ 2`, and
/// never all of them: training keeps at least one example when `n ≥ 1`.
pub fn split_validation(n: usize, fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut count = (fraction as f64 * n as f64).round() as usize;
    if fraction > 0.0 && n >= 2 {
        count = count.max(1);
    }
    count = count.min(n.saturating_sub(1));
    let order = shuffle_indices(n, seed, SPLIT_STREAM);
    let mut is_val = vec![false; n];
    for &i in &order[..count] {
        is_val[i] = true;
    }
    let (val, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| is_val[i]);
    (train, val)
}

/// SplitMix64 (Steele, Lea & Flood 2014; the seeding generator of xoshiro):
/// <https://prng.di.unimi.it/splitmix64.c>.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream per `(seed, stream)` pair: the pair is hashed into the starting state.
    fn new(seed: u64, stream: u64) -> Self {
        let mut h = SplitMix64 { state: seed };
        let a = h.next_u64();
        let mut h = SplitMix64 {
            state: a ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        SplitMix64 {
            state: h.next_u64(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias (Lemire 2019, multiply and reject).
    fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = self.next_u64() as u128 * n as u128;
            if m as u64 >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // From the reference C code (splitmix64.c) with x = 1234567: the first three outputs.
        let mut r = SplitMix64 { state: 1234567 };
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = SplitMix64::new(7, 0);
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            seen[r.below(5) as usize] += 1;
        }
        // Each bucket expects 1000; 5 sigma is ~140.
        assert!(seen.iter().all(|&c| (850..1150).contains(&c)), "{seen:?}");
    }

    #[test]
    fn length_policy() {
        let ex = TokenizedExample {
            input_ids: vec![1, 2, 3, 4],
            labels: vec![-100, -100, 3, 4],
        };
        assert_eq!(LengthPolicy::Drop.apply(ex.clone(), 4), Some(ex.clone()));
        assert_eq!(LengthPolicy::Drop.apply(ex.clone(), 3), None);
        let cut = LengthPolicy::Truncate.apply(ex, 3).expect("kept");
        assert_eq!(
            (cut.input_ids, cut.labels),
            (vec![1, 2, 3], vec![-100, -100, 3])
        );
        assert_eq!(LengthPolicy::default(), LengthPolicy::Drop);
        assert_eq!(
            serde_json::to_string(&LengthPolicy::Truncate)
                .ok()
                .as_deref(),
            Some("\"truncate\"")
        );
    }
}
