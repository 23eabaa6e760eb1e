//! The base-model registry: the demo model (registered on first start as `demo`), models listed in
//! the models file (`[{"name": "...", "path": "/hf/dir"}]`), and models added with
//! `tuna models add DIR`. All of them end up as rows of the store's `models` table.
//!
//! [`resolve_weights`] says what any model id a user may name stands for on disk: a base model,
//! a checkpoint (`ft:...:ckpt-step-N`) or a fine-tuned model (`ft:...`), following a job that
//! was itself started from a fine-tuned model back to its base. Chat completions and training
//! (a job whose `model` is a fine-tuned model) both use it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tuna_model::QwenConfig;
use tuna_model::demo::{DEMO_MODEL_NAME, ensure_demo_model};

use crate::blob::BlobStore;
use crate::blob::manifest::{self, Manifest};
use crate::checkpoints;
use crate::ids;
use crate::store::{CheckpointRow, ModelRow, Page, Store, StoreResult};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("`{}` is not a usable model directory: {reason}", path.display())]
    BadDir { path: PathBuf, reason: String },
    #[error("models file `{}`: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "model name `{0}` must be 1-64 characters of letters, digits, `.`, `_` or `-`, and not start with `ft:`"
    )]
    BadName(String),
    #[error("storing `{}` in the blob store: {source}", path.display())]
    Upload {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("creating the demo model: {0}")]
    Demo(#[from] tuna_model::Error),
}

/// One entry of the models file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub path: PathBuf,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with("ft:")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks that `dir` holds a supported model with a tokenizer; returns its config.
pub fn inspect_model_dir(dir: &Path) -> Result<QwenConfig, ModelError> {
    let bad = |reason: String| ModelError::BadDir {
        path: dir.to_path_buf(),
        reason,
    };
    let cfg = QwenConfig::from_model_dir(dir).map_err(|e| bad(e.to_string()))?;
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        if !dir.join(file).is_file() {
            return Err(bad(format!("`{file}` is missing")));
        }
    }
    let single = dir.join("model.safetensors").is_file();
    let sharded = dir.join("model.safetensors.index.json").is_file();
    if !single && !sharded {
        return Err(bad(
            "no `model.safetensors` or `model.safetensors.index.json`".into(),
        ));
    }
    Ok(cfg)
}

/// Registers `dir` as `name` (source `cli` or `config`) after checking it. With `blobs`, its
/// files go to the blob store first ([`store_model_files`]) and every node reads them from there;
/// without, the row only records `dir`, which every node must then have.
pub async fn add_model(
    store: &dyn Store,
    blobs: Option<&dyn BlobStore>,
    name: &str,
    dir: &Path,
    source: &str,
) -> Result<ModelRow, ModelError> {
    if !valid_name(name) {
        return Err(ModelError::BadName(name.to_string()));
    }
    let dir = std::fs::canonicalize(dir).map_err(|e| ModelError::BadDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let probe = dir.clone();
    tokio::task::spawn_blocking(move || inspect_model_dir(&probe))
        .await
        .map_err(|e| ModelError::BadDir {
            path: dir.clone(),
            reason: e.to_string(),
        })??;
    let blob_files = match blobs {
        Some(blobs) => Some(store_model_files(store, blobs, &dir).await?.to_json()),
        None => None,
    };
    let row = ModelRow {
        name: name.to_string(),
        path: dir.to_string_lossy().into_owned(),
        source: source.into(),
        created_at: ids::now(),
        blob_files,
    };
    store.upsert_model(&row).await?;
    Ok(row)
}

/// The files of a model directory that Tuna reads (top-level configs, tokenizer files, chat
/// templates and safetensors weights); the rest (other weight formats, READMEs, sub-folders)
/// stays behind.
pub fn model_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let wanted = [".json", ".safetensors", ".txt", ".jinja"]
            .iter()
            .any(|ext| name.ends_with(ext));
        // `is_file` follows links: a Hugging Face cache snapshot is a folder of links.
        if wanted && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Stores the model in `dir` in the blob store under `models/sha256-<content hash>/` and returns
/// its manifest. The same model added twice, under any name, is stored once, and uploaded once:
/// when a row already names these exact files, they are in the store (a row is written only
/// after its upload, and model blobs are never deleted).
pub async fn store_model_files(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    dir: &Path,
) -> Result<Manifest, ModelError> {
    let upload_error = |source| ModelError::Upload {
        path: dir.to_path_buf(),
        source,
    };
    let owned = dir.to_path_buf();
    let names = tokio::task::spawn_blocking(move || model_files(&owned))
        .await
        .map_err(|e| upload_error(std::io::Error::other(e)))?
        .map_err(upload_error)?;
    let files = manifest::describe(dir, names).await.map_err(upload_error)?;
    let wanted = Manifest {
        prefix: format!("models/sha256-{}", Manifest::content_hash(&files)),
        files,
    };
    let already_stored = store.list_models().await?.iter().any(|row| {
        row.blob_files
            .as_deref()
            .and_then(|json| Manifest::parse(json, &row.name).ok())
            .is_some_and(|stored| stored == wanted)
    });
    if already_stored {
        tracing::info!(prefix = %wanted.prefix, "model already in the blob store; nothing uploaded");
        return Ok(wanted);
    }
    manifest::upload(blobs, &wanted.prefix, dir, wanted.files)
        .await
        .map_err(upload_error)
}

/// Writes the demo model (once) under `root` and registers it as `demo`.
pub async fn register_demo(store: &dyn Store, root: &Path) -> Result<ModelRow, ModelError> {
    let root = root.to_path_buf();
    let dir = tokio::task::spawn_blocking(move || ensure_demo_model(&root))
        .await
        .map_err(|e| ModelError::BadDir {
            path: PathBuf::from(DEMO_MODEL_NAME),
            reason: e.to_string(),
        })??;
    let existing = store.get_model(DEMO_MODEL_NAME).await?;
    let path = dir.to_string_lossy().into_owned();
    if let Some(row) = existing
        && row.path == path
    {
        return Ok(row);
    }
    let row = ModelRow {
        name: DEMO_MODEL_NAME.into(),
        path,
        source: "demo".into(),
        created_at: ids::now(),
        blob_files: None,
    };
    store.upsert_model(&row).await?;
    Ok(row)
}

/// Reads the models file (a missing file is an empty list).
pub fn read_models_file(path: &Path) -> Result<Vec<ModelEntry>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ModelError::BadFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Registers every model of the models file; relative paths are relative to the file.
pub async fn register_models_file(
    store: &dyn Store,
    path: &Path,
) -> Result<Vec<ModelRow>, ModelError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for entry in read_models_file(path)? {
        let dir = if entry.path.is_absolute() {
            entry.path.clone()
        } else {
            base.join(&entry.path)
        };
        rows.push(add_model(store, None, &entry.name, &dir, "config").await?);
    }
    Ok(rows)
}

/// A key for the throughput table: models of the same shape train at the same speed.
pub fn model_shape(cfg: &QwenConfig) -> String {
    format!(
        "{:?}:v{}:h{}:i{}:l{}:q{}:kv{}:d{}",
        cfg.architecture,
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim
    )
    .to_lowercase()
}

/// The weights a model id stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// The registered base model everything started from (it names fine-tuned models).
    pub base: ModelRow,
    /// A Hugging Face directory: the base model's, or a full fine-tuning checkpoint's.
    pub model_dir: PathBuf,
    /// A LoRA checkpoint (PEFT adapter directory) applied on top of `model_dir`.
    pub adapter_dir: Option<PathBuf>,
    /// The full fine-tuning checkpoint `model_dir` is, when it is one.
    pub model_checkpoint: Option<CheckpointRow>,
    /// The checkpoint `adapter_dir` is.
    pub adapter_checkpoint: Option<CheckpointRow>,
}

impl Weights {
    /// The same weights in local directories: checkpoints on the node that wrote them are their
    /// own, on any other a verified copy fetched once from the blob store
    /// ([`crate::checkpoints::local_dir`]); the demo model, which another node registered, is
    /// this node's own (every node builds it identically) under `demo_root`; a base model stored
    /// in the blob store is cached under `cache_root/models/sha256-<content hash>/`.
    /// `with_weights: false` (planning a job on an API node) fetches a stored base model's
    /// configuration and tokenizer files only, not its weights.
    pub async fn localize(
        mut self,
        blobs: &dyn BlobStore,
        cache_root: &Path,
        demo_root: &Path,
        with_weights: bool,
    ) -> std::io::Result<Weights> {
        if self.model_checkpoint.is_none() && self.base.source == "demo" && !self.model_dir.is_dir()
        {
            let root = demo_root.to_path_buf();
            self.model_dir = tokio::task::spawn_blocking(move || ensure_demo_model(&root))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
        }
        if let Some(c) = &self.model_checkpoint {
            self.model_dir = checkpoints::local_dir(blobs, cache_root, c, false).await?;
        } else if self.base.blob_files.is_some() {
            self.model_dir = local_base_dir(blobs, cache_root, &self.base, with_weights).await?;
        }
        if let Some(c) = &self.adapter_checkpoint {
            self.adapter_dir = Some(checkpoints::local_dir(blobs, cache_root, c, false).await?);
        }
        Ok(self)
    }
}

/// A local directory with base model `row`'s files: its recorded path, or for a model stored in
/// the blob store a copy cached on this node by its content hash
/// (`cache_root/models/sha256-<hash>/`), each file fetched once and checked against the manifest.
/// `with_weights: false`: its configuration and tokenizer files only.
pub async fn local_base_dir(
    blobs: &dyn BlobStore,
    cache_root: &Path,
    row: &ModelRow,
    with_weights: bool,
) -> std::io::Result<PathBuf> {
    let Some(json) = &row.blob_files else {
        return Ok(PathBuf::from(&row.path));
    };
    let stored = Manifest::parse(json, &format!("model {}", row.name))?;
    let wanted = stored
        .files
        .iter()
        .filter(|f| with_weights || !f.name.ends_with(".safetensors"))
        .collect::<Vec<_>>();
    manifest::cached_copy(blobs, &stored, &wanted, cache_root).await
}

/// How many jobs started from fine-tuned models one model id may chain back through.
const MAX_LINEAGE: usize = 64;

/// What `id` stands for, for `user_id`: a base model, one of the user's checkpoints (LoRA: its
/// adapter over what its job trained from; full: its own directory), or one of the user's
/// fine-tuned models (its job's newest checkpoint). `None`: no such model for this user.
pub async fn resolve_weights(
    store: &dyn Store,
    user_id: &str,
    id: &str,
) -> StoreResult<Option<Weights>> {
    let mut id = id.to_string();
    // Checkpoints from the named one back to the base model, newest first.
    let mut chain: Vec<CheckpointRow> = Vec::new();
    let base = loop {
        if let Some(m) = store.get_model(&id).await? {
            break m;
        }
        if chain.len() >= MAX_LINEAGE {
            return Ok(None);
        }
        let ckpt = match store.checkpoint_by_model_id(user_id, &id).await? {
            Some(c) => c,
            None => {
                let Some(job) = store.job_by_fine_tuned_model(user_id, &id).await? else {
                    return Ok(None);
                };
                let newest = store
                    .list_checkpoints(
                        &job.id,
                        &Page {
                            after: None,
                            limit: 1,
                        },
                    )
                    .await?
                    .and_then(|(rows, _)| rows.into_iter().next());
                let Some(c) = newest else { return Ok(None) };
                c
            }
        };
        let Some(job) = store.get_job(user_id, &ckpt.job_id).await? else {
            return Ok(None);
        };
        chain.push(ckpt);
        id = job.model;
    };
    let mut weights = Weights {
        model_dir: PathBuf::from(&base.path),
        adapter_dir: None,
        model_checkpoint: None,
        adapter_checkpoint: None,
        base,
    };
    // Oldest first: a full checkpoint replaces the weights; a LoRA adapter (which, when its job
    // started from another adapter, was trained on from that one) goes on top of them.
    for c in chain.iter().rev() {
        if c.kind == "full" {
            weights.model_dir = PathBuf::from(&c.path);
            weights.model_checkpoint = Some(c.clone());
            weights.adapter_dir = None;
            weights.adapter_checkpoint = None;
        } else {
            weights.adapter_dir = Some(PathBuf::from(&c.path));
            weights.adapter_checkpoint = Some(c.clone());
        }
    }
    Ok(weights.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("qwen2.5-0.5b-instruct"));
        assert!(!valid_name("ft:demo:x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn shape_key_names_every_dimension() {
        let key = model_shape(&tuna_model::demo::demo_config());
        assert_eq!(key, "qwen3:v151936:h128:i384:l4:q4:kv2:d32");
    }

    #[test]
    fn models_file_missing_is_empty_and_bad_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_models_file(&dir.path().join("none.json"))
                .unwrap()
                .is_empty()
        );
        let p = dir.path().join("m.json");
        std::fs::write(&p, r#"[{"name": "a", "path": "/x", "extra": 1}]"#).unwrap();
        assert!(read_models_file(&p).is_err());
        std::fs::write(&p, r#"[{"name": "a", "path": "rel/dir"}]"#).unwrap();
        assert_eq!(
            read_models_file(&p).unwrap()[0].path,
            PathBuf::from("rel/dir")
        );
    }

    /// Counts what goes up, around a real folder store.
    struct CountingUploads {
        inner: std::sync::Arc<dyn BlobStore>,
        uploads: std::sync::atomic::AtomicUsize,
    }

    impl CountingUploads {
        fn count(&self) -> usize {
            self.uploads.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl BlobStore for CountingUploads {
        async fn writer(&self, key: &str) -> std::io::Result<Box<dyn crate::blob::BlobWriter>> {
            self.uploads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.writer(key).await
        }
        async fn open(
            &self,
            key: &str,
        ) -> std::io::Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
            self.inner.open(key).await
        }
        async fn delete(&self, key: &str) -> std::io::Result<()> {
            self.inner.delete(key).await
        }
        async fn local_path(&self, key: &str) -> std::io::Result<PathBuf> {
            self.inner.local_path(key).await
        }
        async fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
            self.inner.list(prefix).await
        }
        async fn put_immutable_file(&self, key: &str, src: &Path) -> std::io::Result<u64> {
            self.uploads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.put_immutable_file(key, src).await
        }
    }

    /// Re-adding a model whose files are stored already (under another name) uploads nothing;
    /// a model that differs in one file is stored under a prefix of its own.
    #[tokio::test]
    async fn a_model_added_twice_is_uploaded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::db::SqliteStore::open_in_memory().await.unwrap();
        let blobs = CountingUploads {
            inner: crate::blob::BlobStoreUrl::File(dir.path().join("blobs"))
                .open(&dir.path().join("unused"))
                .unwrap(),
            uploads: Default::default(),
        };
        let demo = ensure_demo_model(&dir.path().join("models")).unwrap();
        let first = add_model(&store, Some(&blobs), "one", &demo, "cli")
            .await
            .unwrap();
        let uploaded = blobs.count();
        assert_eq!(uploaded, model_files(&demo).unwrap().len());
        let second = add_model(&store, Some(&blobs), "two", &demo, "cli")
            .await
            .unwrap();
        assert_eq!(blobs.count(), uploaded, "nothing uploaded again");
        assert_eq!(first.blob_files, second.blob_files);

        let changed = dir.path().join("changed");
        std::fs::create_dir_all(&changed).unwrap();
        for name in model_files(&demo).unwrap() {
            std::fs::copy(demo.join(&name), changed.join(&name)).unwrap();
        }
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(changed.join("generation_config.json")).unwrap())
                .unwrap_or_else(|_| serde_json::json!({}));
        config["tuna_test"] = serde_json::json!(1);
        std::fs::write(changed.join("generation_config.json"), config.to_string()).unwrap();
        let third = add_model(&store, Some(&blobs), "three", &changed, "cli")
            .await
            .unwrap();
        assert_eq!(blobs.count(), 2 * uploaded, "a changed model goes up whole");
        assert_ne!(third.blob_files, first.blob_files);
    }
}
