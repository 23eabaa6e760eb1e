//! Tokenization of chats: a Hugging Face `tokenizer.json` plus the chat template and special
//! tokens of `tokenizer_config.json`, giving prompt ids for generation and ids + labels for
//! training.
//!
//! Encoding never adds special tokens of its own (as `apply_chat_template(tokenize=True)` does,
//! `add_special_tokens=False`); special tokens written in the text, like `<|im_start|>`, are
//! recognised. Ids match the Python `tokenizers` / transformers encodings exactly (tests compare
//! them on golden fixtures and llama.cpp's Qwen vectors).

use std::path::Path;

use rayon::prelude::*;
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer,
};

use crate::conversation::{Conversation, Message, PreferenceExample};
use crate::error::{Error, Result};
use crate::mask::{self, IGNORE_INDEX, RenderedChat};
use crate::template::ChatTemplate;

/// The end-of-text token of Qwen vocabularies: the pad token, and a stop token of the chat
/// models next to `<|im_end|>` (their `generation_config.json` lists both).
const ENDOFTEXT: &str = "<|endoftext|>";

/// A training example: the ids of a rendered conversation and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    /// One per input id, unshifted (HF convention: `labels[t]` is the label of token t, the loss
    /// at position t-1 predicts it); [`IGNORE_INDEX`] where nothing is trained.
    pub labels: Vec<i32>,
}

impl TokenizedExample {
    /// Tokens the loss is computed on: labelled positions after the first (position 0 has no
    /// preceding position to predict it).
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// A tokenized preference pair: the prompt followed by the preferred answer, and by the
/// non-preferred one. Each is rendered and labelled exactly as a chat example whose only trained
/// message is that answer ([`ChatTokenizer::encode_example`]), so both start with the same prompt
/// tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: TokenizedExample,
    pub rejected: TokenizedExample,
}

impl TokenizedPair {
    /// Tokens of both sequences.
    pub fn len(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty() && self.rejected.is_empty()
    }

    /// Trained tokens of both sequences.
    pub fn trained_tokens(&self) -> usize {
        self.chosen.trained_tokens() + self.rejected.trained_tokens()
    }
}

/// A tokenizer with its chat template and special ids.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// `eos_token` of the config (`<|im_end|>` for Qwen chat models): ends an assistant turn.
    eos_token: String,
    eos_id: u32,
    pad_id: Option<u32>,
    /// Other ids that end generation (`<|endoftext|>`), without `eos_id`.
    extra_stop_ids: Vec<u32>,
}

/// Incremental detokenizer for streaming: yields text only when the ids so far decode to
/// complete UTF-8 (a Chinese character or emoji can span several byte-level tokens).
pub struct DecodeStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl DecodeStream<'_> {
    /// Feeds one generated id; returns the new text, or `None` while a character is incomplete.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        Ok(self.inner.step(id)?)
    }
}

impl ChatTokenizer {
    /// Reads `tokenizer.json` and `tokenizer_config.json` from a Hugging Face model directory.
    /// A `chat_template.jinja` file there (how recent transformers versions save the template)
    /// takes precedence over the config's `chat_template`, as in transformers.
    pub fn from_model_dir(dir: &Path) -> Result<ChatTokenizer> {
        let read = |file: &'static str| -> Result<Vec<u8>> {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    Error::MissingModelFile {
                        dir: dir.to_path_buf(),
                        file,
                    }
                } else {
                    Error::Io { path, source }
                }
            })
        };
        let tokenizer_json = read("tokenizer.json")?;
        let config_bytes = read("tokenizer_config.json")?;
        let mut config = parse_config(&config_bytes)?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                path: jinja,
                source,
            })?;
            if let Some(obj) = config.as_object_mut() {
                obj.insert("chat_template".into(), serde_json::Value::String(source));
            }
        }
        Self::from_parts(&tokenizer_json, &config)
    }

    /// From the bytes of `tokenizer.json` and `tokenizer_config.json`.
    pub fn from_bytes(
        tokenizer_json: &[u8],
        tokenizer_config_json: &[u8],
    ) -> Result<ChatTokenizer> {
        Self::from_parts(tokenizer_json, &parse_config(tokenizer_config_json)?)
    }

    fn from_parts(tokenizer_json: &[u8], config: &serde_json::Value) -> Result<ChatTokenizer> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let template = ChatTemplate::from_tokenizer_config(config)?;
        let token_text = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                obj => obj
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned),
            }
        };
        let eos_token = token_text("eos_token").ok_or_else(|| {
            Error::TokenizerConfig("no `eos_token` (needed to end assistant turns)".into())
        })?;
        let eos_id = tokenizer.token_to_id(&eos_token).ok_or_else(|| {
            Error::TokenizerConfig(format!(
                "`eos_token` {eos_token:?} is not in the tokenizer's vocabulary"
            ))
        })?;
        let pad_id = token_text("pad_token").and_then(|t| tokenizer.token_to_id(&t));
        let extra_stop_ids = tokenizer
            .token_to_id(ENDOFTEXT)
            .filter(|&id| id != eos_id)
            .into_iter()
            .collect();
        Ok(ChatTokenizer {
            tokenizer,
            template,
            eos_token,
            eos_id,
            pad_id,
            extra_stop_ids,
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised, none is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // encode_fast: no offsets needed here.
        Ok(self.tokenizer.encode_fast(text, false)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        Ok(self.tokenizer.decode(ids, skip_special_tokens)?)
    }

    /// Prompt ids for generation: the template with `add_generation_prompt=true`.
    pub fn encode_prompt(
        &self,
        messages: &[Message],
        enable_thinking: Option<bool>,
    ) -> Result<Vec<u32>> {
        self.encode(&self.template.render(messages, true, enable_thinking)?)
    }

    /// The conversation rendered for training, with message segments and trained spans
    /// (see [`crate::mask`]).
    pub fn render_for_training(&self, conv: &Conversation) -> Result<RenderedChat> {
        mask::render_for_training(&self.template, conv, &self.eos_token)
    }

    /// Training example: ids of the full rendered conversation and labels: [`IGNORE_INDEX`]
    /// except on the tokens of trained assistant turns after their generation prompt, up to and
    /// including their end-of-turn token `<|im_end|>` (not the newline after it). Assistant
    /// messages with `trained == false` get no labels.
    pub fn encode_example(&self, conv: &Conversation) -> Result<TokenizedExample> {
        let rendered = self.render_for_training(conv)?;
        let enc = self.tokenizer.encode(rendered.text.as_str(), false)?;
        let labels =
            mask::labels_for_spans(enc.get_ids(), enc.get_offsets(), &rendered.trained_spans);
        Ok(TokenizedExample {
            input_ids: enc.get_ids().to_vec(),
            labels,
        })
    }

    /// [`encode_example`](Self::encode_example) over many conversations in parallel (rayon),
    /// results in input order.
    pub fn encode_examples(&self, convs: &[Conversation]) -> Vec<Result<TokenizedExample>> {
        convs.par_iter().map(|c| self.encode_example(c)).collect()
    }

    /// A preference pair as two training examples (see [`TokenizedPair`]).
    pub fn encode_preference(&self, pair: &PreferenceExample) -> Result<TokenizedPair> {
        Ok(TokenizedPair {
            chosen: self.encode_example(&pair.chosen())?,
            rejected: self.encode_example(&pair.rejected())?,
        })
    }

    /// [`encode_preference`](Self::encode_preference) over many pairs in parallel, in input order.
    pub fn encode_preferences(&self, pairs: &[PreferenceExample]) -> Vec<Result<TokenizedPair>> {
        pairs
            .par_iter()
            .map(|p| self.encode_preference(p))
            .collect()
    }

    /// Incremental detokenizer for streaming generated ids; special tokens are skipped.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            inner: self.tokenizer.decode_stream(true),
        }
    }

    /// Ids that end generation: the eos token (`<|im_end|>`), then `<|endoftext|>` when the
    /// vocabulary has it (Qwen chat models stop on both).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        std::iter::once(self.eos_id)
            .chain(self.extra_stop_ids.iter().copied())
            .collect()
    }

    /// The end-of-turn token id (`eos_token` of the config).
    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }

    /// The pad token id (`pad_token` of the config), when it has one in the vocabulary.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Tokens including added ones (151,669 for Qwen3). Model embeddings are often padded beyond.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

fn parse_config(bytes: &[u8]) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::TokenizerConfig(format!("tokenizer_config.json is not valid JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(Error::TokenizerConfig(
            "tokenizer_config.json must hold a JSON object".into(),
        ));
    }
    Ok(v)
}
