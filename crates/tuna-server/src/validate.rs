//! Raw requests become `Valid*` values here, so handlers, the queue and the inference code never
//! see unchecked input. Every message names the field (`tuna.lora.rank`) and the limit.

use serde_json::Value;
use tuna_data::{Message, Role};
use tuna_model::{GenerationConfig, LoraTarget, SamplingParams};

use crate::error::ApiError;
use crate::openai::types::{
    AutoOr, ChatRequest, Content, CreateJobRequest, HyperparametersRequest, LoraOut, Stop,
};

/// Tuna's job settings after defaults; stored (as JSON) in the job's `tuna` column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    pub name: Option<String>,
    /// `lora` or `full`.
    pub method: String,
    pub lora: Option<LoraOut>,
    pub max_seq_len: i64,
    pub checkpoint_interval: Option<i64>,
    pub eval_interval: Option<i64>,
    pub max_steps: Option<i64>,
    /// The peak learning rate: as given, or multiplier × [`base_learning_rate`].
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub validation_fraction: Option<f64>,
    pub sample_prompts: i64,
    pub sample_max_tokens: i64,
    /// The fine-tuned model's name (`ft:<base>:<user>:<suffix>:<job>`); checkpoints append `:ckpt-step-N`.
    pub model_id: String,
}

/// The learning rate that a multiplier of 1 stands for (tuna-train's defaults).
pub fn base_learning_rate(method: &str) -> f64 {
    if method == "full" { 1e-5 } else { 1e-4 }
}

pub const DEFAULT_MAX_SEQ_LEN: i64 = 2048;

/// A job request that passed validation; `None` hyperparameters mean `auto`.
#[derive(Debug, Clone)]
pub struct ValidJobRequest {
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: Option<i64>,
    pub n_epochs: Option<i64>,
    pub batch_size: Option<i64>,
    pub learning_rate_multiplier: Option<f64>,
    pub metadata: Option<Value>,
    /// Everything but `learning_rate` and `model_id`, which need the resolved hyperparameters and the job id.
    pub spec: JobSpec,
    pub explicit_learning_rate: Option<f64>,
}

fn bad(message: String, param: &str) -> ApiError {
    ApiError::invalid_param(message, param)
}

fn int_in(v: Option<i64>, lo: i64, hi: i64, param: &str) -> Result<Option<i64>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(bad(
            format!("`{param}` must be between {lo} and {hi}, got {x}"),
            param,
        )),
        _ => Ok(v),
    }
}

fn auto_int(
    v: Option<AutoOr<i64>>,
    lo: i64,
    hi: i64,
    param: &str,
) -> Result<Option<i64>, ApiError> {
    int_in(v.and_then(AutoOr::value), lo, hi, param)
}

/// `[A-Za-z0-9._-]`, as it becomes part of a model id whose fields are separated by `:`.
fn id_safe(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub fn validate_job_request(req: CreateJobRequest) -> Result<ValidJobRequest, ApiError> {
    if req.model.trim().is_empty() {
        return Err(bad("`model` must not be empty".into(), "model"));
    }
    if req.training_file.trim().is_empty() {
        return Err(bad(
            "`training_file` must not be empty".into(),
            "training_file",
        ));
    }
    if let Some(s) = &req.suffix
        && (s.len() > 64 || !id_safe(s))
    {
        return Err(bad(
            format!(
                "`suffix` must be at most 64 characters of letters, digits, `.`, `_` or `-`, got `{s}`"
            ),
            "suffix",
        ));
    }
    if let Some(m) = &req.metadata {
        let ok = match m {
            Value::Null => true,
            Value::Object(o) => {
                o.len() <= 16
                    && o.iter()
                        .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512))
            }
            _ => false,
        };
        if !ok {
            return Err(bad("`metadata` must be an object of at most 16 string values (keys up to 64, values up to 512 characters)".into(), "metadata"));
        }
    }
    // `hyperparameters` is the deprecated spelling; `method.supervised.hyperparameters` wins field by field.
    let mut hp = req.hyperparameters.clone().unwrap_or_default();
    if let Some(method) = &req.method {
        if method.r#type != "supervised" {
            return Err(bad(
                format!(
                    "`method.type` `{}` is not supported; only `supervised` is",
                    method.r#type
                ),
                "method.type",
            ));
        }
        if let Some(s) = &method.supervised {
            let m: &HyperparametersRequest = &s.hyperparameters;
            hp.n_epochs = m.n_epochs.or(hp.n_epochs);
            hp.batch_size = m.batch_size.or(hp.batch_size);
            hp.learning_rate_multiplier =
                m.learning_rate_multiplier.or(hp.learning_rate_multiplier);
        }
    }
    let n_epochs = auto_int(
        hp.n_epochs,
        1,
        50,
        "method.supervised.hyperparameters.n_epochs",
    )?;
    let batch_size = auto_int(
        hp.batch_size,
        1,
        256,
        "method.supervised.hyperparameters.batch_size",
    )?;
    let lrm = hp.learning_rate_multiplier.and_then(AutoOr::value);
    if let Some(x) = lrm
        && !(x.is_finite() && x > 0.0 && x <= 100.0)
    {
        let p = "method.supervised.hyperparameters.learning_rate_multiplier";
        return Err(bad(format!("`{p}` must be > 0 and <= 100, got {x}"), p));
    }

    let t = req.tuna.clone().unwrap_or_default();
    if let Some(n) = &t.name
        && (n.trim().is_empty() || n.chars().count() > 200)
    {
        return Err(bad(
            "`tuna.name` must be 1-200 characters".into(),
            "tuna.name",
        ));
    }
    let method = t.method.clone().unwrap_or_else(|| "lora".into());
    if method != "lora" && method != "full" {
        return Err(bad(
            format!("`tuna.method` must be `lora` or `full`, got `{method}`"),
            "tuna.method",
        ));
    }
    let lora = if method == "lora" {
        let l = t.lora.clone().unwrap_or_default();
        let rank = int_in(l.rank, 1, 1024, "tuna.lora.rank")?.unwrap_or(16);
        let alpha = l.alpha.unwrap_or(2.0 * rank as f64);
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(bad(
                format!("`tuna.lora.alpha` must be > 0, got {alpha}"),
                "tuna.lora.alpha",
            ));
        }
        let dropout = l.dropout.unwrap_or(0.05);
        if !(0.0..1.0).contains(&dropout) {
            return Err(bad(
                format!("`tuna.lora.dropout` must be in [0, 1), got {dropout}"),
                "tuna.lora.dropout",
            ));
        }
        let target_modules = parse_targets(l.target_modules.as_ref())?;
        Some(LoraOut {
            rank,
            alpha,
            dropout,
            target_modules,
        })
    } else {
        if t.lora.is_some() {
            return Err(bad(
                "`tuna.lora` only applies to `tuna.method` `lora`".into(),
                "tuna.lora",
            ));
        }
        None
    };
    let max_seq_len =
        int_in(t.max_seq_len, 16, 131_072, "tuna.max_seq_len")?.unwrap_or(DEFAULT_MAX_SEQ_LEN);
    let checkpoint_interval = int_in(
        t.checkpoint_interval,
        1,
        10_000_000,
        "tuna.checkpoint_interval",
    )?;
    let eval_interval = int_in(t.eval_interval, 1, 10_000_000, "tuna.eval_interval")?;
    let max_steps = int_in(t.max_steps, 1, 10_000_000, "tuna.max_steps")?;
    let explicit_learning_rate = t.learning_rate;
    if let Some(lr) = explicit_learning_rate
        && !(lr.is_finite() && lr > 0.0 && lr <= 1.0)
    {
        return Err(bad(
            format!("`tuna.learning_rate` must be > 0 and <= 1, got {lr}"),
            "tuna.learning_rate",
        ));
    }
    let warmup_ratio = t.warmup_ratio.unwrap_or(0.03);
    if !(0.0..1.0).contains(&warmup_ratio) {
        return Err(bad(
            format!("`tuna.warmup_ratio` must be in [0, 1), got {warmup_ratio}"),
            "tuna.warmup_ratio",
        ));
    }
    if let Some(f) = t.validation_fraction
        && !(0.0..1.0).contains(&f)
    {
        return Err(bad(
            format!("`tuna.validation_fraction` must be in [0, 1), got {f}"),
            "tuna.validation_fraction",
        ));
    }
    let sample_prompts = int_in(t.sample_prompts, 0, 16, "tuna.sample_prompts")?.unwrap_or(1);
    let sample_max_tokens =
        int_in(t.sample_max_tokens, 1, 4096, "tuna.sample_max_tokens")?.unwrap_or(64);

    Ok(ValidJobRequest {
        model: req.model,
        training_file: req.training_file,
        validation_file: req.validation_file.filter(|v| !v.is_empty()),
        suffix: req.suffix.filter(|s| !s.is_empty()),
        seed: req.seed,
        n_epochs,
        batch_size,
        learning_rate_multiplier: lrm,
        metadata: req.metadata.filter(|m| !m.is_null()),
        spec: JobSpec {
            name: t.name,
            method,
            lora,
            max_seq_len,
            checkpoint_interval,
            eval_interval,
            max_steps,
            learning_rate: 0.0,
            warmup_ratio,
            validation_fraction: t.validation_fraction,
            sample_prompts,
            sample_max_tokens,
            model_id: String::new(),
        },
        explicit_learning_rate,
    })
}

fn parse_targets(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let p = "tuna.lora.target_modules";
    let all = || {
        LoraTarget::ALL
            .iter()
            .map(|t| t.name().to_string())
            .collect::<Vec<_>>()
    };
    match v {
        None | Some(Value::Null) => Ok(all()),
        Some(Value::String(s)) if s == "all-linear" || s == "all" => Ok(all()),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut out = Vec::new();
            for item in items {
                let name = item.as_str().unwrap_or_default();
                let Some(t) = LoraTarget::parse(name) else {
                    return Err(bad(
                        format!(
                            "`{p}` has an unknown module `{item}`; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or \"all-linear\""
                        ),
                        p,
                    ));
                };
                if !out.contains(&t.name().to_string()) {
                    out.push(t.name().to_string());
                }
            }
            Ok(out)
        }
        Some(other) => Err(bad(
            format!("`{p}` must be a list of module names or \"all-linear\", got {other}"),
            p,
        )),
    }
}

/// OpenAI's automatic epochs (from its fine-tuning data-preparation guide): aim at 100 to 25,000
/// trained examples in total, 3 epochs when that range allows, between 1 and 25.
pub fn auto_epochs(examples: i64) -> i64 {
    let n = examples.max(1);
    if n * 3 < 100 {
        (100 + n - 1) / n
    } else if n * 3 > 25_000 {
        (25_000 / n).max(1)
    } else {
        3
    }
    .clamp(1, 25)
}

/// About 0.2% of the examples, between 1 and 256 (OpenAI's documented rule of thumb).
pub fn auto_batch_size(examples: i64) -> i64 {
    ((examples as f64 * 0.002).round() as i64).clamp(1, 256)
}

// ---------------------------------------------------------------------------------------------
// Chat

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

    fn job(v: serde_json::Value) -> Result<ValidJobRequest, ApiError> {
        validate_job_request(serde_json::from_value::<CreateJobRequest>(v).unwrap())
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

    #[test]
    fn job_request_defaults_and_errors() {
        let v = job(serde_json::json!({
            "model": "demo", "training_file": "file-a",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}},
            "tuna": {"lora": {"rank": 4}, "max_steps": 4}
        }))
        .unwrap();
        assert_eq!(
            (v.n_epochs, v.batch_size, v.learning_rate_multiplier),
            (Some(2), None, None)
        );
        let lora = v.spec.lora.unwrap();
        assert_eq!(
            (lora.rank, lora.alpha, lora.target_modules.len()),
            (4, 8.0, 7)
        );
        assert_eq!(v.spec.max_steps, Some(4));

        let cases = [
            (
                serde_json::json!({"method": {"type": "dpo"}}),
                "method.type",
            ),
            (
                serde_json::json!({"hyperparameters": {"n_epochs": 0}}),
                "method.supervised.hyperparameters.n_epochs",
            ),
            (
                serde_json::json!({"tuna": {"method": "qlora"}}),
                "tuna.method",
            ),
            (
                serde_json::json!({"tuna": {"lora": {"target_modules": ["qkv"]}}}),
                "tuna.lora.target_modules",
            ),
            (
                serde_json::json!({"tuna": {"method": "full", "lora": {"rank": 2}}}),
                "tuna.lora",
            ),
            (serde_json::json!({"suffix": "a:b"}), "suffix"),
        ];
        for (extra, want) in cases {
            let mut body = serde_json::json!({"model": "demo", "training_file": "file-a"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(param(job(body).unwrap_err()), want);
        }
    }

    #[test]
    fn auto_hyperparameters_follow_the_dataset_size() {
        assert_eq!(auto_epochs(10), 10);
        assert_eq!(auto_epochs(91), 3);
        assert_eq!(auto_epochs(30), 4);
        assert_eq!(auto_epochs(1), 25);
        assert_eq!(auto_epochs(1000), 3);
        assert_eq!(auto_epochs(100_000), 1);
        assert_eq!(auto_batch_size(91), 1);
        assert_eq!(auto_batch_size(5000), 10);
        assert_eq!(auto_batch_size(1_000_000), 256);
    }
}
