//! Planning: what a validated request resolves to (its `JobSpec` with `auto` settled from the
//! dataset, its estimate and footprint), shared by job creation and `POST /v1/tuna/estimates`,
//! so the estimate route answers exactly what creation would.

use std::collections::BTreeMap;

use tuna_model::QwenConfig;
use tuna_train::{Method, Objective, default_learning_rate};

use crate::checker::{DatasetSize, check_dataset, dataset_size};
use crate::compute::{self, Offer};
use crate::error::{ApiError, ApiResult};
use crate::estimate::{self, Footprint};
use crate::models::{Weights, model_shape, resolve_weights};
use crate::openai::types::Estimate;
use crate::spec::{Compute, JobSpec, LoraSpec, MethodSpec, Tuning};
use crate::state::AppState;
use crate::store::{FileRow, Store, User};
use crate::validate::ValidJobRequest;
use crate::validate::settings::LORA_TARGETS;

pub struct Plan {
    /// What the job trains from (its `model`: a base model or a fine-tuned one).
    pub weights: Weights,
    pub spec: JobSpec,
    pub size: DatasetSize,
    /// The estimate on the job's compute choice (`spec.tuna.compute`).
    pub estimate: Estimate,
    pub footprint: Footprint,
    /// The model's shape, as the throughput table names it.
    pub shape: String,
    pub cfg: QwenConfig,
    /// What the cluster offers now, by kind.
    pub offers: BTreeMap<Compute, Offer>,
}

impl Plan {
    /// The job's estimate if it ran on `compute` (no duration when no speed is known there).
    pub async fn estimate_on(&self, state: &AppState, compute: Compute) -> ApiResult<Estimate> {
        let method = self.spec.throughput_method();
        let offer = self.offers.get(&compute);
        let tps = compute::speed(state, compute, offer, &self.shape, &method, &self.cfg).await?;
        let device = tps
            .as_ref()
            .map_or_else(|| compute.as_str().to_string(), |t| t.device.clone());
        Ok(estimate::make_estimate(
            &self.size,
            self.spec.hyperparameters(),
            self.spec.tuna.max_steps,
            tps.as_ref(),
            state.settings.price_per_million_tokens,
            &state.settings.currency,
            &device,
        ))
    }
}

async fn usable_file(
    store: &dyn Store,
    user: &User,
    id: &str,
    param: &'static str,
) -> ApiResult<FileRow> {
    let file = store
        .get_file(&user.id, id)
        .await?
        .ok_or_else(|| ApiError::file_not_found(id, Some(param)))?;
    let code = if param == "training_file" {
        "invalid_training_file"
    } else {
        "invalid_validation_file"
    };
    if file.purpose != "fine-tune" {
        return Err(ApiError::invalid_coded(
            format!(
                "file `{id}` has purpose `{}`, not `fine-tune`",
                file.purpose
            ),
            Some(param),
            code,
        ));
    }
    if file.status != "processed" {
        let why = file
            .status_details
            .clone()
            .unwrap_or_else(|| "the dataset check did not pass".into());
        return Err(ApiError::invalid_coded(
            format!(
                "file `{id}` cannot be trained on: {why}; see the file's `check` for every problem"
            ),
            Some(param),
            code,
        ));
    }
    Ok(file)
}

/// The data format a method trains on: chat conversations for `supervised`, preference pairs
/// for `dpo`.
fn format_for(method_type: &str) -> tuna_data::check::DataFormat {
    use tuna_data::check::DataFormat;
    if method_type == "dpo" {
        DataFormat::Preference
    } else {
        DataFormat::Chat
    }
}

/// A 400 when the file's checked format (its report's `stats.format`; reports from before
/// preference files existed are chat) is not what `method_type` trains on.
fn fits_method(file: &FileRow, method_type: &str, param: &'static str) -> ApiResult<()> {
    use tuna_data::check::DataFormat;
    let format = file
        .check_report
        .as_deref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|r| r.pointer("/stats/format").cloned())
        .and_then(|f| serde_json::from_value::<DataFormat>(f).ok())
        .unwrap_or(DataFormat::Chat);
    let wanted = format_for(method_type);
    if format == wanted {
        return Ok(());
    }
    let message = match wanted {
        DataFormat::Preference => format!(
            "file `{}` holds chat conversations (`{{\"messages\": [...]}}` lines), but `method.type` `dpo` trains on preference pairs: one `{{\"input\": {{\"messages\": [...]}}, \"preferred_output\": [...], \"non_preferred_output\": [...]}}` per line; upload a preference file, or use `method.type` `supervised`",
            file.id
        ),
        DataFormat::Chat => format!(
            "file `{}` holds preference pairs, but `method.type` `{method_type}` trains on chat conversations (`{{\"messages\": [...]}}` lines); use `method.type` `dpo` for preference pairs",
            file.id
        ),
    };
    let code = if param == "training_file" {
        "invalid_training_file"
    } else {
        "invalid_validation_file"
    };
    Err(ApiError::invalid_coded(message, Some(param), code))
}

/// The LoRA settings of a PEFT adapter directory (a LoRA checkpoint a job trains on from).
fn adapter_settings(dir: &std::path::Path) -> ApiResult<LoraSpec> {
    let path = dir.join("adapter_config.json");
    let file: tuna_model::lora::PeftConfigFile = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    let names: Vec<String> = match &file.target_modules {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|t| t.as_str())
            .filter_map(|t| LORA_TARGETS.iter().find(|&&n| t.ends_with(n)))
            .map(|n| n.to_string())
            .collect(),
        _ => LORA_TARGETS.iter().map(|n| n.to_string()).collect(),
    };
    Ok(LoraSpec {
        rank: file.r as i64,
        alpha: file.lora_alpha as f64,
        dropout: file.lora_dropout as f64,
        target_modules: names,
    })
}

/// Resolves the request against the model and the dataset, estimates it, and checks that the
/// machine can train it (admission control).
pub async fn plan_job(state: &AppState, user: &User, v: &ValidJobRequest) -> ApiResult<Plan> {
    let store = &*state.store;
    let weights = resolve_weights(store, &user.id, v.model())
        .await?
        .ok_or_else(|| ApiError::model_not_found(v.model()))?
        .localize(
            &*state.blobs,
            &state.settings.cache_root(),
            &state.settings.demo_model_root,
            false,
        )
        .await?;
    if weights.adapter_dir.is_some() && v.tuning() == "full" {
        return Err(ApiError::invalid(
            format!(
                "`{}` is a LoRA fine-tuned model: train it further with `tuna.method` `lora` (the job continues its adapter), or fine-tune its base model `{}` fully",
                v.model(),
                weights.base.name
            ),
            "tuna.method",
        ));
    }
    let dir = weights.model_dir.clone();
    let cfg = tokio::task::spawn_blocking(move || QwenConfig::from_model_dir(&dir))
        .await?
        .map_err(ApiError::internal)?;
    let train = usable_file(store, user, v.training_file(), "training_file").await?;
    fits_method(&train, v.method_type(), "training_file")?;
    if let Some(val) = v.validation_file() {
        let file = usable_file(store, user, val, "validation_file").await?;
        fits_method(&file, v.method_type(), "validation_file")?;
    }
    let max_seq_len = v.max_seq_len().min(cfg.max_position_embeddings as i64);
    let report: serde_json::Value = train
        .check_report
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut size = dataset_size(&report)
        .ok_or_else(|| ApiError::internal(format!("file {} has no token statistics", train.id)))?;
    // The upload check counted with its own sequence length: count again if this job cuts
    // examples differently.
    if size.max_seq_len != max_seq_len && size.longest > max_seq_len.min(size.max_seq_len) {
        let path = state.blobs.local_path(&train.blob_key).await?;
        let inference = state.inference.clone();
        let model_dir = weights.model_dir.clone();
        let max = max_seq_len as usize;
        let report = tokio::task::spawn_blocking(move || {
            let tok = inference.tokenizer(&model_dir).map_err(|e| e.to_string())?;
            check_dataset(&path, &tok, max).map_err(|e| e.to_string())
        })
        .await?
        .map_err(ApiError::Internal)?;
        let json = serde_json::to_value(&report).map_err(ApiError::internal)?;
        size = dataset_size(&json)
            .ok_or_else(|| ApiError::internal("the re-check has no token statistics"))?;
    }
    let mut spec = v.resolve(size.examples, cfg.max_position_embeddings as i64)?;
    if v.learning_rate_auto() {
        // The learning rate a multiplier of 1 stands for: the model's own recommendation
        // (tuna_defaults.json), else the generic default.
        let method = match spec.tuna.method {
            Tuning::Full => Method::Full,
            Tuning::Lora => Method::Lora,
        };
        let dir = weights.model_dir.clone();
        let objective = match spec.method {
            MethodSpec::Supervised { .. } => Objective::Sft,
            MethodSpec::Dpo { .. } => Objective::Dpo,
        };
        let base =
            tokio::task::spawn_blocking(move || default_learning_rate(&dir, method, objective))
                .await?
                .map_err(ApiError::internal)?;
        spec.tuna.learning_rate = spec.hyperparameters().learning_rate_multiplier * f64::from(base);
    }
    if let Some(dir) = &weights.adapter_dir {
        // The run trains the adapter on: the job records its settings, not the request's.
        spec.tuna.lora = Some(adapter_settings(dir)?);
    }
    let offers = compute::offers(state).await?;
    let dpo = matches!(spec.method, MethodSpec::Dpo { .. });
    if let Some(why) = compute::unavailable(spec.tuna.compute, &offers, dpo) {
        return Err(ApiError::invalid_coded(
            format!("`tuna.compute` `{}`: {why}", spec.tuna.compute.as_str()),
            Some("tuna.compute"),
            "compute_unavailable",
        ));
    }
    let mut plan = Plan {
        shape: model_shape(&cfg),
        cfg,
        offers,
        weights,
        spec,
        size,
        // Replaced just below, once the plan can estimate itself.
        estimate: Estimate::default(),
        footprint: Footprint::default(),
    };
    plan.estimate = plan.estimate_on(state, plan.spec.tuna.compute).await?;
    let tokenizer_bytes = ["tokenizer.json", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(plan.weights.model_dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    plan.footprint = estimate::footprint(
        &plan.cfg,
        &plan.spec,
        plan.estimate.total_steps,
        tokenizer_bytes,
    );
    crate::quota::check_machine(&state.settings, &plan.footprint)?;
    Ok(plan)
}
