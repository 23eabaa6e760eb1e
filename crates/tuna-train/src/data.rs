//! The training data of a run: conversations → tokenized examples (length policy applied) →
//! train / validation split → a fixed plan of which examples form each micro-batch of each step.
//!
//! The plan is a pure function of the examples, the seed and the batching settings: epoch `e`
//! visits the examples in `shuffle_indices(n, seed, e)` order. So resuming needs only the step
//! number, and a resumed run sees exactly the batches the uninterrupted run would have.
//! A step never spans two epochs; the last step of an epoch may have fewer micro-batches.
//!
//! Preference data (DPO) is planned in pairs: a pair's two sequences, prompt + preferred and
//! prompt + non-preferred, are one unit of the plan, so they always share a micro-batch (packed
//! preferred first), and `batch_size` counts pairs.

use std::ops::Range;
use std::path::Path;

use tuna_data::pack::{self, LengthPolicy, PackedBatch};
use tuna_data::tokenize::{ChatTokenizer, TokenizedExample, TokenizedPair};
use tuna_data::{Conversation, Message, PreferenceExample, Role};
use tuna_model::train::TrainBatch;

use crate::config::{BatchSize, TrainConfig, default_validation_count};
use crate::error::{Error, Result};

/// A conversation whose last assistant answer is generated at each checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePrompt {
    /// The messages before the last assistant message.
    pub messages: Vec<Message>,
    /// The last assistant message of the dataset (the preferred output of a preference pair).
    pub reference: String,
    /// The non-preferred output of a preference pair.
    pub non_preferred: Option<String>,
    /// False when taken from the training data (there was no validation data).
    pub held_out: bool,
}

impl SamplePrompt {
    /// `None` when the conversation has no assistant message after a user message.
    pub fn from_conversation(c: &Conversation, held_out: bool) -> Option<Self> {
        let last = c.messages.iter().rposition(|m| m.role == Role::Assistant)?;
        let messages = c.messages[..last].to_vec();
        if !messages.iter().any(|m| m.role == Role::User) {
            return None;
        }
        Some(SamplePrompt {
            messages,
            reference: c.messages[last].content.clone(),
            non_preferred: None,
            held_out,
        })
    }

    /// The pair's prompt, with both of its answers to show beside the generated one.
    pub fn from_pair(p: &PreferenceExample, held_out: bool) -> Self {
        SamplePrompt {
            messages: p.input.clone(),
            reference: p.preferred.clone(),
            non_preferred: Some(p.non_preferred.clone()),
            held_out,
        }
    }
}

/// Counts that explain what happened to the input data. With preference data an example is a
/// pair; it is truncated when either sequence is, and dropped as a whole.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DataStats {
    pub train_examples: usize,
    pub validation_examples: usize,
    /// Examples cut to `max_seq_len` (length policy `truncate`).
    pub truncated: usize,
    /// Examples left out because they were longer than `max_seq_len` (length policy `drop`).
    pub dropped_too_long: usize,
    /// Examples left out because no trained token was left (every assistant turn has weight 0,
    /// or truncation cut all of them).
    pub dropped_no_labels: usize,
    /// Tokens of one pass over the training examples.
    pub train_tokens: usize,
    /// Trained (labelled) tokens of one pass over the training examples.
    pub train_trained_tokens: usize,
}

/// Tokenized examples ready to be planned.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// With `paired`, sequences `2i` and `2i + 1` are the preferred and the non-preferred
    /// sequence of pair `i`.
    pub train: Vec<TokenizedExample>,
    pub validation: Vec<TokenizedExample>,
    pub samples: Vec<SamplePrompt>,
    pub stats: DataStats,
    /// Preference pairs (DPO): the plan's units are pairs of consecutive sequences.
    pub paired: bool,
}

impl Dataset {
    /// Reads and tokenizes the run's data files (chat data; preference pairs for DPO, see
    /// [`Dataset::load_pairs`]) and splits off the validation set.
    pub fn load(cfg: &TrainConfig, tokenizer: &ChatTokenizer) -> Result<Self> {
        if cfg.objective == crate::config::Objective::Dpo {
            return Self::load_pairs(cfg, tokenizer);
        }
        let mut stats = DataStats::default();
        let (train_conv, val_conv) = read_split(cfg, read)?;
        let held_out = !val_conv.is_empty();
        let source = if held_out { &val_conv } else { &train_conv };
        let samples = source
            .iter()
            .filter_map(|c| SamplePrompt::from_conversation(c, held_out))
            .take(cfg.sample_prompts)
            .collect();

        let encode =
            |convs: &[Conversation], stats: &mut DataStats| -> Result<Vec<TokenizedExample>> {
                let mut out = Vec::with_capacity(convs.len());
                for ex in tokenizer.encode_examples(convs) {
                    if let Some(ex) =
                        apply_length_policy(ex?, cfg.max_seq_len, cfg.length_policy, stats)
                    {
                        out.push(ex);
                    }
                }
                Ok(out)
            };
        let train = encode(&train_conv, &mut stats)?;
        let validation = encode(&val_conv, &mut stats)?;
        if train.is_empty() {
            return Err(Error::Dataset {
                path: cfg.train_file.clone(),
                reason: format!(
                    "no usable training example ({} read; {} too long for max_seq_len {}, {} without a trained assistant token)",
                    train_conv.len(),
                    stats.dropped_too_long,
                    cfg.max_seq_len,
                    stats.dropped_no_labels
                ),
            });
        }
        Ok(Dataset::from_examples(train, validation, samples, stats))
    }

    /// Reads preference pairs (DPO), splits off the validation pairs and tokenizes each pair's
    /// two sequences; a pair is truncated or dropped as a whole (by its longer sequence), and
    /// dropped when either answer has no trained token left.
    pub fn load_pairs(cfg: &TrainConfig, tokenizer: &ChatTokenizer) -> Result<Self> {
        let mut stats = DataStats::default();
        let (train_pairs, val_pairs) = read_split(cfg, read_pairs)?;
        let held_out = !val_pairs.is_empty();
        let source = if held_out { &val_pairs } else { &train_pairs };
        let samples = source
            .iter()
            .take(cfg.sample_prompts)
            .map(|p| SamplePrompt::from_pair(p, held_out))
            .collect();
        let encode =
            |pairs: &[PreferenceExample], stats: &mut DataStats| -> Result<Vec<TokenizedPair>> {
                let mut out = Vec::with_capacity(pairs.len());
                for pair in tokenizer.encode_preferences(pairs) {
                    if let Some(pair) =
                        apply_pair_length_policy(pair?, cfg.max_seq_len, cfg.length_policy, stats)
                    {
                        out.push(pair);
                    }
                }
                Ok(out)
            };
        let train = encode(&train_pairs, &mut stats)?;
        let validation = encode(&val_pairs, &mut stats)?;
        if train.is_empty() {
            return Err(Error::Dataset {
                path: cfg.train_file.clone(),
                reason: format!(
                    "no usable preference pair ({} read; {} too long for max_seq_len {}, {} with an answer cut away)",
                    train_pairs.len(),
                    stats.dropped_too_long,
                    cfg.max_seq_len,
                    stats.dropped_no_labels
                ),
            });
        }
        Ok(Dataset::from_pairs(train, validation, samples, stats))
    }

    /// A dataset from examples tokenized elsewhere (tests, benchmarks); fills in the counts.
    pub fn from_examples(
        train: Vec<TokenizedExample>,
        validation: Vec<TokenizedExample>,
        samples: Vec<SamplePrompt>,
        stats: DataStats,
    ) -> Self {
        Dataset {
            train,
            validation,
            samples,
            stats,
            paired: false,
        }
        .counted()
    }

    /// A preference dataset from pairs tokenized elsewhere; fills in the counts.
    pub fn from_pairs(
        train: Vec<TokenizedPair>,
        validation: Vec<TokenizedPair>,
        samples: Vec<SamplePrompt>,
        stats: DataStats,
    ) -> Self {
        let flat = |pairs: Vec<TokenizedPair>| {
            pairs
                .into_iter()
                .flat_map(|p| [p.chosen, p.rejected])
                .collect()
        };
        Dataset {
            train: flat(train),
            validation: flat(validation),
            samples,
            stats,
            paired: true,
        }
        .counted()
    }

    fn counted(mut self) -> Self {
        let per = self.unit_len();
        self.stats.train_examples = self.train.len() / per;
        self.stats.validation_examples = self.validation.len() / per;
        self.stats.train_tokens = self.train.iter().map(|e| e.input_ids.len()).sum();
        self.stats.train_trained_tokens = self
            .train
            .iter()
            .map(TokenizedExample::trained_tokens)
            .sum();
        self
    }

    /// Sequences per unit of the plan: 2 for preference pairs, else 1.
    pub fn unit_len(&self) -> usize {
        if self.paired { 2 } else { 1 }
    }

    /// Units (examples or pairs) of the training set.
    pub fn train_units(&self) -> usize {
        self.train.len() / self.unit_len()
    }
}

/// The training rows of `cfg.train_file` and the validation rows (`cfg.validation_file`, or a
/// seeded share of the training rows).
fn read_split<T: Clone>(
    cfg: &TrainConfig,
    read: fn(&Path) -> Result<Vec<T>>,
) -> Result<(Vec<T>, Vec<T>)> {
    let train = read(&cfg.train_file)?;
    Ok(match &cfg.validation_file {
        Some(path) => (train, read(path)?),
        None => {
            let n = train.len();
            let fraction = cfg
                .validation_fraction
                .unwrap_or(default_validation_count(n) as f32 / n as f32);
            let (train_idx, val_idx) = pack::split_validation(n, fraction, cfg.seed);
            let pick = |idx: &[usize]| idx.iter().map(|&i| train[i].clone()).collect::<Vec<_>>();
            (pick(&train_idx), pick(&val_idx))
        }
    })
}

fn read(path: &Path) -> Result<Vec<Conversation>> {
    let convs = tuna_data::jsonl::read_conversations(path)?;
    if convs.is_empty() {
        return Err(Error::Dataset {
            path: path.to_path_buf(),
            reason: "the file holds no conversation".into(),
        });
    }
    Ok(convs)
}

fn read_pairs(path: &Path) -> Result<Vec<PreferenceExample>> {
    let pairs = tuna_data::jsonl::read_preference_pairs(path)?;
    if pairs.is_empty() {
        return Err(Error::Dataset {
            path: path.to_path_buf(),
            reason: "the file holds no preference pair".into(),
        });
    }
    Ok(pairs)
}

/// [`apply_length_policy`] for a pair: both sequences kept, or the pair dropped.
fn apply_pair_length_policy(
    pair: TokenizedPair,
    max_len: usize,
    policy: LengthPolicy,
    stats: &mut DataStats,
) -> Option<TokenizedPair> {
    let too_long = pair.chosen.len().max(pair.rejected.len()) > max_len;
    if too_long && policy == LengthPolicy::Drop {
        stats.dropped_too_long += 1;
        return None;
    }
    let (chosen, rejected) = (
        policy.apply(pair.chosen, max_len)?,
        policy.apply(pair.rejected, max_len)?,
    );
    if too_long {
        stats.truncated += 1;
    }
    if chosen.trained_tokens() == 0 || rejected.trained_tokens() == 0 {
        stats.dropped_no_labels += 1;
        return None;
    }
    Some(TokenizedPair { chosen, rejected })
}

/// Cuts or drops an over-long example and drops one without a trained token.
fn apply_length_policy(
    ex: TokenizedExample,
    max_len: usize,
    policy: LengthPolicy,
    stats: &mut DataStats,
) -> Option<TokenizedExample> {
    let too_long = ex.input_ids.len() > max_len;
    let Some(ex) = policy.apply(ex, max_len) else {
        stats.dropped_too_long += 1;
        return None;
    };
    if too_long {
        stats.truncated += 1;
    }
    if ex.trained_tokens() == 0 {
        stats.dropped_no_labels += 1;
        return None;
    }
    Some(ex)
}

/// One optimizer step's share of the plan: micro-batches `micro` of epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub epoch: usize,
    pub micro: Range<usize>,
}

/// Which training examples each micro-batch of each step holds, for the whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `epochs[e][m]`: indices into `Dataset::train` of micro-batch `m` of epoch `e`.
    epochs: Vec<Vec<Vec<usize>>>,
    steps: Vec<PlannedStep>,
    batch_size: BatchSize,
}

impl Plan {
    /// Plans `cfg.epochs` epochs, or as many as `cfg.max_steps` needs (then cut to `max_steps`).
    pub fn new(data: &Dataset, cfg: &TrainConfig) -> Self {
        let lens = unit_lens(data, &data.train);
        let accum = cfg.gradient_accumulation_steps;
        let mut epochs = Vec::new();
        let mut steps = Vec::new();
        loop {
            let e = epochs.len();
            let enough = match cfg.max_steps {
                Some(max) => steps.len() >= max,
                None => e >= cfg.epochs,
            };
            if enough {
                break;
            }
            let order = pack::shuffle_indices(lens.len(), cfg.seed, e as u64);
            let micro = group(&order, &lens, cfg.batch_size);
            for start in (0..micro.len()).step_by(accum) {
                steps.push(PlannedStep {
                    epoch: e,
                    micro: start..(start + accum).min(micro.len()),
                });
            }
            epochs.push(micro);
        }
        if let Some(max) = cfg.max_steps {
            steps.truncate(max);
        }
        Plan {
            epochs,
            steps,
            batch_size: cfg.batch_size,
        }
    }

    pub fn total_steps(&self) -> usize {
        self.steps.len()
    }

    pub fn step(&self, step: usize) -> &PlannedStep {
        &self.steps[step]
    }

    /// Fractional epochs done after `steps` steps.
    pub fn epoch_after(&self, steps: usize) -> f32 {
        match steps.checked_sub(1).map(|s| &self.steps[s]) {
            None => 0.0,
            Some(s) => s.epoch as f32 + s.micro.end as f32 / self.epochs[s.epoch].len() as f32,
        }
    }

    /// Whether step `step` (0-based) is the last of its epoch.
    pub fn ends_epoch(&self, step: usize) -> bool {
        let s = &self.steps[step];
        s.micro.end == self.epochs[s.epoch].len()
    }

    /// A digest of the micro-batch contents of the first `steps` steps: resuming checks that the
    /// data and batching are unchanged since the checkpoint.
    pub fn fingerprint(&self, steps: usize) -> String {
        // FNV-1a over (step, micro-batch, example index) triples: stable across platforms and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for s in &self.steps[..steps.min(self.steps.len())] {
            for m in s.micro.clone() {
                eat(u64::MAX);
                for &i in &self.epochs[s.epoch][m] {
                    eat(i as u64);
                }
            }
        }
        format!("{h:016x}")
    }

    /// Packs the micro-batches of step `step`.
    pub fn batches(&self, step: usize, data: &Dataset) -> Vec<MicroBatch> {
        self.step_units(step)
            .iter()
            .map(|idx| pack_units(idx, &data.train, data.unit_len()))
            .collect()
    }

    /// The units (examples, or pairs) of each micro-batch of step `step`: indices into the
    /// training set's units, in packing order.
    pub fn step_units(&self, step: usize) -> &[Vec<usize>] {
        let s = &self.steps[step];
        &self.epochs[s.epoch][s.micro.clone()]
    }

    /// Validation micro-batches, grouped like training ones, in order, with their units.
    pub fn validation_batches(&self, data: &Dataset) -> Vec<(Vec<usize>, MicroBatch)> {
        units_in_order(data, &data.validation, self.batch_size)
    }
}

/// `examples` (a dataset's training or validation sequences) grouped into micro-batches of
/// `batch` in file order, each with its unit indices: how validation and DPO's reference pass
/// run over a set.
pub fn units_in_order(
    data: &Dataset,
    examples: &[TokenizedExample],
    batch: BatchSize,
) -> Vec<(Vec<usize>, MicroBatch)> {
    let lens = unit_lens(data, examples);
    let order: Vec<usize> = (0..lens.len()).collect();
    group(&order, &lens, batch)
        .into_iter()
        .map(|idx| {
            let b = pack_units(&idx, examples, data.unit_len());
            (idx, b)
        })
        .collect()
}

/// Tokens of each unit (an example, or a pair's two sequences).
fn unit_lens(data: &Dataset, examples: &[TokenizedExample]) -> Vec<usize> {
    examples
        .chunks(data.unit_len())
        .map(|u| u.iter().map(TokenizedExample::len).sum())
        .collect()
}

/// Packs the sequences of units `idx` (`per` consecutive sequences each) into one micro-batch.
fn pack_units(idx: &[usize], examples: &[TokenizedExample], per: usize) -> MicroBatch {
    let refs: Vec<&TokenizedExample> = idx
        .iter()
        .flat_map(|&i| &examples[i * per..(i + 1) * per])
        .collect();
    pack_group(&refs)
}

/// Consecutive examples of `order` per micro-batch: `n` examples, or whole examples while they fit in the token budget.
fn group(order: &[usize], lens: &[usize], batch: BatchSize) -> Vec<Vec<usize>> {
    match batch {
        BatchSize::Examples(n) => order.chunks(n.max(1)).map(<[usize]>::to_vec).collect(),
        BatchSize::Tokens(budget) => {
            let mut out: Vec<Vec<usize>> = Vec::new();
            let mut cur = Vec::new();
            let mut used = 0;
            for &i in order {
                if !cur.is_empty() && used + lens[i] > budget {
                    out.push(std::mem::take(&mut cur));
                    used = 0;
                }
                cur.push(i);
                used += lens[i];
            }
            if !cur.is_empty() {
                out.push(cur);
            }
            out
        }
    }
}

/// A packed micro-batch with its count of trained tokens.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub packed: PackedBatch,
    pub trained_tokens: usize,
}

impl MicroBatch {
    pub fn as_train_batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            input_ids: &self.packed.input_ids,
            targets: &self.packed.targets,
            position_ids: &self.packed.position_ids,
            seq_lens: &self.packed.seq_lens,
        }
    }

    pub fn tokens(&self) -> usize {
        self.packed.input_ids.len()
    }
}

/// Packs examples into one sequence (block-diagonal attention, positions restarting per example).
pub fn pack_group(examples: &[&TokenizedExample]) -> MicroBatch {
    let total: usize = examples.iter().map(|e| e.input_ids.len()).sum();
    let mut batches = pack::pack_examples(examples, total);
    // The budget holds all of them, so packing yields one batch; merge defensively if not.
    let mut packed = batches.remove(0);
    for b in batches {
        packed.input_ids.extend(b.input_ids);
        packed.targets.extend(b.targets);
        packed.position_ids.extend(b.position_ids);
        packed.seq_lens.extend(b.seq_lens);
    }
    let trained_tokens = packed.trained_tokens();
    MicroBatch {
        packed,
        trained_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(len: usize) -> TokenizedExample {
        let input_ids: Vec<u32> = (0..len as u32).collect();
        let labels = (0..len)
            .map(|i| if i < len / 2 { -100 } else { i as i32 })
            .collect();
        TokenizedExample { input_ids, labels }
    }

    fn dataset(lens: &[usize]) -> Dataset {
        Dataset::from_examples(
            lens.iter().map(|&l| ex(l)).collect(),
            Vec::new(),
            Vec::new(),
            DataStats::default(),
        )
    }

    fn cfg(batch: BatchSize, accum: usize, epochs: usize, max_steps: Option<usize>) -> TrainConfig {
        TrainConfig {
            batch_size: batch,
            gradient_accumulation_steps: accum,
            epochs,
            max_steps,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn steps_stay_inside_epochs_and_visit_every_example_once_per_epoch() {
        let data = dataset(&[4, 5, 6, 7, 8, 9, 10]);
        // 7 examples, 2 per micro-batch → 4 micro-batches; 3 per step → steps of 3 and 1.
        let plan = Plan::new(&data, &cfg(BatchSize::Examples(2), 3, 2, None));
        assert_eq!(plan.total_steps(), 4);
        assert_eq!(
            plan.step(1),
            &PlannedStep {
                epoch: 0,
                micro: 3..4
            }
        );
        assert!(!plan.ends_epoch(0) && plan.ends_epoch(1) && plan.ends_epoch(3));
        assert_eq!(plan.epoch_after(0), 0.0);
        assert_eq!(plan.epoch_after(1), 0.75);
        assert_eq!(plan.epoch_after(4), 2.0);
        for e in 0..2 {
            let mut seen: Vec<usize> = plan.epochs[e].iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..7).collect::<Vec<_>>());
        }
        // Epochs are shuffled differently; the same seed gives the same plan.
        assert_ne!(plan.epochs[0], plan.epochs[1]);
        let again = Plan::new(&data, &cfg(BatchSize::Examples(2), 3, 2, None));
        assert_eq!(plan.fingerprint(4), again.fingerprint(4));
        assert_ne!(plan.fingerprint(4), plan.fingerprint(3));
        // The packed step holds its examples, with targets normalised over the whole step.
        let batches = plan.batches(0, &data);
        assert_eq!(batches.len(), 3);
        let trained: usize = batches.iter().map(|b| b.trained_tokens).sum();
        let want: usize = plan.epochs[0][..3]
            .iter()
            .flatten()
            .map(|&i| data.train[i].trained_tokens())
            .sum();
        assert_eq!(trained, want);
    }

    #[test]
    fn max_steps_runs_across_epochs_and_token_batches_respect_the_budget() {
        let data = dataset(&[4, 5, 6, 7, 8, 9, 10]);
        let plan = Plan::new(&data, &cfg(BatchSize::Examples(1), 1, 1, Some(10)));
        assert_eq!(plan.total_steps(), 10);
        assert_eq!(plan.step(9).epoch, 1);
        let plan = Plan::new(&data, &cfg(BatchSize::Tokens(16), 1, 1, None));
        for (m, idx) in plan.epochs[0].iter().enumerate() {
            let tokens: usize = idx.iter().map(|&i| data.train[i].len()).sum();
            assert!(tokens <= 16, "micro-batch {m} has {tokens} tokens");
            assert_eq!(plan.batches(m, &data)[0].tokens(), tokens);
        }
        assert_eq!(plan.epochs[0].iter().map(Vec::len).sum::<usize>(), 7);
    }

    #[test]
    fn pairs_are_planned_and_packed_together_preferred_first() {
        // Pair i: sequences of 4 + i (preferred) and 10 + i tokens.
        let pairs: Vec<TokenizedPair> = (0..5)
            .map(|i| TokenizedPair {
                chosen: ex(4 + i),
                rejected: ex(10 + i),
            })
            .collect();
        let data = Dataset::from_pairs(pairs, Vec::new(), Vec::new(), DataStats::default());
        assert_eq!((data.stats.train_examples, data.train_units()), (5, 5));
        // Two pairs per micro-batch, two micro-batches per step: 3 micro-batches, 2 steps.
        let plan = Plan::new(&data, &cfg(BatchSize::Examples(2), 2, 1, None));
        assert_eq!(plan.total_steps(), 2);
        let mut seen = Vec::new();
        for step in 0..2 {
            for (idx, mb) in plan.step_units(step).iter().zip(plan.batches(step, &data)) {
                let lens: Vec<usize> = idx.iter().flat_map(|&i| [4 + i, 10 + i]).collect();
                assert_eq!(mb.packed.seq_lens, lens, "pairs {idx:?}");
                seen.extend(idx.iter().copied());
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        // A token budget counts both sequences of a pair and never splits one.
        let plan = Plan::new(&data, &cfg(BatchSize::Tokens(30), 1, 1, None));
        for step in 0..plan.total_steps() {
            let b = &plan.batches(step, &data)[0];
            assert!(b.tokens() <= 30 && b.packed.seq_lens.len().is_multiple_of(2));
        }
    }

    #[test]
    fn length_policy_counts_what_it_does() {
        let mut stats = DataStats::default();
        let kept = apply_length_policy(ex(10), 6, LengthPolicy::Truncate, &mut stats).unwrap();
        assert_eq!(kept.len(), 6);
        assert!(apply_length_policy(ex(10), 6, LengthPolicy::Drop, &mut stats).is_none());
        // Truncation that cuts every label drops the example.
        let prompt_only = TokenizedExample {
            input_ids: vec![1; 8],
            labels: [vec![-100; 6], vec![1; 2]].concat(),
        };
        assert!(apply_length_policy(prompt_only, 6, LengthPolicy::Truncate, &mut stats).is_none());
        assert_eq!(
            (
                stats.truncated,
                stats.dropped_too_long,
                stats.dropped_no_labels
            ),
            (2, 1, 1)
        );

        // A pair goes by its longer sequence, and as a whole.
        let mut stats = DataStats::default();
        let pair = |c, r| TokenizedPair {
            chosen: ex(c),
            rejected: ex(r),
        };
        assert!(apply_pair_length_policy(pair(4, 10), 6, LengthPolicy::Drop, &mut stats).is_none());
        let kept = apply_pair_length_policy(pair(4, 10), 6, LengthPolicy::Truncate, &mut stats)
            .expect("kept");
        assert_eq!((kept.chosen.len(), kept.rejected.len()), (4, 6));
        // Truncation that leaves the non-preferred answer without labels drops the pair.
        let cut = TokenizedPair {
            chosen: ex(4),
            rejected: TokenizedExample {
                input_ids: vec![1; 8],
                labels: [vec![-100; 7], vec![1]].concat(),
            },
        };
        assert!(apply_pair_length_policy(cut, 6, LengthPolicy::Truncate, &mut stats).is_none());
        assert_eq!(
            (
                stats.truncated,
                stats.dropped_too_long,
                stats.dropped_no_labels
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn sample_prompt_is_the_conversation_before_its_last_answer() {
        let c = Conversation {
            messages: vec![
                Message::new(Role::System, "s"),
                Message::new(Role::User, "q1"),
                Message::new(Role::Assistant, "a1"),
                Message::new(Role::User, "q2"),
                Message::new(Role::Assistant, "a2"),
            ],
        };
        let p = SamplePrompt::from_conversation(&c, true).unwrap();
        assert_eq!((p.messages.len(), p.reference.as_str()), (4, "a2"));
    }
}
