//! Planning: what a validated request resolves to (its `JobSpec` with `auto` settled from the
//! dataset, its estimate and footprint), shared by job creation and `POST /v1/tuna/estimates`,
//! so the estimate route answers exactly what creation would.

use tuna_model::QwenConfig;
use tuna_train::{Method, Objective, default_learning_rate};

use crate::checker::{DatasetSize, check_dataset, dataset_size};
use crate::error::{ApiError, ApiResult};
use crate::estimate::{self, Footprint};
use crate::models::model_shape;
use crate::openai::types::Estimate;
use crate::spec::{JobSpec, Tuning};
use crate::state::AppState;
use crate::store::{FileRow, ModelRow, Store, User};
use crate::validate::ValidJobRequest;

pub struct Plan {
    pub model: ModelRow,
    pub spec: JobSpec,
    pub size: DatasetSize,
    pub estimate: Estimate,
    pub footprint: Footprint,
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

/// Resolves the request against the model and the dataset, estimates it, and checks that the
/// machine can train it (admission control).
pub async fn plan_job(state: &AppState, user: &User, v: &ValidJobRequest) -> ApiResult<Plan> {
    let store = &*state.store;
    let model = store
        .get_model(v.model())
        .await?
        .ok_or_else(|| ApiError::model_not_found(v.model()))?;
    let dir = std::path::PathBuf::from(&model.path);
    let cfg = tokio::task::spawn_blocking(move || QwenConfig::from_model_dir(&dir))
        .await?
        .map_err(ApiError::internal)?;
    let train = usable_file(store, user, v.training_file(), "training_file").await?;
    if let Some(val) = v.validation_file() {
        usable_file(store, user, val, "validation_file").await?;
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
        let model_dir = std::path::PathBuf::from(&model.path);
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
        let dir = std::path::PathBuf::from(&model.path);
        let base = tokio::task::spawn_blocking(move || {
            default_learning_rate(&dir, method, Objective::Sft)
        })
        .await?
        .map_err(ApiError::internal)?;
        spec.tuna.learning_rate = spec.hyperparameters().learning_rate_multiplier * f64::from(base);
    }
    let device = "cpu";
    let method = spec.tuna.method.as_str();
    let tps = estimate::throughput(
        store,
        &model_shape(&cfg),
        device,
        method,
        &cfg,
        state.settings.cpu_gflops,
    )
    .await?;
    let estimate = estimate::make_estimate(
        &size,
        spec.hyperparameters(),
        spec.tuna.max_steps,
        &tps,
        state.settings.price_per_million_tokens,
        &state.settings.currency,
        device,
    );
    let tokenizer_bytes = ["tokenizer.json", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(std::path::Path::new(&model.path).join(f)).ok())
        .map(|m| m.len())
        .sum();
    let footprint = estimate::footprint(&cfg, &spec, estimate.total_steps, tokenizer_bytes);
    crate::quota::check_machine(&state.settings, &footprint)?;
    Ok(Plan {
        model,
        spec,
        size,
        estimate,
        footprint,
    })
}
