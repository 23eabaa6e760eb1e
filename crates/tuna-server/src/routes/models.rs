//! `/v1/models`: base models, fine-tuned models and every checkpoint of the user's jobs; their
//! deletion; and the resolution of a model id to what chat completions load.

use axum::Json;
use axum::extract::{Path, State};
use tracing::instrument;
use tuna_model::demo::DEMO_DESCRIPTION;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::inference::Target;
use crate::openai::types::{GenerationDefaults, List, ModelDeleted, ModelObject, ModelTuna};
use crate::state::AppState;
use crate::store::{CheckpointRow, ModelRow, User};
use crate::validate::DEFAULT_MAX_TOKENS;

fn base_object(m: &ModelRow) -> ModelObject {
    ModelObject {
        id: m.name.clone(),
        object: "model".into(),
        created: m.created_at,
        owned_by: "tuna".into(),
        tuna: ModelTuna {
            kind: "base".into(),
            base_model: m.name.clone(),
            job_id: None,
            step: None,
            generation: None,
            description: (m.source == "demo").then(|| DEMO_DESCRIPTION.to_string()),
        },
    }
}

async fn checkpoint_object(
    state: &AppState,
    c: &CheckpointRow,
    owner: &str,
) -> ApiResult<ModelObject> {
    let base = state
        .store
        .get_job(&c.user_id, &c.job_id)
        .await?
        .map(|j| j.model)
        .unwrap_or_default();
    Ok(ModelObject {
        id: c.fine_tuned_model_checkpoint.clone(),
        object: "model".into(),
        created: c.created_at,
        owned_by: owner.into(),
        tuna: ModelTuna {
            kind: "checkpoint".into(),
            base_model: base,
            job_id: Some(c.job_id.clone()),
            step: Some(c.step),
            generation: None,
            description: None,
        },
    })
}

/// `GET /v1/models`.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<List<ModelObject>>> {
    let mut data: Vec<ModelObject> = state
        .store
        .list_models()
        .await?
        .iter()
        .map(base_object)
        .collect();
    for job in state.store.fine_tuned_jobs(&user.id).await? {
        if let Some(id) = &job.fine_tuned_model {
            data.push(ModelObject {
                id: id.clone(),
                object: "model".into(),
                created: job.finished_at.unwrap_or(job.created_at),
                owned_by: user.name.clone(),
                tuna: ModelTuna {
                    kind: "fine_tuned".into(),
                    base_model: job.model.clone(),
                    job_id: Some(job.id.clone()),
                    step: Some(job.step),
                    generation: None,
                    description: None,
                },
            });
        }
    }
    let ckpts = state.store.user_checkpoints(&user.id).await?;
    let jobs: std::collections::HashMap<String, String> = {
        let mut m = std::collections::HashMap::new();
        for c in &ckpts {
            if !m.contains_key(&c.job_id)
                && let Some(j) = state.store.get_job(&user.id, &c.job_id).await?
            {
                m.insert(c.job_id.clone(), j.model);
            }
        }
        m
    };
    for c in &ckpts {
        data.push(ModelObject {
            id: c.fine_tuned_model_checkpoint.clone(),
            object: "model".into(),
            created: c.created_at,
            owned_by: user.name.clone(),
            tuna: ModelTuna {
                kind: "checkpoint".into(),
                base_model: jobs.get(&c.job_id).cloned().unwrap_or_default(),
                job_id: Some(c.job_id.clone()),
                step: Some(c.step),
                generation: None,
                description: None,
            },
        });
    }
    Ok(Json(List::new(data, false)))
}

/// `GET /v1/models/{id}`.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn get(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelObject>> {
    let mut object = find(&state, &user, id).await?;
    object.tuna.generation = generation_defaults(&state, &object.tuna.base_model).await?;
    Ok(Json(object))
}

/// `DELETE /v1/models/{id}`: a fine-tuned model (its weights, the job's final checkpoint) or one
/// checkpoint of a finished job. Base models belong to the server (`tuna models`), not to users.
#[instrument(skip_all, fields(user = %user.id))]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelDeleted>> {
    if let Some(c) = state.store.checkpoint_by_model_id(&user.id, &id).await? {
        crate::routes::jobs::artifacts::delete_checkpoint_model(&state, &c).await?;
    } else if let Some(job) = state.store.job_by_fine_tuned_model(&user.id, &id).await? {
        crate::routes::jobs::artifacts::delete_fine_tuned_model(&state, &job).await?;
    } else if state.store.get_model(&id).await?.is_some() {
        return Err(ApiError::invalid_coded(
            format!(
                "`{id}` is a base model of the server; only fine-tuned models and checkpoints can be deleted"
            ),
            Some("model"),
            "model_not_deletable",
        ));
    } else {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(ModelDeleted {
        id,
        object: "model".into(),
        deleted: true,
    }))
}

/// The sampling defaults of base model `name` (`None` when it is not registered).
async fn generation_defaults(
    state: &AppState,
    name: &str,
) -> ApiResult<Option<GenerationDefaults>> {
    let Some(m) = state.store.get_model(name).await? else {
        return Ok(None);
    };
    let dir = crate::models::local_base_dir(&*state.blobs, &state.settings.cache_root(), &m, false)
        .await
        .map_err(|e| ApiError::internal(format!("fetching model `{name}`: {e}")))?;
    let config =
        tokio::task::spawn_blocking(move || tuna_model::GenerationConfig::from_model_dir(&dir))
            .await
            .map_err(|e| ApiError::internal(format!("reading generation_config.json: {e}")))?
            .map_err(|e| ApiError::internal(format!("reading generation_config.json: {e}")))?;
    let p = tuna_model::SamplingParams::from_generation_config(&config);
    Ok(Some(GenerationDefaults {
        temperature: p.temperature,
        top_p: p.top_p,
        max_tokens: DEFAULT_MAX_TOKENS,
    }))
}

async fn find(state: &AppState, user: &User, id: String) -> ApiResult<ModelObject> {
    if let Some(m) = state.store.get_model(&id).await? {
        return Ok(base_object(&m));
    }
    if let Some(c) = state.store.checkpoint_by_model_id(&user.id, &id).await? {
        return checkpoint_object(state, &c, &user.name).await;
    }
    if let Some(job) = state.store.job_by_fine_tuned_model(&user.id, &id).await? {
        return Ok(ModelObject {
            id,
            object: "model".into(),
            created: job.finished_at.unwrap_or(job.created_at),
            owned_by: user.name.clone(),
            tuna: ModelTuna {
                kind: "fine_tuned".into(),
                base_model: job.model.clone(),
                job_id: Some(job.id.clone()),
                step: Some(job.step),
                generation: None,
                description: None,
            },
        });
    }
    Err(ApiError::model_not_found(&id))
}

/// What chat completions load for `id`: a base model, a checkpoint (LoRA: base + adapter; full:
/// the checkpoint's own weights), or a fine-tuned model (its job's last checkpoint), following
/// jobs started from fine-tuned models back to their base (`models::resolve_weights`).
pub async fn resolve_target(state: &AppState, user: &User, id: &str) -> ApiResult<Target> {
    let w = crate::models::resolve_weights(&*state.store, &user.id, id)
        .await?
        .ok_or_else(|| ApiError::model_not_found(id))?
        .localize(
            &*state.blobs,
            &state.settings.cache_root(),
            &state.settings.demo_model_root,
            true,
        )
        .await?;
    Ok(Target {
        id: id.into(),
        model_dir: w.model_dir,
        adapter_dir: w.adapter_dir,
    })
}
