//! Checkpoints in the blob store, so that any machine can resume a job, download a checkpoint or
//! chat with it.
//!
//! A worker writes a checkpoint to its job directory (the trainer's), then [`upload`]s its files
//! under `checkpoints/<job>/attempt-<n>/step-<s>/` and only then inserts the checkpoint's row,
//! fenced by its claim; the row's [`Manifest`] names every file with its size and SHA-256. A
//! stale worker (frozen past its lease, then woken) uploads under its own, old attempt, where no
//! row ever points, and its row is refused: nothing of it is ever used. After the row landed the
//! worker marks its directory as recorded ([`RECORDED_MARKER`] holding the prefix), so the node
//! that wrote a checkpoint uses its own directory and never copies it again; every other node
//! ([`local_dir`]) fetches the files once into `<data-dir>/cache/<prefix>/`, checking each one's
//! size and hash before it becomes visible there.

use std::io;
use std::path::{Path, PathBuf};

use tuna_train::checkpoint::OPTIMIZER_STATE;

use crate::blob::BlobStore;
use crate::blob::manifest::{self, Manifest, ManifestFile};
use crate::store::CheckpointRow;

/// In a checkpoint directory: the blob prefix its row recorded it under.
pub const RECORDED_MARKER: &str = ".tuna-recorded";

/// The prefix claim `attempt` uploads the checkpoint of `step` under.
pub fn blob_prefix(job_id: &str, attempt: i64, step: i64) -> String {
    format!("checkpoints/{job_id}/attempt-{attempt}/step-{step}")
}

/// A checkpoint row's manifest; `None` for a checkpoint recorded before checkpoints went to the
/// store.
pub fn manifest_of(row: &CheckpointRow) -> io::Result<Option<Manifest>> {
    row.blob_files
        .as_deref()
        .map(|json| Manifest::parse(json, &format!("checkpoint {}", row.id)))
        .transpose()
}

/// The files of a checkpoint directory to store: regular files, markers left out.
fn checkpoint_files(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if entry.file_type()?.is_file() && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Uploads the files of checkpoint directory `dir` under `prefix` (see [`manifest::upload`]).
pub async fn upload(blobs: &dyn BlobStore, prefix: &str, dir: &Path) -> io::Result<Manifest> {
    let owned = dir.to_path_buf();
    let names = tokio::task::spawn_blocking(move || checkpoint_files(&owned))
        .await
        .map_err(io::Error::other)??;
    let files = manifest::describe(dir, names).await?;
    let keys: Vec<String> = files
        .iter()
        .map(|f| format!("{prefix}/{}", f.name))
        .collect();
    let uploaded = manifest::upload(blobs, prefix, dir, files).await;
    if let Err(e) = uploaded {
        // The prefix is this claim's own: nothing else uses what went up.
        for key in &keys {
            let _ = blobs.delete(key).await;
        }
        return Err(io::Error::new(e.kind(), format!("checkpoint: {e}")));
    }
    uploaded
}

/// Marks `dir` as the checkpoint recorded under `prefix` (after its row landed).
pub fn mark_recorded(dir: &Path, prefix: &str) -> io::Result<()> {
    std::fs::write(dir.join(RECORDED_MARKER), prefix)
}

fn recorded_as(dir: &Path, prefix: &str) -> bool {
    std::fs::read_to_string(dir.join(RECORDED_MARKER)).is_ok_and(|p| p == prefix)
}

/// A local directory with `row`'s files: the directory this node wrote and recorded (under the
/// data directory `cache_root` is in), else a copy in `cache_root/<prefix>/` fetched from the
/// blob store file by file, each checked against the
/// manifest (size, SHA-256) before it is put in place. `resume`: the optimizer state too (only
/// the newest checkpoint of an unfinished job keeps it); else only what chat and downloads use.
pub async fn local_dir(
    blobs: &dyn BlobStore,
    cache_root: &Path,
    row: &CheckpointRow,
    resume: bool,
) -> io::Result<PathBuf> {
    let own = PathBuf::from(&row.path);
    let Some(manifest) = manifest_of(row)? else {
        return Ok(own); // recorded before checkpoints went to the blob store
    };
    let wanted: Vec<&ManifestFile> = manifest
        .files
        .iter()
        .filter(|f| resume || f.name != OPTIMIZER_STATE)
        .collect();
    let has_all = |dir: &Path| wanted.iter().all(|f| dir.join(&f.name).is_file());
    // Only this node's own folder (the data directory `cache_root` is in): another node's
    // folder that happens to be reachable is not this node's to read.
    let mine = cache_root
        .parent()
        .is_some_and(|data| own.starts_with(data));
    if mine && recorded_as(&own, &manifest.prefix) && has_all(&own) {
        return Ok(own);
    }
    manifest::cached_copy(blobs, &manifest, &wanted, cache_root).await
}

/// Removes the optimizer state of `rows` from the blob store (a resume needs only the newest's).
pub async fn drop_resume_blobs(blobs: &dyn BlobStore, rows: &[CheckpointRow]) {
    for row in rows {
        if let Ok(Some(m)) = manifest_of(row)
            && m.files.iter().any(|f| f.name == OPTIMIZER_STATE)
            && let Err(e) = blobs.delete(&m.key(OPTIMIZER_STATE)).await
        {
            tracing::warn!(checkpoint = %row.id, error = %e, "cannot remove a checkpoint's optimizer state from the blob store");
        }
    }
}

/// Removes the blobs under `checkpoints/<job>/` that no row of `rows` (all of the job's) names:
/// what a fenced worker uploaded under its stale attempt, or what a worker killed between an
/// upload and its row left. For a final job, whose own worker writes nothing more. Returns how
/// many blobs went.
pub async fn remove_orphans(
    blobs: &dyn BlobStore,
    job_id: &str,
    rows: &[CheckpointRow],
) -> io::Result<usize> {
    let mut named = std::collections::HashSet::new();
    for row in rows {
        if let Some(m) = manifest_of(row)? {
            named.extend(m.files.iter().map(|f| m.key(&f.name)));
        }
    }
    let mut removed = 0;
    for key in blobs.list(&format!("checkpoints/{job_id}")).await? {
        if !named.contains(&key) {
            blobs.delete(&key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes deleted checkpoints (rows the store already dropped) everywhere this node can: their
/// blobs, their directory and this node's cached copy. Returns the local bytes freed.
pub async fn remove(blobs: &dyn BlobStore, cache_root: &Path, rows: &[CheckpointRow]) -> u64 {
    let mut dirs = Vec::new();
    for row in rows {
        dirs.push(PathBuf::from(&row.path));
        if let Ok(Some(m)) = manifest_of(row) {
            for f in &m.files {
                if let Err(e) = blobs.delete(&m.key(&f.name)).await {
                    tracing::warn!(checkpoint = %row.id, error = %e, "cannot remove a checkpoint file from the blob store");
                }
            }
            dirs.push(cache_root.join(&m.prefix));
        }
    }
    match tokio::task::spawn_blocking(move || crate::artifacts::remove_dirs(&dirs)).await {
        Ok(Ok(freed)) => freed,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot remove deleted checkpoints' directories");
            0
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobStoreUrl;

    fn row(path: &Path, manifest: &Manifest) -> CheckpointRow {
        CheckpointRow {
            id: "ftckpt_1".into(),
            job_id: "ftjob-1".into(),
            user_id: "u".into(),
            step: 4,
            created_at: 0,
            fine_tuned_model_checkpoint: "ft:x:ckpt-step-4".into(),
            metrics: "{}".into(),
            sample: None,
            path: path.display().to_string(),
            kind: "lora".into(),
            bytes: 0,
            blob_files: Some(manifest.to_json()),
        }
    }

    /// A checkpoint uploaded by one "machine" is fetched, verified and cached by another; its
    /// writer uses its own directory; a corrupted object is refused, never put in the cache.
    #[tokio::test]
    async fn another_node_fetches_verifies_and_caches_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStoreUrl::File(dir.path().join("blobs"))
            .open(&dir.path().join("unused"))
            .unwrap();
        let ckpt = dir.path().join("node-a/train/checkpoint-4");
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join("adapter_model.safetensors"), vec![7u8; 3000]).unwrap();
        std::fs::write(ckpt.join(OPTIMIZER_STATE), vec![1u8; 500]).unwrap();
        let prefix = blob_prefix("ftjob-1", 2, 4);
        let manifest = upload(&*blobs, &prefix, &ckpt).await.unwrap();
        assert_eq!(manifest.files.len(), 2);
        let r = row(&ckpt, &manifest);

        // Not yet recorded: even the writer's node fetches (a fenced worker's directory is never used).
        let cache_a = dir.path().join("node-a/cache");
        let got = local_dir(&*blobs, &cache_a, &r, true).await.unwrap();
        assert_eq!(got, cache_a.join(&prefix));
        mark_recorded(&ckpt, &prefix).unwrap();
        assert_eq!(local_dir(&*blobs, &cache_a, &r, true).await.unwrap(), ckpt);

        // Another node: a verified copy, without the optimizer state unless resuming.
        let cache_b = dir.path().join("node-b/cache");
        // Node a's folder is reachable from here, but not node b's own: b fetches.
        assert_eq!(
            local_dir(&*blobs, &cache_b, &r, false).await.unwrap(),
            cache_b.join(&prefix)
        );
        std::fs::remove_dir_all(cache_b.join(&prefix)).unwrap();
        let mut r_b = r.clone();
        r_b.path = "/nonexistent/checkpoint-4".into();
        let got = local_dir(&*blobs, &cache_b, &r_b, false).await.unwrap();
        assert_eq!(
            std::fs::read(got.join("adapter_model.safetensors")).unwrap(),
            vec![7u8; 3000]
        );
        assert!(!got.join(OPTIMIZER_STATE).exists());
        let got = local_dir(&*blobs, &cache_b, &r_b, true).await.unwrap();
        assert_eq!(
            std::fs::read(got.join(OPTIMIZER_STATE)).unwrap(),
            vec![1u8; 500]
        );

        // A corrupted object never reaches the cache.
        std::fs::write(
            dir.path().join("blobs").join(manifest.key(OPTIMIZER_STATE)),
            vec![2u8; 500],
        )
        .unwrap();
        let cache_c = dir.path().join("node-c/cache");
        let err = local_dir(&*blobs, &cache_c, &r_b, true).await.unwrap_err();
        assert!(
            err.to_string().contains("does not match its manifest"),
            "{err}"
        );
        assert!(!cache_c.join(&prefix).join(OPTIMIZER_STATE).exists());

        // What a stale attempt uploaded is an orphan once the job is final; recorded blobs stay.
        let stale = upload(&*blobs, &blob_prefix("ftjob-1", 1, 4), &ckpt)
            .await
            .unwrap();
        let other_job = upload(&*blobs, &blob_prefix("ftjob-10", 1, 4), &ckpt)
            .await
            .unwrap();
        let removed = remove_orphans(&*blobs, "ftjob-1", std::slice::from_ref(&r_b))
            .await
            .unwrap();
        assert_eq!(removed, stale.files.len());
        assert!(blobs.open(&stale.key(OPTIMIZER_STATE)).await.is_err());
        assert!(blobs.open(&manifest.key(OPTIMIZER_STATE)).await.is_ok());
        assert!(
            blobs.open(&other_job.key(OPTIMIZER_STATE)).await.is_ok(),
            "another job's"
        );

        // Deleted: blobs and copies go.
        remove(&*blobs, &cache_b, std::slice::from_ref(&r_b)).await;
        assert!(!cache_b.join(&prefix).exists());
        assert!(
            blobs
                .open(&manifest.key("adapter_model.safetensors"))
                .await
                .is_err()
        );
    }
}
