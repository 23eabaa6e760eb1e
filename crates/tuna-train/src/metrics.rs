//! What a run reports: one flat [`StepMetrics`] per optimizer step, [`EvalMetrics`] per validation
//! pass, [`CheckpointInfo`] per checkpoint, through a [`TrainObserver`] and as JSON lines in
//! `out_dir/metrics.jsonl` (the file the server and the console read).
//!
//! Every line carries a `"type"`: `"train"`, `"eval"` or `"checkpoint"`. One schema for every
//! objective: DPO runs add the [`PreferenceMetrics`] fields, named as TRL logs them
//! (`rewards/chosen`, ...), to their train and eval lines.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One optimizer step (torchtune's flat log dict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based: the number of optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// Epochs done, fractional (1.5 = half-way through the second epoch).
    pub epoch: f32,
    /// Mean cross-entropy over the trained tokens of this step (all its micro-batches); for DPO
    /// the mean DPO loss over the step's pairs.
    pub loss: f64,
    /// Share of trained tokens whose argmax prediction was right (DPO: tokens of both answers).
    pub token_accuracy: f64,
    /// Learning rate this step used.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens the model ran over (prompt and answer), per second of this step.
    pub tokens_per_sec: f64,
    /// Tokens the model ran over in this step.
    pub tokens: usize,
    /// Tokens that carried a label in this step (the loss's denominator).
    pub trained_tokens: usize,
    /// Seconds since this process started training (resumed runs restart the clock).
    pub elapsed_s: f64,
    /// Estimated seconds to the last step, from the mean step time of this process.
    pub eta_s: f64,
    /// DPO only: means over the step's pairs.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
}

/// DPO's view of a batch of pairs, means over its pairs, under TRL's names. A pair's reward is
/// `β · (log π(y|x) − log π_ref(y|x))`, the log-probabilities summed over the answer's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// Reward of the preferred answer.
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    /// Reward of the non-preferred answer.
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Share of pairs whose preferred answer has the larger reward (a tie counts as wrong).
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// Preferred minus non-preferred reward.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Log-probability of the preferred answer under the trained model (summed over its tokens).
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    /// Log-probability of the non-preferred answer.
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    /// Pairs in the batch (or validation set).
    pub pairs: usize,
}

/// One pass over the validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: usize,
    pub epoch: f32,
    /// Mean cross-entropy over the trained tokens of every validation example; for DPO the mean
    /// DPO loss over the validation pairs.
    pub loss: f64,
    /// `exp` of the mean cross-entropy per trained token (DPO: of the preferred answers).
    pub perplexity: f64,
    pub token_accuracy: f64,
    pub trained_tokens: usize,
    pub examples: usize,
    pub elapsed_s: f64,
    /// DPO only: means over the validation pairs.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
}

/// A held-out conversation answered by the model at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt: the conversation before its last assistant message.
    pub messages: Vec<tuna_data::Message>,
    /// The dataset's answer (the preferred output of a preference pair).
    pub reference: String,
    /// The non-preferred output of a preference pair, shown beside the two others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_preferred: Option<String>,
    /// The model's greedy answer with the checkpoint's weights.
    pub generated: String,
    /// False when the conversation is a training example (no validation set).
    pub held_out: bool,
}

/// A checkpoint that was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub step: usize,
    pub epoch: f32,
    /// `out_dir/checkpoint-<step>`.
    pub path: PathBuf,
    /// The last training loss before the checkpoint.
    pub train_loss: Option<f64>,
    /// The validation loss at this step, when one was computed.
    pub eval_loss: Option<f64>,
    pub samples: Vec<Sample>,
    /// The checkpoint at the end of training (or of a stopped run).
    pub is_final: bool,
}

/// Receives progress while [`crate::Trainer::run`] works. All methods have empty defaults.
pub trait TrainObserver {
    /// After every optimizer step. `Break` stops the run now: a checkpoint with the full resume
    /// state is written first, then `run` returns with `stopped: true`.
    fn on_step(&mut self, metrics: &StepMetrics) -> ControlFlow<()> {
        let _ = metrics;
        ControlFlow::Continue(())
    }
    /// After every validation pass.
    fn on_eval(&mut self, metrics: &EvalMetrics) {
        let _ = metrics;
    }
    /// After every checkpoint is complete on disk.
    fn on_checkpoint(&mut self, info: &CheckpointInfo) {
        let _ = info;
    }
}

/// An observer that ignores everything.
impl TrainObserver for () {}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Train(&'a StepMetrics),
    Eval(&'a EvalMetrics),
    Checkpoint {
        step: usize,
        epoch: f32,
        path: &'a Path,
        eval_loss: Option<f64>,
        is_final: bool,
    },
}

/// Appends JSON lines to `metrics.jsonl`, flushed after every line so readers see them at once.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` for appending. On resume from step `keep_until`, lines of later steps (written
    /// by the interrupted run after its last checkpoint) are dropped first, so the file reads as one run.
    pub fn open(path: &Path, keep_until: Option<usize>) -> Result<Self> {
        if let Some(step) = keep_until
            && path.exists()
        {
            let reader = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
            let mut kept = String::new();
            for line in reader.lines() {
                let line = line.map_err(|e| Error::io(path, e))?;
                let line_step = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
                if line_step.is_some_and(|s| s as usize <= step) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            std::fs::write(path, kept).map_err(|e| Error::io(path, e))?;
        } else if keep_until.is_none() && path.exists() {
            // A fresh run into an existing directory starts a fresh file.
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn step(&mut self, m: &StepMetrics) -> Result<()> {
        self.write(&Line::Train(m))
    }

    pub fn eval(&mut self, m: &EvalMetrics) -> Result<()> {
        self.write(&Line::Eval(m))
    }

    pub fn checkpoint(&mut self, c: &CheckpointInfo) -> Result<()> {
        self.write(&Line::Checkpoint {
            step: c.step,
            epoch: c.epoch,
            path: &c.path,
            eval_loss: c.eval_loss,
            is_final: c.is_final,
        })
    }

    fn write(&mut self, line: &Line<'_>) -> Result<()> {
        let mut text = serde_json::to_string(line).map_err(|source| Error::Json {
            path: self.path.clone(),
            source,
        })?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize) -> StepMetrics {
        StepMetrics {
            step,
            total_steps: 4,
            epoch: step as f32 / 4.0,
            loss: 1.5,
            token_accuracy: 0.25,
            lr: 1e-4,
            grad_norm: 0.5,
            tokens_per_sec: 100.0,
            tokens: 10,
            trained_tokens: 5,
            elapsed_s: 1.0,
            eta_s: 3.0,
            preference: None,
        }
    }

    #[test]
    fn lines_are_typed_and_resume_drops_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&path, None).unwrap();
        for s in 1..=3 {
            w.step(&step(s)).unwrap();
        }
        let eval = EvalMetrics {
            step: 2,
            epoch: 0.5,
            loss: 1.0,
            perplexity: 1f64.exp(),
            token_accuracy: 0.5,
            trained_tokens: 8,
            examples: 2,
            elapsed_s: 0.1,
            preference: None,
        };
        w.eval(&eval).unwrap();
        drop(w);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["type"], "train");
        assert_eq!(first["step"], 1);
        assert_eq!(first["trained_tokens"], 5);
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["type"], "eval");

        // Resuming from step 2 keeps steps 1, 2 and the eval at 2, and drops step 3.
        let mut w = MetricsWriter::open(&path, Some(2)).unwrap();
        w.step(&step(3)).unwrap();
        let steps: Vec<(String, u64)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["type"].as_str().unwrap().to_owned(),
                    v["step"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = [("train", 1), ("train", 2), ("eval", 2), ("train", 3)];
        assert_eq!(steps, want.map(|(t, s)| (t.to_owned(), s)));
    }
}
