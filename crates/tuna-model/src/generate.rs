//! Token generation: logits processing (repetition penalty, temperature, top-k, top-p), seeded
//! sampling, greedy decoding, eos handling and streaming through a callback.
//!
//! The processing order is transformers' (`generate`): repetition penalty, then temperature,
//! top-k, top-p.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::config::{GenerationConfig, QwenConfig};
use crate::error::{Error, Result};
use crate::lora::LoraAdapter;
use crate::qwen::{KvCache, QwenModel};

/// Validated sampling parameters. `temperature == 0` (or `greedy`) means argmax.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub greedy: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.8,
            top_k: 20,
            repetition_penalty: 1.0,
            seed: 0,
            max_new_tokens: 512,
            greedy: false,
        }
    }
}

impl SamplingParams {
    /// The model's defaults from `generation_config.json` (`do_sample=false` means greedy).
    pub fn from_generation_config(g: &GenerationConfig) -> Self {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: g.temperature.unwrap_or(d.temperature),
            top_p: g.top_p.unwrap_or(d.top_p),
            top_k: g.top_k.unwrap_or(d.top_k),
            repetition_penalty: g.repetition_penalty.unwrap_or(d.repetition_penalty),
            greedy: g.do_sample == Some(false),
            ..d
        }
    }

    /// Rejects values that have no meaning, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSampling(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "`temperature` must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("`top_p` must be > 0 and <= 1, got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "`repetition_penalty` must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.max_new_tokens == 0 {
            return bad("`max_new_tokens` must be at least 1".into());
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        self.greedy || self.temperature == 0.0
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is not part of the output).
    Stop,
    /// `max_new_tokens` (or the context window) was reached.
    Length,
    /// The caller's callback asked to stop (e.g. a stop string, a closed stream).
    Cancelled,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Applies the logits processors in transformers' order and picks the next token.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    probs: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler {
            params,
            rng,
            probs: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (modified in place); `history` is prompt + generated tokens.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits, history, p.repetition_penalty);
        }
        if p.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        // Candidates sorted by logit, descending; top-k then cuts the tail.
        self.probs.clear();
        self.probs.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        let k = if p.top_k == 0 {
            self.probs.len()
        } else {
            p.top_k.min(self.probs.len())
        };
        if k < self.probs.len() {
            self.probs
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            self.probs.truncate(k);
        }
        self.probs
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = self.probs[0].1;
        let mut sum = 0.0f64;
        for e in &mut self.probs {
            e.1 = (e.1 - max).exp();
            sum += e.1 as f64;
        }
        // top-p keeps the smallest prefix whose mass reaches top_p (at least one token), as HF's TopPLogitsWarper.
        let mut kept = 0;
        let mut mass = 0.0f64;
        for e in &self.probs {
            kept += 1;
            mass += e.1 as f64 / sum;
            if mass >= p.top_p as f64 {
                break;
            }
        }
        self.probs.truncate(kept);
        let total: f64 = self.probs.iter().map(|e| e.1 as f64).sum();
        let mut r = self.rng.random::<f64>() * total;
        for e in &self.probs {
            r -= e.1 as f64;
            if r <= 0.0 {
                return e.0;
            }
        }
        self.probs.last().map(|e| e.0).unwrap_or(0)
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: divide positive logits, multiply negative ones.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &t in history {
        if let Some(s) = seen.get_mut(t as usize)
            && !*s
        {
            *s = true;
            let l = &mut logits[t as usize];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// Index of the largest logit; ties go to the lowest index, like `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// What generation runs on: a model that appends tokens to its own key/value cache and returns
/// the logits of the last one. The CPU engine ([`CpuDecoder`]) or a GPU (`tuna_gpu::GpuDecoder`);
/// the sampling stays on the host, in [`generate_on`], so every device picks the same tokens from
/// the same logits.
pub trait Decoder {
    fn config(&self) -> &QwenConfig;
    /// Starts a new sequence with room for `capacity` tokens (forgetting the previous one).
    fn start(&mut self, capacity: usize) -> Result<()>;
    /// Appends `tokens` to the sequence and returns the logits (vocab) of the last one.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
}

/// The CPU engine as a [`Decoder`]: `model` (and `adapter`, applied on the fly) with a
/// [`KvCache`] in host memory.
pub struct CpuDecoder<'a> {
    model: &'a QwenModel,
    adapter: Option<&'a LoraAdapter>,
    cache: KvCache,
}

impl<'a> CpuDecoder<'a> {
    pub fn new(model: &'a QwenModel, adapter: Option<&'a LoraAdapter>) -> Self {
        CpuDecoder {
            model,
            adapter,
            cache: KvCache::new(&model.config, 1),
        }
    }
}

impl Decoder for CpuDecoder<'_> {
    fn config(&self) -> &QwenConfig {
        &self.model.config
    }

    fn start(&mut self, capacity: usize) -> Result<()> {
        self.cache = KvCache::new(&self.model.config, capacity);
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.forward(tokens, &mut self.cache, self.adapter)
    }
}

/// Generates after `prompt` on the CPU engine; see [`generate_on`].
pub fn generate(
    model: &QwenModel,
    adapter: Option<&LoraAdapter>,
    prompt: &[u32],
    params: &SamplingParams,
    eos_token_ids: &[u32],
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    generate_on(
        &mut CpuDecoder::new(model, adapter),
        prompt,
        params,
        eos_token_ids,
        on_token,
    )
}

/// Generates after `prompt` on `decoder` (prefill of the whole prompt, then one token per step),
/// calling `on_token` with each new token as soon as it exists (eos tokens are not passed on).
/// The callback may stop generation early.
pub fn generate_on(
    decoder: &mut dyn Decoder,
    prompt: &[u32],
    params: &SamplingParams,
    eos_token_ids: &[u32],
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(Error::InvalidSampling("the prompt is empty".into()));
    }
    let max_ctx = decoder.config().max_position_embeddings;
    if prompt.len() >= max_ctx {
        return Err(Error::ContextOverflow {
            len: prompt.len(),
            max: max_ctx,
        });
    }
    let budget = params.max_new_tokens.min(max_ctx - prompt.len());
    decoder.start(prompt.len() + budget)?;
    let mut sampler = Sampler::new(params.clone());
    let mut history = prompt.to_vec();
    let mut logits = decoder.step(prompt)?;
    let mut tokens = Vec::new();
    let mut finish_reason = FinishReason::Length;
    while tokens.len() < budget {
        let next = sampler.sample(&mut logits, &history);
        if eos_token_ids.contains(&next) {
            finish_reason = FinishReason::Stop;
            break;
        }
        tokens.push(next);
        history.push(next);
        if on_token(next).is_break() {
            finish_reason = FinishReason::Cancelled;
            break;
        }
        if tokens.len() == budget {
            break;
        }
        logits = decoder.step(&[next])?;
    }
    Ok(Generation {
        tokens,
        finish_reason,
        prompt_tokens: prompt.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            repetition_penalty: 1.0,
            seed: 7,
            max_new_tokens: 4,
            greedy: false,
        }
    }

    #[test]
    fn greedy_and_zero_temperature_take_the_argmax() {
        let mut s = Sampler::new(params(0.0, 1.0, 0));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, 3.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_cuts_the_tail() {
        let mut s = Sampler::new(params(1.0, 1.0, 1));
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 5.0, 2.0], &[]), 2);
        }
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first.
        let mut s = Sampler::new(params(1.0, 0.5, 0));
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [3.0, 2.0, 1.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = Sampler::new(params(1.0, 1.0, 0));
        let n = 4000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0, 1.0, 0)
            });
            (0..32)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn repetition_penalty_matches_transformers() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let e = params(1.0, 0.0, 0).validate().unwrap_err().to_string();
        assert!(e.contains("top_p"), "{e}");
        let e = params(-1.0, 1.0, 0).validate().unwrap_err().to_string();
        assert!(e.contains("temperature"), "{e}");
    }
}
