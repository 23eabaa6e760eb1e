//! Estimates before a job starts: tokens from the dataset check, duration from the throughput
//! table (tokens per second of a model shape, method and device kind), cost from the configured
//! price; and the queue simulation that gives each queued job its position and expected start.

use std::collections::HashMap;

use tuna_model::QwenConfig;

use crate::checker::DatasetSize;
use crate::openai::types::{Estimate, Hyperparameters};
use crate::store::{QueueEntry, Store, StoreResult, ThroughputRow};

/// Training speed on a CPU from the parameter count, before any job of the shape has finished.
///
/// A token costs about 2·N FLOPs forward (N = parameters of the matmuls, the LM head included)
/// and 2·N backward through the activations; full fine-tuning adds 2·N for the weight gradients
/// (the usual 6·N rule), LoRA does not (frozen weights get no gradient).
pub fn seed_tokens_per_second(cfg: &QwenConfig, method: &str, gflops: f64) -> f64 {
    let embed = cfg.vocab_size * cfg.hidden_size;
    // Embedding lookups are free; the LM head is one (tied or not) vocab × hidden matmul.
    let matmul_params =
        (cfg.num_parameters() - if cfg.tie_word_embeddings { 0 } else { embed }) as f64;
    let flops_per_token = if method == "full" { 6.0 } else { 4.0 } * matmul_params;
    (gflops * 1e9 / flops_per_token).max(1e-3)
}

/// The device kind of a slot name (`cpu:0` → `cpu`).
pub fn device_kind(device: &str) -> &str {
    device.split(':').next().unwrap_or(device)
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
pub fn make_estimate(
    size: &DatasetSize,
    hp: &Hyperparameters,
    max_steps: Option<i64>,
    tps: &ThroughputRow,
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
    let duration = total_tokens as f64 / tps.tokens_per_second.max(1e-9);
    Estimate {
        examples: size.examples,
        tokens_per_epoch: size.tokens_per_epoch,
        trained_tokens_per_epoch: size.trained_tokens_per_epoch,
        n_epochs: hp.n_epochs,
        batch_size: hp.batch_size,
        total_steps: steps,
        total_tokens,
        tokens_per_second: tps.tokens_per_second,
        throughput_source: tps.source.clone(),
        duration_seconds: duration,
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

/// Seconds a running job still needs: from its progress when it has made some, else its estimate.
pub fn remaining_seconds(e: &QueueEntry, now: f64) -> f64 {
    let estimated = e
        .estimate
        .as_deref()
        .and_then(|s| serde_json::from_str::<Estimate>(s).ok())
        .map(|est| est.duration_seconds)
        .unwrap_or(0.0);
    let elapsed = e.running_seconds + e.run_started_at.map(|t| (now - t).max(0.0)).unwrap_or(0.0);
    match e.total_steps {
        Some(total) if e.step > 0 && total > 0 => {
            let per_step = elapsed / e.step as f64;
            per_step * (total - e.step).max(0) as f64
        }
        _ => (estimated - elapsed).max(0.0),
    }
}

/// Simulates the queue: `slots` run at once, running jobs free their slot when their remaining
/// time is up, queued jobs take the earliest free slot in queue order. Returns one entry per
/// queued job of `snapshot`, plus the slot a new job would get (`None` key).
pub fn simulate_queue(
    snapshot: &[QueueEntry],
    slots: usize,
    now: f64,
    new_job_seconds: f64,
) -> (HashMap<String, QueueSlot>, QueueSlot) {
    let mut free_at: Vec<f64> = snapshot
        .iter()
        .filter(|e| e.status == "running")
        .map(|e| now + remaining_seconds(e, now))
        .collect();
    // Jobs past the slot count (a smaller `cpu_slots` after a restart) still finish first.
    free_at.sort_by(f64::total_cmp);
    while free_at.len() < slots.max(1) {
        free_at.push(now);
    }
    let mut out = HashMap::new();
    let mut position = 0;
    let take = |free_at: &mut Vec<f64>, seconds: f64| {
        // The earliest free slot starts the next job.
        let (i, &start) = free_at
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &now));
        free_at[i] = start + seconds;
        start
    };
    for e in snapshot.iter().filter(|e| e.status == "queued") {
        position += 1;
        let seconds = e
            .estimate
            .as_deref()
            .and_then(|s| serde_json::from_str::<Estimate>(s).ok())
            .map(|est| est.duration_seconds)
            .unwrap_or(0.0);
        let start = take(&mut free_at, seconds);
        out.insert(
            e.id.clone(),
            QueueSlot {
                position,
                estimated_start: start,
            },
        );
    }
    let start = take(&mut free_at, new_job_seconds);
    (
        out,
        QueueSlot {
            position: position + 1,
            estimated_start: start,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(seconds: f64) -> Option<String> {
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
        Some(
            serde_json::to_string(&make_estimate(&size, &hp, None, &tps, 0.0, "USD", "cpu"))
                .unwrap(),
        )
    }

    fn entry(id: &str, status: &str, seconds: f64) -> QueueEntry {
        QueueEntry {
            id: id.into(),
            status: status.into(),
            queue_order: 0,
            estimate: est(seconds),
            step: 0,
            total_steps: None,
            running_seconds: 0.0,
            run_started_at: if status == "running" {
                Some(1000.0)
            } else {
                None
            },
        }
    }

    #[test]
    fn one_slot_queue_adds_up_durations() {
        // now = 1000: a running job with 60 s left, then queued jobs of 30 s and 10 s.
        let snap = [
            entry("r", "running", 60.0),
            entry("a", "queued", 30.0),
            entry("b", "queued", 10.0),
        ];
        let (q, next) = simulate_queue(&snap, 1, 1000.0, 5.0);
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
        let (q, next) = simulate_queue(&snap, 2, 1000.0, 5.0);
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
        assert!((remaining_seconds(&e, 1020.0) - 60.0).abs() < 1e-9);
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
        let e = make_estimate(&size, &hp, None, &tps, 2.0, "USD", "cpu");
        assert_eq!(e.total_steps, 15);
        assert_eq!(e.total_tokens, 3000);
        assert!((e.duration_seconds - 60.0).abs() < 1e-9);
        assert!((e.cost - 0.006).abs() < 1e-12);
        let e = make_estimate(&size, &hp, Some(5), &tps, 2.0, "USD", "cpu");
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
    }
}
