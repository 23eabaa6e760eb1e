//! Reading Hugging Face safetensors checkpoints: one `model.safetensors` or the shards listed in
//! `model.safetensors.index.json`, memory-mapped, tensors kept in their stored dtype.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;
use tuna_engine::DType;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint, by name.
pub struct WeightFiles {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
    dir: PathBuf,
}

impl WeightFiles {
    /// Opens `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    pub fn open_model_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths = if single.exists() {
            vec![single]
        } else if index.exists() {
            let json: serde_json::Value = crate::config::read_json(&index)?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Safetensors {
                    path: index.clone(),
                    reason: "no `weight_map` object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                file: "model.safetensors (or model.safetensors.index.json)".into(),
            });
        };
        Self::open_files(dir, &paths)
    }

    /// Opens the given safetensors files as one set of tensors.
    pub fn open_files(dir: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::MissingFile {
                        path: dir.to_path_buf(),
                        file: path
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    }
                } else {
                    Error::io(path, e)
                }
            })?;
            // SAFETY: the file is opened read-only and we never write through the map; like every
            // mmap reader we rely on the checkpoint not being truncated while it is mapped.
            let mmap = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
            let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::BF16 => DType::BF16,
                    safetensors::Dtype::F16 => DType::F16,
                    other => {
                        return Err(Error::UnsupportedDType {
                            path: path.clone(),
                            name,
                            dtype: format!("{other:?}"),
                        });
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let end = start + view.data().len();
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype,
                        shape: view.shape().to_vec(),
                        start,
                        end,
                    },
                );
            }
            files.push((path.clone(), mmap));
        }
        Ok(WeightFiles {
            files,
            entries,
            dir: dir.to_path_buf(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.dir.clone(),
            name: name.to_owned(),
        })?;
        if entry.shape != shape {
            return Err(Error::ShapeMismatch {
                path: self.files[entry.file].0.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        let mmap = Arc::clone(&self.files[entry.file].1);
        Ok(Tensor::from_mapped(
            entry.shape.clone(),
            entry.dtype,
            mmap,
            entry.start,
            entry.end,
        ))
    }

    /// Like [`get`](Self::get), widened to an owned f32 vector (norm weights, biases).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.get(name, shape)?.to_f32_vec())
    }

    /// The dtype most tensors are stored in.
    pub fn dominant_dtype(&self) -> DType {
        let mut bytes: HashMap<&'static str, (DType, usize)> = HashMap::new();
        for e in self.entries.values() {
            bytes.entry(e.dtype.name()).or_insert((e.dtype, 0)).1 += e.end - e.start;
        }
        bytes
            .into_values()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(DType::F32)
    }
}

/// Builds tensor names the way the checkpoint spells them (candle's `vb.pp`).
#[derive(Debug, Clone)]
pub struct Prefix(String);

impl Prefix {
    pub fn root() -> Self {
        Prefix(String::new())
    }

    /// `self.name`
    pub fn pp(&self, name: impl std::fmt::Display) -> Prefix {
        if self.0.is_empty() {
            Prefix(name.to_string())
        } else {
            Prefix(format!("{}.{name}", self.0))
        }
    }

    pub fn name(&self, leaf: &str) -> String {
        self.pp(leaf).0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Writes tensors as one safetensors file (f32/bf16/f16 as stored), with optional metadata.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = match t.dtype() {
                DType::F32 => safetensors::Dtype::F32,
                DType::BF16 => safetensors::Dtype::BF16,
                DType::F16 => safetensors::Dtype::F16,
            };
            let view =
                safetensors::tensor::TensorView::new(dtype, t.shape().to_vec(), t.raw_bytes())
                    .map_err(|e| Error::Safetensors {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
