//! Estimates before a job starts: tokens from the dataset check, duration from the throughput
//! table (tokens per second of a model shape, method and device kind), cost from the configured
//! price; and the queue simulation that gives each queued job its position and expected start.

use std::collections::{HashMap, VecDeque};

use tuna_model::QwenConfig;

use crate::checker::DatasetSize;
use crate::openai::types::{Estimate, Hyperparameters};
use crate::spec::{JobSpec, LoraSpec, Tuning};
use crate::store::{JobRow, JobStatus, QueueEntry, Store, StoreResult, ThroughputRow};

/// Training speed on a CPU from the parameter count, before any job of the shape has finished.
///
/// A token costs about 2·N FLOPs forward (N = parameters of the matmuls, the LM head included)
/// and 2·N backward through the activations; full fine-tuning adds 2·N for the weight gradients
/// (the usual 6·N rule), LoRA does not (frozen weights get no gradient). A preference run
/// (`…+dpo`, see `JobSpec::throughput_method`) adds the reference model's forward pass (2·N),
/// counted as if every epoch paid it (it runs once, before the first).
pub fn seed_tokens_per_second(cfg: &QwenConfig, method: &str, gflops: f64) -> f64 {
    let embed = cfg.vocab_size * cfg.hidden_size;
    // Embedding lookups are free; the LM head is one (tied or not) vocab × hidden matmul.
    let matmul_params =
        (cfg.num_parameters() - if cfg.tie_word_embeddings { 0 } else { embed }) as f64;
    let (weights, objective) = method.split_once('+').unwrap_or((method, ""));
    let train = if weights == "full" { 6.0 } else { 4.0 };
    let reference = if objective == "dpo" { 2.0 } else { 0.0 };
    let flops_per_token = (train + reference) * matmul_params;
    (gflops * 1e9 / flops_per_token).max(1e-3)
}

/// The measured row for (shape, device, method), or a seeded one (stored so later reads agree).
pub async fn throughput(
    store: &dyn Store,
    shape: &str,
    device: &str,
    method: &str,
    cfg: &QwenConfig,
    gflops: f64,
) -> StoreResult<ThroughputRow> {
    if let Some(row) = store.get_throughput(shape, device, method).await? {
        return Ok(row);
    }
    let row = ThroughputRow {
        shape: shape.into(),
        device: device.into(),
        method: method.into(),
        tokens_per_second: seed_tokens_per_second(cfg, method, gflops),
        samples: 0,
        source: "seed".into(),
        updated_at: crate::ids::now(),
    };
    store.put_throughput(&row).await?;
    Ok(row)
}

/// Folds a finished job's measured speed into the table: a running mean over the last (at most
/// 10) jobs, replacing the seed at the first measurement.
pub fn fold_measurement(
    old: Option<&ThroughputRow>,
    shape: &str,
    device: &str,
    method: &str,
    measured: f64,
    now: i64,
) -> ThroughputRow {
    let (mean, n) = match old {
        Some(r) if r.source == "measured" => {
            let n = r.samples.clamp(1, 9) as f64;
            (
                (r.tokens_per_second * n + measured) / (n + 1.0),
                r.samples + 1,
            )
        }
        _ => (measured, 1),
    };
    ThroughputRow {
        shape: shape.into(),
        device: device.into(),
        method: method.into(),
        tokens_per_second: mean,
        samples: n,
        source: "measured".into(),
        updated_at: now,
    }
}

/// Steps of a run: ⌈examples / batch⌉ per epoch, or `max_steps`.
pub fn total_steps(examples: i64, hp: &Hyperparameters, max_steps: Option<i64>) -> i64 {
    let per_epoch = (examples.max(1) + hp.batch_size - 1) / hp.batch_size.max(1);
    max_steps.unwrap_or(per_epoch * hp.n_epochs)
}

#[allow(clippy::too_many_arguments)]
/// The run's tokens, steps and cost, and its duration at `tps` (`None`: no speed known on the
/// device, so no duration either).
pub fn make_estimate(
    size: &DatasetSize,
    hp: &Hyperparameters,
    max_steps: Option<i64>,
    tps: Option<&ThroughputRow>,
    price_per_million_tokens: f64,
    currency: &str,
    device: &str,
) -> Estimate {
    let steps = total_steps(size.examples, hp, max_steps);
    let full_steps = total_steps(size.examples, hp, None).max(1);
    // With max_steps the data repeats or stops early: tokens scale with the steps run.
    let total_tokens = (size.tokens_per_epoch as f64 * hp.n_epochs as f64 * steps as f64
        / full_steps as f64)
        .round() as i64;
    let speed = tps.map(|t| t.tokens_per_second.max(1e-9));
    Estimate {
        examples: size.examples,
        tokens_per_epoch: size.tokens_per_epoch,
        trained_tokens_per_epoch: size.trained_tokens_per_epoch,
        n_epochs: hp.n_epochs,
        batch_size: hp.batch_size,
        total_steps: steps,
        total_tokens,
        tokens_per_second: speed,
        throughput_source: tps.map_or_else(|| "none".into(), |t| t.source.clone()),
        duration_seconds: speed.map(|s| total_tokens as f64 / s),
        cost: price_per_million_tokens * total_tokens as f64 / 1e6,
        price_per_million_tokens,
        currency: currency.into(),
        device: device.into(),
    }
}

/// Where a queued job stands: its 1-based position and expected start (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueSlot {
    pub position: i64,
    pub estimated_start: f64,
}

/// What the time left of a running job depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunState {
    /// The estimate's duration, 0 when there is none.
    pub estimated_seconds: f64,
    pub step: i64,
    pub total_steps: Option<i64>,
    pub running_seconds: f64,
    pub run_started_at: Option<f64>,
}

impl RunState {
    pub fn of(row: &JobRow) -> Self {
        RunState {
            estimated_seconds: row
                .estimate
                .as_ref()
                .and_then(|e| e.duration_seconds)
                .unwrap_or(0.0),
            step: row.step,
            total_steps: row.total_steps,
            running_seconds: row.running_seconds,
            run_started_at: row.run_started_at,
        }
    }

    pub fn of_entry(e: &QueueEntry) -> Self {
        RunState {
            estimated_seconds: e
                .estimate
                .as_ref()
                .and_then(|e| e.duration_seconds)
                .unwrap_or(0.0),
            step: e.step,
            total_steps: e.total_steps,
            running_seconds: e.running_seconds,
            run_started_at: e.run_started_at,
        }
    }
}

/// Seconds a running job still needs: from its progress when it has made some, else its estimate.
pub fn remaining_seconds(r: &RunState, now: f64) -> f64 {
    let elapsed = r.running_seconds + r.run_started_at.map(|t| (now - t).max(0.0)).unwrap_or(0.0);
    match r.total_steps {
        Some(total) if r.step > 0 && total > 0 => {
            let per_step = elapsed / r.step as f64;
            per_step * (total - r.step).max(0) as f64
        }
        _ => (r.estimated_seconds - elapsed).max(0.0),
    }
}

/// A job not created yet, for the slot it would get.
#[derive(Debug, Clone, Copy)]
pub struct NewJobProbe<'a> {
    pub user_id: &'a str,
    pub seconds: f64,
}

/// Simulates the queue as the scheduler runs it: `slots` run at once; running jobs free their
/// slot when their remaining time is up; each free slot goes to the queued job the claim would
/// pick (fair share: the user with the fewest running jobs, then the user whose jobs started
/// least recently, then queue order). Returns one entry per queued job of `snapshot`, plus the
/// slot `new` would get.
pub fn simulate_queue(
    snapshot: &[QueueEntry],
    slots: usize,
    now: f64,
    new: Option<NewJobProbe<'_>>,
) -> (HashMap<String, QueueSlot>, Option<QueueSlot>) {
    struct Waiting<'a> {
        id: Option<&'a str>,
        order: i64,
        seconds: f64,
    }
    // (end time, user) of every job that runs, or will run, and has not ended yet.
    let mut runs: Vec<(f64, &str)> = Vec::new();
    let mut last_claim: HashMap<&str, f64> = HashMap::new();
    // Each user's waiting jobs in queue order.
    let mut waiting: HashMap<&str, VecDeque<Waiting<'_>>> = HashMap::new();
    let mut max_order = 0;
    let mut sorted: Vec<&QueueEntry> = snapshot.iter().collect();
    sorted.sort_by_key(|e| e.queue_order);
    for e in sorted {
        max_order = max_order.max(e.queue_order);
        if let Some(t) = e.claimed_at {
            let c = last_claim.entry(&e.user_id).or_insert(0.0);
            *c = c.max(t);
        }
        match e.status {
            JobStatus::Running => {
                runs.push((
                    now + remaining_seconds(&RunState::of_entry(e), now),
                    &e.user_id,
                ));
            }
            JobStatus::Queued => waiting.entry(&e.user_id).or_default().push_back(Waiting {
                id: Some(&e.id),
                order: e.queue_order,
                seconds: e
                    .estimate
                    .as_ref()
                    .and_then(|est| est.duration_seconds)
                    .unwrap_or(0.0),
            }),
            _ => {}
        }
    }
    if let Some(n) = new {
        waiting.entry(n.user_id).or_default().push_back(Waiting {
            id: None,
            order: max_order + 1,
            seconds: n.seconds,
        });
    }
    // Slot free times: jobs past the slot count (a smaller `cpu_slots` after a restart) still
    // finish first.
    let mut free_at: Vec<f64> = runs.iter().map(|r| r.0).collect();
    free_at.sort_by(f64::total_cmp);
    let slots = slots.max(1);
    let busy = free_at.len().saturating_sub(slots);
    let mut free_at: Vec<f64> = free_at.split_off(busy);
    while free_at.len() < slots {
        free_at.push(now);
    }
    let mut out = HashMap::new();
    let mut new_slot = None;
    let mut position = 0;
    loop {
        let (i, &t) = free_at
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &now));
        // Slots free up in time order, so a run that ended is never needed again.
        runs.retain(|r| r.0 > t);
        let running = |user: &str| runs.iter().filter(|r| r.1 == user).count();
        let Some(user) = waiting
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(u, q)| (*u, q.front().map_or(0, |w| w.order)))
            .min_by(|a, b| {
                running(a.0)
                    .cmp(&running(b.0))
                    .then(
                        last_claim
                            .get(a.0)
                            .unwrap_or(&0.0)
                            .total_cmp(last_claim.get(b.0).unwrap_or(&0.0)),
                    )
                    .then(a.1.cmp(&b.1))
            })
            .map(|(u, _)| u)
        else {
            break;
        };
        let Some(w) = waiting.get_mut(user).and_then(VecDeque::pop_front) else {
            break;
        };
        position += 1;
        let slot = QueueSlot {
            position,
            estimated_start: t,
        };
        match w.id {
            Some(id) => {
                out.insert(id.to_string(), slot);
            }
            None => new_slot = Some(slot),
        }
        free_at[i] = t + w.seconds;
        runs.push((t + w.seconds, user));
        // Strictly later than any real claim time, so ties keep their order.
        last_claim.insert(user, t.max(now) + position as f64 * 1e-6);
    }
    (out, new_slot)
}

/// What a job needs of the machine while it trains (memory) and of the disk once its
/// checkpoints are written.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Footprint {
    /// Peak memory of the worker: weights, gradients and AdamW moments of what trains, and the
    /// activations of one micro-batch.
    pub memory_bytes: u64,
    /// Files of one checkpoint without the optimizer state.
    pub checkpoint_bytes: u64,
    /// The AdamW moments of the latest checkpoint.
    pub optimizer_bytes: u64,
    /// Every checkpoint the job keeps, with the optimizer state of the latest one (and of the one
    /// before while the next is written).
    pub disk_bytes: u64,
}

/// Parameters of the LoRA matrices: `r × (in + out)` per adapted projection and layer.
pub fn lora_parameters(cfg: &QwenConfig, lora: &LoraSpec) -> u64 {
    let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let per_layer: usize = lora
        .target_modules
        .iter()
        .map(|t| match t.as_str() {
            "q_proj" => c + q,
            "k_proj" | "v_proj" => c + kv,
            "o_proj" => q + c,
            "gate_proj" | "up_proj" | "down_proj" => c + i,
            _ => 0,
        })
        .sum();
    (per_layer * lora.rank.max(0) as usize * cfg.num_layers) as u64
}

/// Estimates [`Footprint`] (f32 everywhere, as the CPU engine trains). Deliberately simple: it
/// decides only whether a job can fit at all, so it errs small on activations.
pub fn footprint(
    cfg: &QwenConfig,
    spec: &JobSpec,
    total_steps: i64,
    tokenizer_bytes: u64,
) -> Footprint {
    const F32: u64 = 4;
    let params = cfg.num_parameters() as u64;
    let (trained, weights_in_checkpoint) = match (&spec.tuna.lora, spec.tuna.method) {
        (Some(l), Tuning::Lora) => {
            let n = lora_parameters(cfg, l);
            (n, n * F32)
        }
        _ => (params, params * F32 + tokenizer_bytes),
    };
    // Weights, plus gradient and two moments of every trained parameter.
    let state = params * F32 + trained * 3 * F32;
    let hp = spec.hyperparameters();
    let micro = (1..=hp.batch_size.clamp(1, 4))
        .rev()
        .find(|m| hp.batch_size % m == 0)
        .unwrap_or(1) as u64;
    let tokens = micro * spec.tuna.max_seq_len.max(1) as u64;
    let (c, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    // Kept for backward per token and layer: norms, projections, attention output, SwiGLU.
    let per_token_layer = (12 * c + 3 * i) * F32;
    let activations = tokens * per_token_layer * cfg.num_layers as u64;
    let memory_bytes = state + activations + (256 << 20);
    let optimizer_bytes = trained * 2 * F32;
    let checkpoints = match spec.tuna.checkpoint_interval {
        Some(k) if k > 0 => (total_steps.max(1) + k - 1) / k,
        _ => hp.n_epochs.max(1),
    };
    let kept = spec
        .tuna
        .keep_checkpoints
        .map_or(checkpoints, |k| k.min(checkpoints))
        .max(1) as u64;
    Footprint {
        memory_bytes,
        checkpoint_bytes: weights_in_checkpoint,
        optimizer_bytes,
        disk_bytes: kept * weights_in_checkpoint + 2 * optimizer_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(seconds: f64) -> Option<Estimate> {
        let hp = Hyperparameters {
            n_epochs: 1,
            batch_size: 1,
            learning_rate_multiplier: 1.0,
        };
        let size = DatasetSize {
            examples: 1,
            tokens_per_epoch: 100,
            trained_tokens_per_epoch: 50,
            longest: 100,
            max_seq_len: 2048,
        };
        let tps = ThroughputRow {
            shape: "s".into(),
            device: "cpu".into(),
            method: "lora".into(),
            tokens_per_second: 100.0 / seconds,
            samples: 0,
            source: "seed".into(),
            updated_at: 0,
        };
        Some(make_estimate(
            &size,
            &hp,
            None,
            Some(&tps),
            0.0,
            "USD",
            "cpu",
        ))
    }

    fn entry(id: &str, status: &str, seconds: f64) -> QueueEntry {
        user_entry(id, "u", status, seconds)
    }

    fn user_entry(id: &str, user: &str, status: &str, seconds: f64) -> QueueEntry {
        let running = status == "running";
        QueueEntry {
            id: id.into(),
            user_id: user.into(),
            status: if running {
                JobStatus::Running
            } else {
                JobStatus::Queued
            },
            queue_order: id.bytes().map(i64::from).sum(),
            estimate: est(seconds),
            step: 0,
            total_steps: None,
            running_seconds: 0.0,
            run_started_at: running.then_some(1000.0),
            claimed_at: running.then_some(1000.0),
            compute: Default::default(),
        }
    }

    fn probe(seconds: f64) -> Option<NewJobProbe<'static>> {
        Some(NewJobProbe {
            user_id: "u",
            seconds,
        })
    }

    #[test]
    fn one_slot_queue_adds_up_durations() {
        // now = 1000: a running job with 60 s left, then queued jobs of 30 s and 10 s.
        let snap = [
            entry("r", "running", 60.0),
            entry("a", "queued", 30.0),
            entry("b", "queued", 10.0),
        ];
        let (q, next) = simulate_queue(&snap, 1, 1000.0, probe(5.0));
        let next = next.unwrap();
        assert_eq!(
            q["a"],
            QueueSlot {
                position: 1,
                estimated_start: 1060.0
            }
        );
        assert_eq!(
            q["b"],
            QueueSlot {
                position: 2,
                estimated_start: 1090.0
            }
        );
        assert_eq!(
            next,
            QueueSlot {
                position: 3,
                estimated_start: 1100.0
            }
        );
    }

    #[test]
    fn two_slots_start_on_the_earliest_free_one() {
        let snap = [
            entry("r", "running", 60.0),
            entry("a", "queued", 30.0),
            entry("b", "queued", 10.0),
        ];
        let (q, next) = simulate_queue(&snap, 2, 1000.0, probe(5.0));
        let next = next.unwrap();
        assert_eq!(q["a"].estimated_start, 1000.0); // the free slot
        assert_eq!(q["b"].estimated_start, 1030.0); // after a, before r ends
        assert_eq!(next.estimated_start, 1040.0);
    }

    #[test]
    fn progress_beats_the_estimate_for_running_jobs() {
        let mut e = entry("r", "running", 1000.0);
        e.step = 10;
        e.total_steps = Some(40);
        // 10 steps took 20 s: 30 steps left take 60 s.
        assert!((remaining_seconds(&RunState::of_entry(&e), 1020.0) - 60.0).abs() < 1e-9);
    }

    #[test]
    fn a_second_user_starts_next_whatever_the_first_has_queued() {
        // User a runs one job and has 50 waiting; b queues one job after all of them.
        let mut snap = vec![user_entry("a0", "a", "running", 10.0)];
        for i in 1..=50 {
            let mut e = user_entry(&format!("a{i}"), "a", "queued", 10.0);
            e.queue_order = i;
            snap.push(e);
        }
        let mut b = user_entry("b1", "b", "queued", 10.0);
        b.queue_order = 100;
        snap.push(b);
        let (q, _) = simulate_queue(&snap, 1, 1000.0, None);
        assert_eq!(q["b1"].position, 1);
        assert_eq!(q["b1"].estimated_start, 1010.0);
        assert_eq!(q["a1"].position, 2);
        // A new job of b's waits behind a's next one: the users alternate.
        let (_, next) = simulate_queue(
            &snap,
            1,
            1000.0,
            Some(NewJobProbe {
                user_id: "b",
                seconds: 1.0,
            }),
        );
        assert_eq!(next.unwrap().position, 3);
    }

    #[test]
    fn footprint_full_needs_weights_gradients_and_moments() {
        let cfg = tuna_model::demo::demo_config();
        let spec = |method: Tuning, lora: Option<LoraSpec>| JobSpec {
            method: crate::spec::MethodSpec::Supervised {
                supervised: crate::spec::SupervisedSpec {
                    hyperparameters: Hyperparameters {
                        n_epochs: 1,
                        batch_size: 1,
                        learning_rate_multiplier: 1.0,
                    },
                },
            },
            tuna: crate::spec::TunaSettings {
                name: None,
                method,
                lora,
                max_seq_len: 64,
                checkpoint_interval: Some(1),
                eval_interval: None,
                max_steps: Some(10),
                learning_rate: 1e-4,
                warmup_ratio: 0.0,
                validation_fraction: None,
                sample_prompts: 0,
                sample_max_tokens: 1,
                keep_checkpoints: Some(2),
                precision: Default::default(),
                compute: Default::default(),
            },
        };
        let n = cfg.num_parameters() as u64;
        let full = footprint(&cfg, &spec(Tuning::Full, None), 10, 0);
        assert!(full.memory_bytes >= 16 * n);
        assert_eq!(full.checkpoint_bytes, 4 * n);
        assert_eq!(
            full.disk_bytes,
            2 * 4 * n + 2 * 8 * n,
            "two kept, two optimizer states"
        );
        let lora = LoraSpec {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into()],
        };
        let l = footprint(&cfg, &spec(Tuning::Lora, Some(lora.clone())), 10, 0);
        let adapter = lora_parameters(&cfg, &lora);
        assert_eq!(adapter, (4 * (128 + 128) * cfg.num_layers) as u64);
        assert_eq!(l.checkpoint_bytes, 4 * adapter);
        assert!(l.memory_bytes < full.memory_bytes);
    }

    #[test]
    fn estimate_scales_with_epochs_and_max_steps() {
        let size = DatasetSize {
            examples: 10,
            tokens_per_epoch: 1000,
            trained_tokens_per_epoch: 400,
            longest: 120,
            max_seq_len: 2048,
        };
        let hp = Hyperparameters {
            n_epochs: 3,
            batch_size: 2,
            learning_rate_multiplier: 1.0,
        };
        let tps = ThroughputRow {
            shape: "s".into(),
            device: "cpu".into(),
            method: "lora".into(),
            tokens_per_second: 50.0,
            samples: 0,
            source: "seed".into(),
            updated_at: 0,
        };
        let e = make_estimate(&size, &hp, None, Some(&tps), 2.0, "USD", "cpu");
        assert_eq!(e.total_steps, 15);
        assert_eq!(e.total_tokens, 3000);
        assert!((e.duration_seconds.unwrap() - 60.0).abs() < 1e-9);
        assert!((e.cost - 0.006).abs() < 1e-12);
        // No speed measured on the device: tokens and cost, but no duration and no guess.
        let e = make_estimate(&size, &hp, None, None, 2.0, "USD", "gpu");
        assert_eq!(
            (e.total_tokens, e.duration_seconds, e.tokens_per_second),
            (3000, None, None)
        );
        assert_eq!(e.throughput_source, "none");
        assert!((e.cost - 0.006).abs() < 1e-12);
        let e = make_estimate(&size, &hp, Some(5), Some(&tps), 2.0, "USD", "cpu");
        assert_eq!(e.total_steps, 5);
        assert_eq!(e.total_tokens, 1000);
    }

    #[test]
    fn measurements_replace_the_seed_then_average() {
        let seed = ThroughputRow {
            shape: "s".into(),
            device: "cpu".into(),
            method: "lora".into(),
            tokens_per_second: 999.0,
            samples: 0,
            source: "seed".into(),
            updated_at: 0,
        };
        let a = fold_measurement(Some(&seed), "s", "cpu", "lora", 100.0, 1);
        assert_eq!(
            (a.tokens_per_second, a.samples, a.source.as_str()),
            (100.0, 1, "measured")
        );
        let b = fold_measurement(Some(&a), "s", "cpu", "lora", 200.0, 2);
        assert_eq!((b.tokens_per_second, b.samples), (150.0, 2));
    }

    #[test]
    fn seed_speed_follows_the_parameter_count() {
        let cfg = tuna_model::demo::demo_config();
        let lora = seed_tokens_per_second(&cfg, "lora", 100.0);
        let full = seed_tokens_per_second(&cfg, "full", 100.0);
        assert!((lora / full - 1.5).abs() < 1e-9, "full costs 6N, LoRA 4N");
        let n = cfg.num_parameters() as f64;
        assert!((lora - 100e9 / (4.0 * n)).abs() / lora < 1e-9);
        let dpo = seed_tokens_per_second(&cfg, "lora+dpo", 100.0);
        assert!(
            (lora / dpo - 1.5).abs() < 1e-9,
            "DPO adds the reference pass, 2N"
        );
    }
}
