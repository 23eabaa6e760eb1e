//! A job's files on disk: `jobs/<id>/train/checkpoint-<step>/` (weights, and the optimizer state
//! a resume needs), `metrics.jsonl`, `worker.log`. What to keep of them: the optimizer state only
//! in the newest checkpoint of a job that may still resume (none once the job is final), the
//! checkpoints the job's `keep_checkpoints` allows, nothing once the user deletes them.
//!
//! Blocking file-system code: async callers run it on `spawn_blocking`.

use std::path::{Path, PathBuf};

use tuna_train::checkpoint::OPTIMIZER_STATE;

/// The trainer's output directory inside a job directory.
pub fn train_dir(job_dir: &Path) -> PathBuf {
    job_dir.join("train")
}

fn checkpoint_dirs(train_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(train_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-"))
        })
        .collect()
}

/// Bytes of a checkpoint kept for good: its files without the optimizer state.
pub fn checkpoint_bytes(dir: &Path) -> u64 {
    let optimizer = std::fs::metadata(dir.join(OPTIMIZER_STATE)).map_or(0, |m| m.len());
    crate::disk::dir_size(dir).saturating_sub(optimizer)
}

fn checkpoint_step(dir: &Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// Removes the optimizer state of every checkpoint older than `keep` (a resume needs only the
/// newest recorded one); `None`: of all. Newer ones keep theirs: the trainer runs ahead of the
/// worker that records (and uploads) its checkpoints, so they are not recorded yet.
pub fn drop_optimizer_state_except(train_dir: &Path, keep: Option<&Path>) {
    let keep_step = keep.map(|k| checkpoint_step(k).unwrap_or(u64::MAX));
    for dir in checkpoint_dirs(train_dir) {
        if let Some(k) = keep_step
            && checkpoint_step(&dir).is_none_or(|s| s >= k)
        {
            continue;
        }
        let f = dir.join(OPTIMIZER_STATE);
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %f.display(), error = %e, "cannot remove optimizer state");
            }
            _ => {}
        }
    }
}

/// Removes checkpoints the trainer started but did not finish (`checkpoint-<step>.tmp`): what a
/// full disk leaves behind. Returns the bytes freed.
pub fn remove_partial_checkpoints(train_dir: &Path) -> u64 {
    let mut freed = 0;
    for dir in checkpoint_dirs(train_dir) {
        if dir.extension().is_some_and(|e| e == "tmp") {
            let size = crate::disk::dir_size(&dir);
            if std::fs::remove_dir_all(&dir).is_ok() {
                freed += size;
            }
        }
    }
    freed
}

/// Removes the checkpoint directories of `train_dir` that no row recorded: `recorded` holds each
/// row's directory and blob prefix (`None`: a row from before the blob store, recorded by its
/// directory alone); a directory counts only if its marker names the row's prefix.
pub fn remove_unrecorded(train_dir: &Path, recorded: &[(PathBuf, Option<String>)]) {
    for dir in checkpoint_dirs(train_dir) {
        if dir.extension().is_some_and(|e| e == "tmp") {
            continue; // the trainer clears its own
        }
        let marker = std::fs::read_to_string(dir.join(crate::checkpoints::RECORDED_MARKER)).ok();
        let kept = recorded.iter().any(|(path, prefix)| {
            *path == dir && prefix.as_ref().is_none_or(|p| marker.as_ref() == Some(p))
        });
        if !kept {
            tracing::info!(path = %dir.display(), "removing a checkpoint no row recorded");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove an unrecorded checkpoint");
            }
        }
    }
}

/// Removes checkpoint directories (rows the store already deleted). Missing ones are fine.
pub fn remove_dirs(dirs: &[PathBuf]) -> std::io::Result<u64> {
    let mut freed = 0;
    for dir in dirs {
        let size = crate::disk::dir_size(dir);
        match std::fs::remove_dir_all(dir) {
            Ok(()) => freed += size,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kept_checkpoint_keeps_its_optimizer_state() {
        let dir = tempfile::tempdir().unwrap();
        let train = train_dir(dir.path());
        for step in [2, 4, 6] {
            let c = train.join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(c.join("adapter_model.safetensors"), [0u8; 10]).unwrap();
            std::fs::write(c.join(OPTIMIZER_STATE), [0u8; 20]).unwrap();
        }
        std::fs::create_dir_all(train.join("checkpoint-6.tmp")).unwrap();
        std::fs::write(train.join("checkpoint-6.tmp/x"), [0u8; 7]).unwrap();
        assert_eq!(checkpoint_bytes(&train.join("checkpoint-4")), 10);
        drop_optimizer_state_except(&train, Some(&train.join("checkpoint-4")));
        assert!(!train.join("checkpoint-2").join(OPTIMIZER_STATE).exists());
        assert!(train.join("checkpoint-4").join(OPTIMIZER_STATE).exists());
        // A newer checkpoint (written while the older one was being recorded) keeps its own.
        assert!(train.join("checkpoint-6").join(OPTIMIZER_STATE).exists());
        assert_eq!(remove_partial_checkpoints(&train), 7);
        assert!(!train.join("checkpoint-6.tmp").exists());
        assert_eq!(
            remove_dirs(&[train.join("checkpoint-2"), train.join("none")]).unwrap(),
            10
        );
        drop_optimizer_state_except(&train, None);
        assert!(!train.join("checkpoint-4").join(OPTIMIZER_STATE).exists());
    }
}
