//! Chat requests: `ChatRequest` → [`ValidChatRequest`], every message naming the field and limit.

use tuna_data::{Message, Role};
use tuna_model::{GenerationConfig, SamplingParams};

use super::{bad, int_in};
use crate::error::ApiError;
use crate::openai::types::{ChatRequest, Content, Stop};

/// A chat request that passed validation. `None` sampling fields take the model's defaults.
#[derive(Debug, Clone)]
pub struct ValidChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub enable_thinking: Option<bool>,
}

/// Longest answer a request may ask for.
pub const MAX_COMPLETION_TOKENS: i64 = 32_768;
/// Answer length when the request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 512;

pub fn validate_chat(req: ChatRequest) -> Result<ValidChatRequest, ApiError> {
    if req.model.trim().is_empty() {
        return Err(bad("`model` must not be empty".into(), "model"));
    }
    if req.messages.is_empty() {
        return Err(bad(
            "`messages` must hold at least one message".into(),
            "messages",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(
                    format!(
                        "`messages[{i}].role` must be system, developer, user or assistant, got `{other}`"
                    ),
                    &format!("messages[{i}].role"),
                ));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.r#type.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(bad(
                                format!(
                                    "`messages[{i}].content[{j}]` must be a text part (`type` `text` with `text`); got type `{}`",
                                    p.r#type
                                ),
                                &format!("messages[{i}].content[{j}]"),
                            ));
                        }
                    }
                }
                text
            }
        };
        if role == Role::System
            && i > 0
            && messages.iter().any(|x: &Message| x.role != Role::System)
        {
            return Err(bad(
                format!("`messages[{i}]`: a system message must come first"),
                &format!("messages[{i}].role"),
            ));
        }
        messages.push(Message::new(role, content));
    }
    if let Some(n) = req.n
        && n != 1
    {
        return Err(bad(format!("`n` must be 1, got {n}"), "n"));
    }
    let temperature = match req.temperature {
        Some(t) if !(0.0..=2.0).contains(&t) => {
            return Err(bad(
                format!("`temperature` must be between 0 and 2, got {t}"),
                "temperature",
            ));
        }
        t => t.map(|t| t as f32),
    };
    let top_p = match req.top_p {
        Some(p) if !(p > 0.0 && p <= 1.0) => {
            return Err(bad(
                format!("`top_p` must be > 0 and <= 1, got {p}"),
                "top_p",
            ));
        }
        p => p.map(|p| p as f32),
    };
    let top_k = match req.top_k {
        Some(k) if !(0..=1_000_000).contains(&k) => {
            return Err(bad(format!("`top_k` must be >= 0, got {k}"), "top_k"));
        }
        k => k.map(|k| k as usize),
    };
    let repetition_penalty = match req.repetition_penalty {
        Some(r) if !(r.is_finite() && r > 0.0) => {
            return Err(bad(
                format!("`repetition_penalty` must be > 0, got {r}"),
                "repetition_penalty",
            ));
        }
        r => r.map(|r| r as f32),
    };
    let (max_field, max) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = int_in(max, 1, MAX_COMPLETION_TOKENS, max_field)?.map(|m| m as usize);
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(bad(
            format!("`stop` may hold at most 4 sequences, got {}", stop.len()),
            "stop",
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(bad("`stop` sequences must not be empty".into(), "stop"));
    }
    let stream = req.stream.unwrap_or(false);
    Ok(ValidChatRequest {
        model: req.model,
        messages,
        temperature,
        top_p,
        top_k,
        repetition_penalty,
        max_tokens,
        // Negative seeds are fine in OpenAI's API; any 64 bits seed the sampler.
        seed: req.seed.map(|s| s as u64),
        stop,
        stream,
        include_usage: stream && req.stream_options.is_some_and(|o| o.include_usage),
        // Answer without a thinking block unless asked: what the per-checkpoint samples do too.
        enable_thinking: Some(
            req.chat_template_kwargs
                .and_then(|k| k.enable_thinking)
                .unwrap_or(false),
        ),
    })
}

impl ValidChatRequest {
    /// The model's defaults (`generation_config.json`) with the request's fields on top.
    pub fn sampling(&self, generation: &GenerationConfig, random_seed: u64) -> SamplingParams {
        let mut p = SamplingParams::from_generation_config(generation);
        if let Some(t) = self.temperature {
            p.temperature = t;
            // An explicit temperature asks for sampling even if the model defaults to greedy.
            p.greedy = t == 0.0;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.top_k {
            p.top_k = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        p.max_new_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        p.seed = self.seed.unwrap_or(random_seed);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::types::ChatRequest;

    fn chat(v: serde_json::Value) -> Result<ValidChatRequest, ApiError> {
        validate_chat(serde_json::from_value::<ChatRequest>(v).unwrap())
    }

    fn param(e: ApiError) -> String {
        e.body().error.param.unwrap_or_default()
    }

    #[test]
    fn chat_limits_name_the_field() {
        let base =
            serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(
            param(chat(with("temperature", 2.5.into())).unwrap_err()),
            "temperature"
        );
        assert_eq!(param(chat(with("top_p", 0.0.into())).unwrap_err()), "top_p");
        assert_eq!(
            param(chat(with("max_tokens", 0.into())).unwrap_err()),
            "max_tokens"
        );
        assert_eq!(
            param(chat(with("max_completion_tokens", (-1).into())).unwrap_err()),
            "max_completion_tokens"
        );
        assert_eq!(param(chat(with("n", 2.into())).unwrap_err()), "n");
        assert_eq!(
            param(chat(with("stop", serde_json::json!(["a", "b", "c", "d", "e"]))).unwrap_err()),
            "stop"
        );
        assert_eq!(
            param(chat(with("messages", serde_json::json!([]))).unwrap_err()),
            "messages"
        );
        let e = chat(with(
            "messages",
            serde_json::json!([{"role": "tool", "content": "x"}]),
        ))
        .unwrap_err();
        assert_eq!(param(e), "messages[0].role");
    }

    #[test]
    fn chat_request_overrides_the_model_defaults() {
        let gc = GenerationConfig {
            temperature: Some(0.7),
            top_p: Some(0.8),
            top_k: Some(20),
            ..Default::default()
        };
        let v = chat(serde_json::json!({
            "model": "demo",
            "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0, "max_tokens": 5, "max_completion_tokens": 7, "seed": 3, "stop": "x"
        }))
        .unwrap();
        assert_eq!(v.messages[0].role, Role::System);
        assert_eq!(v.messages[1].content, "hi");
        assert_eq!(v.stop, ["x"]);
        let p = v.sampling(&gc, 99);
        assert!(p.greedy);
        assert_eq!(
            (p.max_new_tokens, p.seed, p.top_k),
            (7, 3, 20),
            "max_completion_tokens wins over max_tokens"
        );
        let d = chat(
            serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap()
        .sampling(&gc, 99);
        assert_eq!(
            (d.temperature, d.top_p, d.seed, d.greedy),
            (0.7, 0.8, 99, false)
        );
    }
}
