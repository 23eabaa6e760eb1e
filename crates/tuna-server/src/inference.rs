//! Chat generation for the API: a bounded cache of loaded base models, LoRA adapters and
//! tokenizers; generation slots shared fairly between users ([`crate::slots`]); and the
//! generation loop with stop sequences. Everything here that touches a model runs on blocking
//! threads (`spawn_blocking`), never on the async runtime.
//!
//! A generation stops early, checked at every token ([`StopSignals`]), when its client has gone
//! (the request future was dropped), when it reaches the server's time limit per request, or
//! when the server shuts down and its grace period has passed: a slot is never held for nobody.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tuna_data::tokenize::ChatTokenizer;
use tuna_model::{FinishReason, GenerationConfig, LoraAdapter, Precision, QwenModel};

use crate::error::ApiError;
use crate::slots::{FairSlots, SlotPermit};
use crate::validate::ValidChatRequest;

/// What a chat request runs on: a base model directory and, for LoRA checkpoints, an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The id the client asked for (echoed as `model`).
    pub id: String,
    pub model_dir: PathBuf,
    pub adapter_dir: Option<PathBuf>,
}

pub struct LoadedModel {
    pub model: QwenModel,
    pub tokenizer: Arc<ChatTokenizer>,
    pub generation: GenerationConfig,
    /// The generation config's eos ids and the tokenizer's.
    pub eos: Vec<u32>,
}

/// A least-recently-used map for a handful of entries (front = most recent).
struct Lru<V> {
    cap: usize,
    items: Vec<(PathBuf, Arc<V>)>,
}

impl<V> Lru<V> {
    fn new(cap: usize) -> Self {
        Lru {
            cap: cap.max(1),
            items: Vec::new(),
        }
    }

    fn get(&mut self, key: &Path) -> Option<Arc<V>> {
        let i = self.items.iter().position(|(k, _)| k == key)?;
        let item = self.items.remove(i);
        let v = item.1.clone();
        self.items.insert(0, item);
        Some(v)
    }

    fn put(&mut self, key: PathBuf, v: Arc<V>) {
        self.items.retain(|(k, _)| k != &key);
        self.items.insert(0, (key, v));
        self.items.truncate(self.cap);
    }
}

/// How generation slots are shared and how long a request may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationLimits {
    /// Generations running at once.
    pub slots: usize,
    /// Slots one user may hold at once.
    pub per_user: usize,
    /// How long a request waits for a slot before 429.
    pub max_wait: Duration,
    /// Longest generation; then it ends with `finish_reason: "length"`.
    pub max_time: Duration,
}

pub struct Inference {
    slots: Arc<FairSlots>,
    limits: GenerationLimits,
    /// Cancelled when the server's shutdown grace period is over: every generation stops.
    abort: CancellationToken,
    models: Mutex<Lru<LoadedModel>>,
    adapters: Mutex<Lru<LoraAdapter>>,
    tokenizers: Mutex<Lru<ChatTokenizer>>,
    /// How loaded models run their prompt products.
    precision: Precision,
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The request cannot be served as asked (template rejected the messages, prompt too long).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::BadRequest(m) => ApiError::invalid(m, "messages"),
            InferError::Internal(m) => ApiError::Internal(m),
        }
    }
}

fn model_error(e: tuna_model::Error) -> InferError {
    match e {
        tuna_model::Error::ContextOverflow { .. } | tuna_model::Error::InvalidSampling(_) => {
            InferError::BadRequest(e.to_string())
        }
        other => InferError::Internal(other.to_string()),
    }
}

fn data_error(e: tuna_data::Error) -> InferError {
    match e {
        tuna_data::Error::Template(m) => {
            InferError::BadRequest(format!("the chat template rejected the messages: {m}"))
        }
        other => InferError::Internal(other.to_string()),
    }
}

impl Inference {
    pub fn new(
        limits: GenerationLimits,
        model_cache: usize,
        adapter_cache: usize,
        precision: Precision,
    ) -> Self {
        Inference {
            slots: FairSlots::new(limits.slots, limits.per_user),
            limits,
            abort: CancellationToken::new(),
            models: Mutex::new(Lru::new(model_cache)),
            adapters: Mutex::new(Lru::new(adapter_cache)),
            tokenizers: Mutex::new(Lru::new(4)),
            precision,
        }
    }

    pub fn limits(&self) -> GenerationLimits {
        self.limits
    }

    pub fn slots(&self) -> &Arc<FairSlots> {
        &self.slots
    }

    /// A generation slot for `user`: waits its turn (fairly) for at most the configured time,
    /// then 429; 503 once `shutdown` fires.
    pub async fn permit(
        &self,
        user: &str,
        shutdown: &CancellationToken,
    ) -> Result<SlotPermit, ApiError> {
        self.slots
            .acquire(user, self.limits.max_wait, shutdown)
            .await
    }

    /// What stops a generation starting now; its client-gone flag is set by the returned guard's drop.
    pub fn stop_signals(&self) -> (StopSignals, CancelOnDrop) {
        let client_gone = Arc::new(AtomicBool::new(false));
        (
            StopSignals {
                client_gone: client_gone.clone(),
                deadline: Instant::now() + self.limits.max_time,
                abort: self.abort.clone(),
            },
            CancelOnDrop(client_gone),
        )
    }

    /// Stops every generation at its next token (the end of the shutdown grace period).
    pub fn abort_all(&self) {
        self.abort.cancel();
    }

    /// The tokenizer of a model directory (cached). Blocking.
    pub fn tokenizer(&self, dir: &Path) -> Result<Arc<ChatTokenizer>, InferError> {
        let cached = lock(&self.tokenizers).get(dir);
        if let Some(t) = cached {
            return Ok(t);
        }
        let t = Arc::new(
            ChatTokenizer::from_model_dir(dir).map_err(|e| InferError::Internal(e.to_string()))?,
        );
        lock(&self.tokenizers).put(dir.to_path_buf(), t.clone());
        Ok(t)
    }

    /// The model and adapter of `target`, loading what the caches lack. Blocking.
    pub fn load(
        &self,
        target: &Target,
    ) -> Result<(Arc<LoadedModel>, Option<Arc<LoraAdapter>>), InferError> {
        // Bound first: a guard in the `match` scrutinee would live through the arms (deadlock on `put`).
        let cached = lock(&self.models).get(&target.model_dir);
        let loaded = match cached {
            Some(m) => m,
            None => {
                // Loaded outside the lock: two first requests may both load; the second insert wins.
                let dir = &target.model_dir;
                let mut model = QwenModel::load(dir)
                    .map_err(|e| InferError::Internal(format!("loading {}: {e}", dir.display())))?;
                model.set_precision(self.precision);
                tracing::info!(
                    model = %dir.display(),
                    prompt_products = %self.precision.describe(),
                    "model loaded for chat"
                );
                let tokenizer = self.tokenizer(dir)?;
                let generation = GenerationConfig::from_model_dir(dir)
                    .map_err(|e| InferError::Internal(e.to_string()))?;
                let mut eos = generation.eos_token_id.clone();
                for id in tokenizer.eos_token_ids() {
                    if !eos.contains(&id) {
                        eos.push(id);
                    }
                }
                let m = Arc::new(LoadedModel {
                    model,
                    tokenizer,
                    generation,
                    eos,
                });
                lock(&self.models).put(dir.clone(), m.clone());
                m
            }
        };
        let adapter = match &target.adapter_dir {
            None => None,
            Some(dir) => Some(match self.cached_adapter(dir) {
                Some(a) => a,
                None => {
                    let a =
                        Arc::new(LoraAdapter::load(dir, &loaded.model.config).map_err(|e| {
                            InferError::Internal(format!("loading adapter {}: {e}", dir.display()))
                        })?);
                    lock(&self.adapters).put(dir.clone(), a.clone());
                    a
                }
            }),
        };
        Ok((loaded, adapter))
    }
}

impl Inference {
    fn cached_adapter(&self, dir: &Path) -> Option<Arc<LoraAdapter>> {
        lock(&self.adapters).get(dir)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a consistent cache; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a generation was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// Nobody waits for the answer any more.
    ClientGone,
    /// The server's time limit per request: the answer so far, `finish_reason: "length"`.
    TimeLimit,
    /// The server is shutting down and its grace period is over.
    ShuttingDown,
}

/// Checked at every generated token.
#[derive(Debug, Clone)]
pub struct StopSignals {
    client_gone: Arc<AtomicBool>,
    deadline: Instant,
    abort: CancellationToken,
}

impl StopSignals {
    pub fn check(&self) -> Option<Interrupt> {
        if self.client_gone.load(Ordering::Relaxed) {
            Some(Interrupt::ClientGone)
        } else if self.abort.is_cancelled() {
            Some(Interrupt::ShuttingDown)
        } else if Instant::now() >= self.deadline {
            Some(Interrupt::TimeLimit)
        } else {
            None
        }
    }

    /// Waits for `fut` (a send to a slow reader) unless the generation must stop first.
    pub async fn race<T>(&self, fut: impl std::future::Future<Output = T>) -> Result<T, Interrupt> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        tokio::select! {
            v = fut => Ok(v),
            () = tokio::time::sleep_until(deadline) => Err(Interrupt::TimeLimit),
            () = self.abort.cancelled() => Err(Interrupt::ShuttingDown),
        }
    }
}

/// Held by the request (its future or its response stream): dropped when the client goes away,
/// which stops the generation at its next token.
#[derive(Debug)]
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `stop` (eos or a stop sequence) or `length` (max_tokens, context or the time limit).
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Set when the generation was cut short.
    pub interrupted: Option<Interrupt>,
}

/// Holds back text that may be the start of a stop sequence, and cuts at the first one.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        StopFilter {
            stops,
            pending: String::new(),
        }
    }

    /// Adds generated text; returns the text that is now safe to show and whether a stop
    /// sequence was reached (the stop sequence itself is never shown).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        let len = self.pending.len();
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut keep = 0;
        for k in (1..longest.min(len + 1)).rev() {
            let start = len - k;
            if self.pending.is_char_boundary(start)
                && self
                    .stops
                    .iter()
                    .any(|s| s.starts_with(&self.pending[start..]))
            {
                keep = k;
                break;
            }
        }
        let out = self.pending[..len - keep].to_string();
        self.pending.drain(..len - keep);
        (out, false)
    }

    /// What is left when generation ends without a stop sequence.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The prompt ids of `req` (the chat template with a generation prompt). Blocking.
pub fn encode(loaded: &LoadedModel, req: &ValidChatRequest) -> Result<Vec<u32>, InferError> {
    loaded
        .tokenizer
        .encode_prompt(&req.messages, req.enable_thinking)
        .map_err(data_error)
}

/// Generates the answer to `req` and passes visible text to `emit` as it comes; `emit` returns
/// `Break(why)` when the answer cannot be delivered any more. `stop` is checked at every token.
/// Blocking.
pub fn generate(
    loaded: &LoadedModel,
    adapter: Option<&LoraAdapter>,
    req: &ValidChatRequest,
    prompt: &[u32],
    seed: u64,
    stop: &StopSignals,
    mut emit: impl FnMut(&str) -> ControlFlow<Interrupt>,
) -> Result<Outcome, InferError> {
    let params = req.sampling(&loaded.generation, seed);
    if prompt.len() >= loaded.model.config.max_position_embeddings {
        return Err(InferError::BadRequest(format!(
            "the prompt has {} tokens; this model's context holds {}",
            prompt.len(),
            loaded.model.config.max_position_embeddings
        )));
    }
    let mut decoder = loaded.tokenizer.decode_stream();
    let mut filter = StopFilter::new(req.stop.clone());
    let mut stopped = false;
    let mut interrupted = stop.check();
    if interrupted.is_some() {
        // Gone or out of time before the first token (e.g. while the model loaded).
        return Ok(Outcome {
            finish_reason: "length",
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            interrupted,
        });
    }
    let mut failure = None;
    let generation =
        tuna_model::generate(&loaded.model, adapter, prompt, &params, &loaded.eos, |id| {
            if let Some(why) = stop.check() {
                interrupted = Some(why);
                return ControlFlow::Break(());
            }
            let piece = match decoder.step(id) {
                Ok(Some(p)) => p,
                Ok(None) => return ControlFlow::Continue(()),
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            };
            let (text, hit) = filter.push(&piece);
            if !text.is_empty()
                && let ControlFlow::Break(why) = emit(&text)
            {
                interrupted = Some(why);
                return ControlFlow::Break(());
            }
            if hit {
                stopped = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .map_err(model_error)?;
    if let Some(e) = failure {
        return Err(InferError::Internal(format!("decoding: {e}")));
    }
    if !stopped && !matches!(interrupted, Some(Interrupt::ClientGone)) {
        let rest = filter.finish();
        if !rest.is_empty()
            && let ControlFlow::Break(why) = emit(&rest)
        {
            interrupted = Some(why);
        }
    }
    let finish_reason = match generation.finish_reason {
        _ if stopped => "stop",
        FinishReason::Stop => "stop",
        _ => "length",
    };
    Ok(Outcome {
        finish_reason,
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: generation.tokens.len(),
        interrupted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = f.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn stop_sequences_split_across_pieces_are_cut() {
        assert_eq!(
            run(&["END"], &["Hello E", "N", "D more"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["Hello E", "NX"]),
            ("Hello ENX".into(), false)
        );
        assert_eq!(
            run(&["\n\n", "##"], &["a\n", "b#", "#c"]),
            ("a\nb".into(), true)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        // Multi-byte text before a held-back prefix stays intact.
        assert_eq!(run(&["ab"], &["é", "a"]), ("éa".into(), false));
    }

    #[test]
    fn held_back_text_is_released_as_soon_as_it_cannot_stop() {
        let mut f = StopFilter::new(vec!["STOP".into()]);
        assert_eq!(f.push("xST"), ("x".into(), false));
        assert_eq!(f.push("a"), ("STa".into(), false));
    }

    #[test]
    fn lru_keeps_the_most_recent() {
        let mut l = Lru::new(2);
        l.put("a".into(), Arc::new(1));
        l.put("b".into(), Arc::new(2));
        assert!(l.get(Path::new("a")).is_some());
        l.put("c".into(), Arc::new(3));
        assert!(l.get(Path::new("b")).is_none(), "b was least recently used");
        assert!(l.get(Path::new("a")).is_some() && l.get(Path::new("c")).is_some());
    }
}
