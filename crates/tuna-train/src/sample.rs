//! Per-checkpoint samples: held-out prompts answered greedily with the checkpoint's weights, so a
//! user sees the effect of training next to the loss (OpenAI's fine-tuning UI shows the same).

use std::ops::ControlFlow;

use tuna_data::tokenize::ChatTokenizer;
use tuna_model::{Decoder, SamplingParams, generate_on};

use crate::data::SamplePrompt;
use crate::error::Result;
use crate::metrics::Sample;

/// Greedy answers (at most `max_new_tokens` each) to every prompt, on `decoder` (the device the
/// run trains on, with its current weights).
pub fn generate_samples(
    decoder: &mut dyn Decoder,
    tokenizer: &ChatTokenizer,
    eos_token_ids: &[u32],
    prompts: &[SamplePrompt],
    max_new_tokens: usize,
) -> Result<Vec<Sample>> {
    let params = SamplingParams {
        greedy: true,
        temperature: 0.0,
        max_new_tokens,
        ..SamplingParams::default()
    };
    let mut out = Vec::with_capacity(prompts.len());
    for p in prompts {
        // Qwen3 templates: `enable_thinking=false` opens the answer with the empty think block that
        // training renders put before every final answer; other templates ignore the flag.
        let prompt = tokenizer.encode_prompt(&p.messages, Some(false))?;
        let generation = generate_on(decoder, &prompt, &params, eos_token_ids, |_| {
            ControlFlow::Continue(())
        })?;
        let generated = tokenizer.decode(&generation.tokens, true)?;
        out.push(Sample {
            messages: p.messages.clone(),
            reference: p.reference.clone(),
            non_preferred: p.non_preferred.clone(),
            generated,
            held_out: p.held_out,
        });
    }
    Ok(out)
}
