//! The training data of a run: conversations → tokenized examples (length policy applied) →
//! train / validation split → a fixed plan of which examples form each micro-batch of each step.
//!
//! The plan is a pure function of the examples, the seed and the batching settings: epoch `e`
//! visits the examples in `shuffle_indices(n, seed, e)` order. So resuming needs only the step
//! number, and a resumed run sees exactly the batches the uninterrupted run would have.
//! A step never spans two epochs; the last step of an epoch may have fewer micro-batches.

use std::ops::Range;
use std::path::Path;

use tuna_data::pack::{self, LengthPolicy, PackedBatch};
use tuna_data::tokenize::{ChatTokenizer, TokenizedExample};
use tuna_data::{Conversation, Message, Role};
use tuna_model::train::TrainBatch;

use crate::config::{BatchSize, TrainConfig, default_validation_count};
use crate::error::{Error, Result};

/// A conversation whose last assistant answer is generated at each checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePrompt {
    /// The messages before the last assistant message.
    pub messages: Vec<Message>,
    /// The last assistant message of the dataset.
    pub reference: String,
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
            held_out,
        })
    }
}

/// Counts that explain what happened to the input data.
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
    pub train: Vec<TokenizedExample>,
    pub validation: Vec<TokenizedExample>,
    pub samples: Vec<SamplePrompt>,
    pub stats: DataStats,
}

impl Dataset {
    /// Reads and tokenizes the run's data files and splits off the validation set.
    pub fn load(cfg: &TrainConfig, tokenizer: &ChatTokenizer) -> Result<Self> {
        let train_conv = read(&cfg.train_file)?;
        let mut stats = DataStats::default();
        let (train_conv, val_conv) = match &cfg.validation_file {
            Some(path) => (train_conv, read(path)?),
            None => {
                let n = train_conv.len();
                let fraction = cfg
                    .validation_fraction
                    .unwrap_or(default_validation_count(n) as f32 / n as f32);
                let (train_idx, val_idx) = pack::split_validation(n, fraction, cfg.seed);
                let pick = |idx: &[usize]| {
                    idx.iter()
                        .map(|&i| train_conv[i].clone())
                        .collect::<Vec<_>>()
                };
                (pick(&train_idx), pick(&val_idx))
            }
        };
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

    /// A dataset from examples tokenized elsewhere (tests, benchmarks); fills in the counts.
    pub fn from_examples(
        train: Vec<TokenizedExample>,
        validation: Vec<TokenizedExample>,
        samples: Vec<SamplePrompt>,
        mut stats: DataStats,
    ) -> Self {
        stats.train_examples = train.len();
        stats.validation_examples = validation.len();
        stats.train_tokens = train.iter().map(|e| e.input_ids.len()).sum();
        stats.train_trained_tokens = train.iter().map(TokenizedExample::trained_tokens).sum();
        Dataset {
            train,
            validation,
            samples,
            stats,
        }
    }
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
        let lens: Vec<usize> = data.train.iter().map(|e| e.input_ids.len()).collect();
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
        let s = &self.steps[step];
        self.epochs[s.epoch][s.micro.clone()]
            .iter()
            .map(|idx| self.pack(idx, &data.train))
            .collect()
    }

    fn pack(&self, idx: &[usize], examples: &[TokenizedExample]) -> MicroBatch {
        let refs: Vec<&TokenizedExample> = idx.iter().map(|&i| &examples[i]).collect();
        pack_group(&refs)
    }

    /// Validation micro-batches, grouped like training ones, in order.
    pub fn validation_batches(&self, data: &Dataset) -> Vec<MicroBatch> {
        let lens: Vec<usize> = data.validation.iter().map(|e| e.input_ids.len()).collect();
        let order: Vec<usize> = (0..lens.len()).collect();
        group(&order, &lens, self.batch_size)
            .iter()
            .map(|idx| self.pack(idx, &data.validation))
            .collect()
    }
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
