//! The fine-tuning recipe (torchtune's `lora_finetune_single_device`, read top to bottom): the
//! loop of supervised fine-tuning, and of DPO, whose objective-specific half lives in
//! [`crate::dpo`].
//!
//! [`Trainer::new`] sets up, in order: the model (and, for LoRA, the adapter), the tokenizer, the
//! data (tokenize → length policy → split → a plan of micro-batches per step for every epoch),
//! the optimizer and the schedule; for DPO the reference log-probabilities (or, on resume, the
//! checkpoint's); then it restores a checkpoint when resuming.
//! [`Trainer::run`] is one loop; each optimizer step does:
//!
//! 1. pack the step's micro-batches (whole examples, block-diagonal attention, no padding; DPO:
//!    whole pairs);
//! 2. forward + backward on each (on the CPU engine, or on the device of
//!    [`Trainer::set_device`], which keeps the gradients), accumulating gradients of
//!    `Σ token losses / N`, where `N` is the number of trained tokens of the whole step (so the
//!    loss is the mean over the step's tokens, not a mean of micro-batch means); DPO: of the mean
//!    DPO loss over the step's pairs;
//! 3. stop with [`Error::NonFinite`] if the loss or the gradient norm is NaN/inf, before any update;
//! 4. clip the global gradient norm (`max_grad_norm`);
//! 5. AdamW with the schedule's learning rate (f32 moments); with a device, 3–5 run there and
//!    only the norm comes back; the host's weights and moments are refreshed before a save;
//! 6. report [`StepMetrics`] (observer + `metrics.jsonl`), evaluate and checkpoint when due.
//!
//! Supported: LoRA (PEFT checkpoints) and full fine-tuning (HF checkpoints), gradient accumulation,
//! batches in examples or tokens, linear / cosine / constant schedules with warmup, exact resume,
//! mixed precision (`precision`: bf16 matrix products with f32 sums; master weights, LoRA A/B and
//! AdamW state stay f32), SFT passes on a GPU ([`Trainer::set_device`]; DPO stays on the CPU).
//! Not supported: multi-device training.
//!
//! Errors: invalid config ([`Error::Config`]), unreadable data or model, a non-finite loss
//! ([`Error::NonFinite`]), a checkpoint that does not match the run ([`Error::Resume`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tuna_data::tokenize::ChatTokenizer;
use tuna_engine::ops::matmul::Precision;
use tuna_model::params::trainable_parameters_mut;
use tuna_model::train::{BatchStats, TrainOptions};
use tuna_model::{
    CpuDecoder, Decoder, GenerationConfig, Gradients, LoraAdapter, ParamLayout, QwenConfig,
    QwenModel, TrainDevice,
};

use crate::checkpoint::{self, TrainerState};
use crate::config::{Method, Objective, TrainConfig, default_learning_rate};
use crate::data::{Dataset, MicroBatch, Plan};
use crate::dpo::{self, ReferenceLogps};
use crate::error::{Error, Result};
use crate::metrics::{
    CheckpointInfo, EvalMetrics, MetricsWriter, PreferenceMetrics, Sample, StepMetrics,
    TrainObserver,
};
use crate::optim::{AdamW, AdamWSettings, clip_grad_norm};
use crate::schedule::Schedule;

/// What a finished (or stopped) run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    /// Optimizer steps done, including those before a resume.
    pub steps: usize,
    pub total_steps: usize,
    /// The observer asked to stop before the last step.
    pub stopped: bool,
    pub resumed_from: Option<PathBuf>,
    /// Loss of the last step.
    pub train_loss: Option<f64>,
    /// How the matrix products ran: `f32`, or `bf16 (<kernel>)`.
    pub precision: String,
    /// Where the passes ran: `cpu`, or the device (e.g. `gpu:0 (NVIDIA H200, CUDA)`).
    pub device: String,
    /// The last validation pass.
    pub eval: Option<EvalMetrics>,
    /// Checkpoints written by this call, oldest first.
    pub checkpoints: Vec<CheckpointInfo>,
    pub elapsed_s: f64,
    /// Tokens processed and trained on by this call.
    pub tokens: usize,
    pub trained_tokens: usize,
}

/// The model, data and optimizer state of one run. See the module docs for the loop.
pub struct Trainer {
    cfg: TrainConfig,
    model: QwenModel,
    /// `Some` for LoRA, `None` for full fine-tuning.
    adapter: Option<LoraAdapter>,
    /// Needed only for the per-checkpoint samples (tests may run without one).
    tokenizer: Option<ChatTokenizer>,
    eos_token_ids: Vec<u32>,
    data: Dataset,
    plan: Plan,
    schedule: Schedule,
    optimizer: AdamW,
    /// The trainable tensors (names, shapes, decay), in the order of `grads` and the optimizer.
    layout: ParamLayout,
    grads: Gradients,
    /// DPO: the reference policy's log-probabilities of every pair.
    reference: Option<ReferenceLogps>,
    /// Optimizer steps done.
    step: usize,
    resumed_from: Option<PathBuf>,
    last_loss: Option<f64>,
    last_lr: f32,
    /// Where the passes run when not on the CPU engine (see [`Trainer::set_device`]).
    device: Option<Box<dyn TrainDevice>>,
    /// Whether the device's weights and moments moved past the host copies (see `sync_host`).
    host_stale: bool,
}

/// What one step's forward and backward passes found.
struct StepOutcome {
    loss: f64,
    token_accuracy: f64,
    tokens: usize,
    trained_tokens: usize,
    preference: Option<PreferenceMetrics>,
}

impl Trainer {
    /// Sets up a run from its config: loads the model and tokenizer from `model_dir`, reads and
    /// tokenizes the data, and restores the newest checkpoint when `resume` is set.
    pub fn new(mut cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        if cfg.learning_rate.is_none() {
            cfg.learning_rate = Some(default_learning_rate(
                &cfg.model_dir,
                cfg.method,
                cfg.objective,
            )?);
        }
        let model_cfg = QwenConfig::from_model_dir(&cfg.model_dir)?;
        if cfg.max_seq_len > model_cfg.max_position_embeddings {
            tracing::info!(
                "max_seq_len {} lowered to the model's max_position_embeddings {}",
                cfg.max_seq_len,
                model_cfg.max_position_embeddings
            );
            cfg.max_seq_len = model_cfg.max_position_embeddings;
        }
        let tokenizer = ChatTokenizer::from_model_dir(&cfg.model_dir)?;
        let data = Dataset::load(&cfg, &tokenizer)?;
        let resume = resume_checkpoint(&cfg)?;
        // A full fine-tuning checkpoint is a whole model: load it instead of the base.
        let model = match (&resume, cfg.method) {
            (Some(dir), Method::Full) => QwenModel::load(dir)?,
            _ => QwenModel::load(&cfg.model_dir)?,
        };
        Self::setup(cfg, model, Some(tokenizer), data, resume)
    }

    /// Sets up a run over a loaded model and already tokenized data (tests, benchmarks, callers
    /// with their own data path). `cfg.train_file` is only recorded; `cfg.model_dir` is still
    /// where full checkpoints copy `config.json` and tokenizer files from.
    pub fn from_parts(
        cfg: TrainConfig,
        model: QwenModel,
        tokenizer: Option<ChatTokenizer>,
        data: Dataset,
    ) -> Result<Self> {
        cfg.validate()?;
        let resume = resume_checkpoint(&cfg)?;
        let model = match (&resume, cfg.method) {
            (Some(dir), Method::Full) => QwenModel::load(dir)?,
            _ => model,
        };
        Self::setup(cfg, model, tokenizer, data, resume)
    }

    fn setup(
        cfg: TrainConfig,
        mut model: QwenModel,
        tokenizer: Option<ChatTokenizer>,
        data: Dataset,
        resume: Option<PathBuf>,
    ) -> Result<Self> {
        if data.train.is_empty() {
            return Err(Error::Dataset {
                path: cfg.train_file.clone(),
                reason: "no training example".into(),
            });
        }
        let dpo = cfg.objective == Objective::Dpo;
        if dpo != data.paired {
            return Err(Error::Config(format!(
                "objective `{}` needs {} data",
                cfg.objective.as_str(),
                if dpo { "preference-pair" } else { "chat" }
            )));
        }
        // Model: its precision, the adapter (fresh, or the checkpoint's), or every weight as
        // trainable f32.
        let precision = cfg.precision.resolve();
        model.set_precision(precision);
        tracing::info!("matrix products: {}", precision.describe());
        let mut adapter = match (cfg.method, &resume, &cfg.init_adapter) {
            (Method::Lora, Some(dir), _) | (Method::Lora, None, Some(dir)) => {
                Some(LoraAdapter::load(dir, &model.config)?)
            }
            (Method::Lora, None, None) => Some(LoraAdapter::new_random(
                &model.config,
                &cfg.lora.to_lora_config(),
                cfg.seed,
            )),
            (Method::Full, ..) => None,
        };
        if let Some(a) = adapter
            .as_mut()
            .filter(|a| dpo && a.config.lora_dropout > 0.0)
        {
            // As TRL's `disable_dropout`: dropout would make the policy differ from the
            // (dropout-free) reference before any update.
            tracing::info!(
                "DPO trains without dropout: LoRA dropout {} set to 0",
                a.config.lora_dropout
            );
            a.config.lora_dropout = 0.0;
        }
        // DPO's reference: the model as the run starts (see `dpo`), or what the checkpoint saved.
        let reference = match (dpo, &resume) {
            (false, _) => None,
            (true, Some(dir)) => Some(ReferenceLogps::load(&dir.join(dpo::REFERENCE_FILE), &data)?),
            (true, None) => {
                let start = adapter.as_ref().filter(|_| cfg.init_adapter.is_some());
                Some(ReferenceLogps::compute(
                    &model,
                    start,
                    &data,
                    cfg.batch_size,
                )?)
            }
        };
        let layout = match &adapter {
            Some(a) => a.layout(),
            None => {
                // Widen the weights to owned f32 now, so the first step does not pay for it.
                let _ = model.full_parameters_mut();
                model.full_layout()
            }
        };
        let grads = layout.zero_gradients();

        // Data plan and schedule.
        let plan = Plan::new(&data, &cfg);
        let total_steps = plan.total_steps();
        let schedule = Schedule::new(
            cfg.lr_schedule,
            cfg.lr(),
            total_steps,
            cfg.warmup_steps,
            cfg.warmup_ratio,
        );

        // Optimizer.
        let settings = AdamWSettings {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        };
        let optimizer = AdamW::new(settings, &layout.sizes(), layout.decay_flags());

        let eos_token_ids = {
            let mut eos = GenerationConfig::from_model_dir(&cfg.model_dir)
                .map(|g| g.eos_token_id)
                .unwrap_or_default();
            if let Some(t) = &tokenizer {
                eos.extend(t.eos_token_ids());
            }
            eos.sort_unstable();
            eos.dedup();
            eos
        };

        let mut trainer = Trainer {
            cfg,
            model,
            adapter,
            tokenizer,
            eos_token_ids,
            data,
            plan,
            schedule,
            optimizer,
            layout,
            grads,
            reference,
            step: 0,
            resumed_from: None,
            last_loss: None,
            last_lr: 0.0,
            device: None,
            host_stale: false,
        };
        if let Some(dir) = resume {
            trainer.restore(&dir)?;
            trainer.resumed_from = Some(dir);
        }
        Ok(trainer)
    }

    /// Checks that `dir` belongs to this run and loads its optimizer state and position.
    fn restore(&mut self, dir: &Path) -> Result<()> {
        let bad = |reason: String| Error::Resume {
            path: dir.to_path_buf(),
            reason,
        };
        let state: TrainerState = checkpoint::read_json(&dir.join(checkpoint::TRAINER_STATE))?;
        if state.version != checkpoint::STATE_VERSION {
            return Err(bad(format!(
                "trainer_state.json version {} (this build reads {})",
                state.version,
                checkpoint::STATE_VERSION
            )));
        }
        if state.config.objective != self.cfg.objective {
            return Err(bad(format!(
                "it is a `{}` checkpoint and this run is `{}`",
                state.config.objective.as_str(),
                self.cfg.objective.as_str()
            )));
        }
        if state.method != self.cfg.method {
            return Err(bad(format!(
                "it is a `{}` checkpoint and this run is `{}`",
                state.method.as_str(),
                self.cfg.method.as_str()
            )));
        }
        if state.step > self.plan.total_steps() {
            return Err(bad(format!(
                "it is at step {} but this run has only {} steps",
                state.step,
                self.plan.total_steps()
            )));
        }
        if state.seed != self.cfg.seed
            || state.train_examples != self.data.train_units()
            || state.data_fingerprint != self.plan.fingerprint(state.step)
        {
            return Err(bad(
                "the training data, seed or batching settings changed since the checkpoint, so its steps cannot be replayed"
                    .into(),
            ));
        }
        if state.total_steps != self.plan.total_steps() {
            tracing::warn!(
                "resuming a run of {} steps as a run of {} steps: the learning-rate schedule changes",
                state.total_steps,
                self.plan.total_steps()
            );
        }
        checkpoint::load_optimizer(
            &dir.join(checkpoint::OPTIMIZER_STATE),
            &self.layout.names(),
            &mut self.optimizer,
        )?;
        if self.optimizer.step as usize != state.step {
            return Err(bad(format!(
                "optimizer.safetensors is at step {}, trainer_state.json at {}",
                self.optimizer.step, state.step
            )));
        }
        self.step = state.step;
        self.last_loss = state.train_loss;
        self.last_lr = state.last_lr;
        Ok(())
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn total_steps(&self) -> usize {
        self.plan.total_steps()
    }

    /// Optimizer steps already done (non-zero after a resume).
    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The host's weights. With a device they are as of the last checkpoint (or the end of
    /// [`Self::run`]): the device holds the current ones between saves.
    pub fn model(&self) -> &QwenModel {
        &self.model
    }

    /// The host's adapter; with a device, as of the last checkpoint, like [`Self::model`].
    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    /// DPO: the reference policy's log-probabilities of every pair (None for SFT).
    pub fn reference(&self) -> Option<&ReferenceLogps> {
        self.reference.as_ref()
    }

    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// Runs the forward and backward passes on `device` (built over this trainer's model and
    /// adapter, e.g. by `tuna_gpu::train_device`) instead of the CPU engine, and the optimizer
    /// step there too (same arithmetic; see [`TrainDevice`]). Schedule, checkpoints (same files),
    /// resume and metrics stay the same. Call it after a resume: the device is loaded with the
    /// trainer's current weights and AdamW moments.
    pub fn set_device(&mut self, mut device: Box<dyn TrainDevice>) -> Result<()> {
        if self.reference.is_some() {
            return Err(Error::Config(format!(
                "DPO runs on the CPU only for now, not on {}",
                device.describe()
            )));
        }
        device.load_trainable(&self.model, self.adapter.as_ref())?;
        device.keep_optimizer(&self.layout, &self.optimizer.m, &self.optimizer.v)?;
        tracing::info!("training passes on {}", device.describe());
        self.device = Some(device);
        Ok(())
    }

    /// Where the passes run: `cpu`, or the device's description.
    pub fn device_name(&self) -> String {
        self.device
            .as_ref()
            .map_or_else(|| "cpu".to_string(), |d| d.describe())
    }

    /// How the matrix products run: the device's, or the CPU engine's (`precision_name` of
    /// the resolved setting and its kernel).
    pub fn precision_name(&self) -> String {
        match &self.device {
            Some(d) => d.precision(),
            None => self.model.precision.describe(),
        }
    }

    /// How the CPU engine's matrix products run (the resolved `precision` setting and its kernel).
    pub fn precision(&self) -> Precision {
        self.model.precision
    }

    /// Overrides the precision the config resolved to, e.g. to run a bf16 kernel other than
    /// this process's (tests of every kernel, benchmarks).
    pub fn set_precision(&mut self, precision: Precision) {
        self.model.set_precision(precision);
    }

    /// Trainable parameters: the adapter's, or the whole model's.
    pub fn trainable_parameters(&self) -> usize {
        self.grads.tensors.iter().map(Vec::len).sum()
    }

    /// Trains to the last step (or until the observer breaks), checkpointing and evaluating on the way.
    pub fn run(&mut self, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
        let out_dir = self.cfg.out_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
        // A run that starts from step 0 must not mix its checkpoints with another run's.
        let continuing = self.step > 0 || self.resumed_from.is_some();
        if !continuing && !checkpoint::list_checkpoints(&out_dir)?.is_empty() {
            return Err(Error::Config(format!(
                "{} already holds checkpoints; continue the run (`--resume`, or `resume: true` in a config) or choose another output directory",
                out_dir.display()
            )));
        }
        checkpoint::write_json(&out_dir.join("train_config.json"), &self.cfg)?;
        let mut metrics = MetricsWriter::open(
            &out_dir.join("metrics.jsonl"),
            continuing.then_some(self.step),
        )?;

        let total_steps = self.plan.total_steps();
        let start = Instant::now();
        let first_step = self.step;
        let mut summary = TrainSummary {
            steps: self.step,
            total_steps,
            stopped: false,
            resumed_from: self.resumed_from.clone(),
            train_loss: self.last_loss,
            precision: self.precision_name(),
            device: self.device_name(),
            eval: None,
            checkpoints: Vec::new(),
            elapsed_s: 0.0,
            tokens: 0,
            trained_tokens: 0,
        };

        while self.step < total_steps {
            let step = self.step; // 0-based index of this step
            let step_start = Instant::now();

            // 1. + 2. The step's micro-batches, forward + backward, gradients accumulated.
            let out = self.accumulate_gradients(step)?;
            let loss = out.loss;

            // 3. + 4. Stop on NaN/inf before touching the weights; clip.
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    step: step + 1,
                    what: "loss",
                    value: loss,
                });
            }
            // 5. AdamW at the schedule's learning rate (on the device, when there is one).
            let lr = self.schedule.lr(step);
            let grad_norm = match &mut self.device {
                Some(device) => {
                    let cfgs = self.optimizer.configs(lr);
                    let norm = device.optimizer_step(
                        &cfgs,
                        self.optimizer.step + 1,
                        self.cfg.max_grad_norm,
                    )?;
                    if norm.is_finite() {
                        self.optimizer.step += 1;
                        self.host_stale = true;
                    }
                    norm
                }
                None => clip_grad_norm(&mut self.grads, self.cfg.max_grad_norm),
            };
            if !grad_norm.is_finite() {
                return Err(Error::NonFinite {
                    step: step + 1,
                    what: "gradient norm",
                    value: grad_norm as f64,
                });
            }
            if self.device.is_none() {
                let params = trainable_parameters_mut(&mut self.model, self.adapter.as_mut());
                self.optimizer.update(params, &self.grads, lr);
            }
            self.step += 1;
            self.last_loss = Some(loss);
            self.last_lr = lr;

            // 6. Metrics, evaluation, checkpoints.
            let step_s = step_start.elapsed().as_secs_f64();
            let elapsed_s = start.elapsed().as_secs_f64();
            let done_here = self.step - first_step;
            let m = StepMetrics {
                step: self.step,
                total_steps,
                epoch: self.plan.epoch_after(self.step),
                loss,
                token_accuracy: out.token_accuracy,
                lr,
                grad_norm,
                tokens_per_sec: out.tokens as f64 / step_s.max(1e-9),
                tokens: out.tokens,
                trained_tokens: out.trained_tokens,
                elapsed_s,
                eta_s: elapsed_s / done_here as f64 * (total_steps - self.step) as f64,
                preference: out.preference,
            };
            summary.tokens += out.tokens;
            summary.trained_tokens += out.trained_tokens;
            metrics.step(&m)?;
            let stop = observer.on_step(&m).is_break();

            let last = self.step == total_steps;
            let save = last
                || stop
                || match self.cfg.save_every {
                    Some(k) => self.step.is_multiple_of(k),
                    None => self.plan.ends_epoch(step),
                };
            let eval_due = match self.cfg.eval_every {
                Some(k) => self.step.is_multiple_of(k) || last,
                None => save,
            };
            let mut eval_loss = None;
            if eval_due && !self.data.validation.is_empty() {
                let e = self.evaluate()?;
                metrics.eval(&e)?;
                observer.on_eval(&e);
                eval_loss = Some(e.loss);
                summary.eval = Some(e);
            }
            if save {
                self.sync_host()?;
                let info = self.save_checkpoint(last || stop, eval_loss)?;
                metrics.checkpoint(&info)?;
                observer.on_checkpoint(&info);
                summary.checkpoints.push(info);
            }
            if stop {
                summary.stopped = !last;
                break;
            }
        }
        self.sync_host()?;
        summary.steps = self.step;
        summary.train_loss = self.last_loss;
        summary.elapsed_s = start.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Copies the device's trainable tensors and AdamW moments into the host's model, adapter and
    /// optimizer when steps ran since the last copy (before a checkpoint and at the end of a run).
    fn sync_host(&mut self) -> Result<()> {
        let Some(device) = &self.device else {
            return Ok(());
        };
        if !self.host_stale {
            return Ok(());
        }
        let params = trainable_parameters_mut(&mut self.model, self.adapter.as_mut());
        device.download_state(params, &mut self.optimizer.m, &mut self.optimizer.v)?;
        self.host_stale = false;
        Ok(())
    }

    /// Forward + backward over step `step`'s micro-batches into the zeroed gradients: SFT's
    /// token-mean cross-entropy, or DPO's pair-mean loss.
    fn accumulate_gradients(&mut self, step: usize) -> Result<StepOutcome> {
        let batches = self.plan.batches(step, &self.data);
        let tokens: usize = batches.iter().map(MicroBatch::tokens).sum();
        let opts = |i: usize| TrainOptions {
            recompute_activations: self.cfg.recompute_activations,
            dropout_seed: dropout_seed(self.cfg.seed, step, i),
        };
        self.grads.zero();
        if let Some(reference) = &self.reference {
            let sums = dpo::accumulate_step(
                &self.model,
                self.adapter.as_ref(),
                &mut self.grads,
                self.plan.step_units(step),
                &batches,
                &reference.train,
                f64::from(self.cfg.dpo.beta),
                opts,
            )?;
            return Ok(StepOutcome {
                loss: sums.mean_loss(),
                token_accuracy: sums.token_accuracy(),
                tokens,
                trained_tokens: sums.tokens.tokens,
                preference: Some(sums.metrics()),
            });
        }
        // The loss is normalised by all the step's trained tokens.
        let trained: usize = batches.iter().map(|b| b.trained_tokens).sum();
        let scale = 1.0 / trained as f32;
        let mut stats = BatchStats::default();
        for (i, batch) in batches.iter().enumerate() {
            let b = batch.as_train_batch();
            let s = match &mut self.device {
                Some(d) => {
                    d.forward_backward(&b, &self.layout, &mut self.grads, scale, &opts(i))?
                }
                None => self.model.forward_backward(
                    &b,
                    self.adapter.as_ref(),
                    &mut self.grads,
                    scale,
                    &opts(i),
                )?,
            };
            stats.add(&s);
        }
        Ok(StepOutcome {
            loss: stats.loss_sum / stats.tokens.max(1) as f64,
            token_accuracy: stats.correct as f64 / stats.tokens.max(1) as f64,
            tokens,
            trained_tokens: trained,
            preference: None,
        })
    }

    /// Loss and token accuracy over the whole validation set with the current weights (DPO: its
    /// loss and metrics over the validation pairs).
    pub fn evaluate(&self) -> Result<EvalMetrics> {
        let start = Instant::now();
        let batches = self.plan.validation_batches(&self.data);
        let (loss, perplexity_loss, stats, preference) = match &self.reference {
            Some(reference) => {
                let sums = dpo::evaluate(
                    &self.model,
                    self.adapter.as_ref(),
                    &batches,
                    &reference.validation,
                    f64::from(self.cfg.dpo.beta),
                )?;
                let chosen_ce = sums.chosen_loss_sum / sums.chosen_tokens.max(1) as f64;
                (
                    sums.mean_loss(),
                    chosen_ce,
                    sums.tokens,
                    Some(sums.metrics()),
                )
            }
            None => {
                let mut stats = BatchStats::default();
                for (_, batch) in &batches {
                    let b = batch.as_train_batch();
                    stats.add(&match &self.device {
                        Some(d) => d.evaluate(&b)?,
                        None => self.model.evaluate(&b, self.adapter.as_ref())?,
                    });
                }
                let loss = stats.loss_sum / stats.tokens.max(1) as f64;
                (loss, loss, stats, None)
            }
        };
        Ok(EvalMetrics {
            step: self.step,
            epoch: self.plan.epoch_after(self.step),
            loss,
            perplexity: perplexity_loss.exp(),
            token_accuracy: stats.correct as f64 / stats.tokens.max(1) as f64,
            trained_tokens: stats.tokens,
            examples: self.data.validation.len() / self.data.unit_len(),
            elapsed_s: start.elapsed().as_secs_f64(),
            preference,
        })
    }

    /// Greedy answers to the sample prompts with the current weights, on the device the run
    /// trains on (empty without a tokenizer).
    pub fn samples(&self) -> Result<Vec<Sample>> {
        let Some(tokenizer) = &self.tokenizer else {
            return Ok(Vec::new());
        };
        let mut decoder: Box<dyn Decoder + '_> = match &self.device {
            Some(device) => device.decoder(),
            None => Box::new(CpuDecoder::new(&self.model, self.adapter.as_ref())),
        };
        crate::sample::generate_samples(
            &mut *decoder,
            tokenizer,
            &self.eos_token_ids,
            &self.data.samples,
            self.cfg.sample_max_tokens,
        )
    }

    /// Writes `out_dir/checkpoint-<step>/` (see [`crate::checkpoint`]) and returns what it holds.
    fn save_checkpoint(&self, is_final: bool, eval_loss: Option<f64>) -> Result<CheckpointInfo> {
        let dir = checkpoint::checkpoint_dir(&self.cfg.out_dir, self.step);
        let tmp = checkpoint::fresh_tmp_dir(&dir)?;
        let base_model = self.cfg.model_dir.display().to_string();
        match &self.adapter {
            Some(a) => a.save(&tmp, &base_model)?,
            None => checkpoint::save_full_model(&self.model, &self.cfg.model_dir, &tmp)?,
        }
        checkpoint::save_optimizer(
            &tmp.join(checkpoint::OPTIMIZER_STATE),
            &self.layout.names(),
            &self.optimizer,
        )?;
        if let Some(reference) = &self.reference {
            reference.save(&tmp.join(dpo::REFERENCE_FILE))?;
        }
        let state = TrainerState {
            version: checkpoint::STATE_VERSION,
            step: self.step,
            total_steps: self.plan.total_steps(),
            epoch: self.plan.epoch_after(self.step),
            method: self.cfg.method,
            seed: self.cfg.seed,
            train_examples: self.data.train_units(),
            data_fingerprint: self.plan.fingerprint(self.step),
            base_model,
            train_loss: self.last_loss,
            eval_loss,
            last_lr: self.last_lr,
            config: self.cfg.clone(),
        };
        checkpoint::write_json(&tmp.join(checkpoint::TRAINER_STATE), &state)?;
        // A sample that cannot be generated (e.g. a prompt longer than the context) must not
        // cost the checkpoint.
        let samples = self.samples().unwrap_or_else(|e| {
            tracing::warn!("step {}: no samples for this checkpoint: {e}", self.step);
            Vec::new()
        });
        if !samples.is_empty() {
            checkpoint::write_json(&tmp.join(checkpoint::SAMPLE_FILE), &samples)?;
        }
        checkpoint::commit_dir(&tmp, &dir)?;
        if let Some(keep) = self.cfg.save_total_limit {
            checkpoint::prune_checkpoints(&self.cfg.out_dir, keep)?;
        }
        Ok(CheckpointInfo {
            step: self.step,
            epoch: state.epoch,
            path: dir,
            train_loss: self.last_loss,
            eval_loss,
            samples,
            is_final,
        })
    }
}

/// The checkpoint to resume from: `resume_from`, else the newest in `out_dir` when `resume` is set.
fn resume_checkpoint(cfg: &TrainConfig) -> Result<Option<PathBuf>> {
    if let Some(dir) = &cfg.resume_from {
        if !dir.join(checkpoint::TRAINER_STATE).is_file() {
            return Err(Error::Resume {
                path: dir.clone(),
                reason: "no trainer_state.json (not a Tuna checkpoint)".into(),
            });
        }
        return Ok(Some(dir.clone()));
    }
    if !cfg.resume {
        return Ok(None);
    }
    let latest = checkpoint::latest_checkpoint(&cfg.out_dir)?;
    if latest.is_none() {
        tracing::warn!(
            "no checkpoint in {} to resume from; starting from step 0",
            cfg.out_dir.display()
        );
    }
    Ok(latest)
}

/// A distinct dropout stream per (seed, step, micro-batch), so a resumed run draws the same masks.
fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    // splitmix64 finaliser over the combined counters.
    let mut z = seed ^ ((step as u64) << 20) ^ micro as u64;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs a whole config with an observer that ignores everything (convenience for callers and tests).
pub fn train(cfg: TrainConfig) -> Result<TrainSummary> {
    Trainer::new(cfg)?.run(&mut ())
}
