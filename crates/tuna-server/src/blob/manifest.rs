//! A folder in the blob store: its files under one prefix, and a [`Manifest`] naming each with
//! its size and SHA-256, kept in the store's row for the folder (a checkpoint's, a model's). A
//! row is written only after every file went up, so a manifest never names a missing file.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BlobStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub prefix: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    /// Parses a row's manifest; `what` names the row in the error.
    pub fn parse(json: &str, what: &str) -> io::Result<Manifest> {
        serde_json::from_str(json).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: bad blob manifest: {e}"),
            )
        })
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 over every file's name and hash: two folders with the same files have the same.
    pub fn content_hash(files: &[ManifestFile]) -> String {
        let mut hasher = Sha256::new();
        for f in files {
            hasher.update(f.name.as_bytes());
            hasher.update([0]);
            hasher.update(f.sha256.as_bytes());
            hasher.update([b'\n']);
        }
        crate::ids::to_hex(&hasher.finalize())
    }
}

pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, crate::ids::to_hex(&hasher.finalize())))
}

/// Sizes and hashes of the files `names` of `dir` (read on a blocking thread).
pub async fn describe(dir: &Path, names: Vec<String>) -> io::Result<Vec<ManifestFile>> {
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> io::Result<Vec<ManifestFile>> {
        names
            .into_iter()
            .map(|name| {
                let (bytes, sha256) = sha256_file(&owned.join(&name)).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading `{}`: {e}", owned.join(&name).display()),
                    )
                })?;
                Ok(ManifestFile {
                    name,
                    bytes,
                    sha256,
                })
            })
            .collect()
    })
    .await
    .map_err(io::Error::other)?
}

/// Uploads `files` of `dir` under `prefix` (each one whole or not at all; large ones as multipart
/// uploads) and returns their manifest. On an error, what went up stays (a content-addressed
/// folder may be in use already: the caller decides) and the error names the file.
pub async fn upload(
    blobs: &dyn BlobStore,
    prefix: &str,
    dir: &Path,
    files: Vec<ManifestFile>,
) -> io::Result<Manifest> {
    let manifest = Manifest {
        prefix: prefix.to_string(),
        files,
    };
    for f in &manifest.files {
        let key = manifest.key(&f.name);
        let stored = blobs.put_immutable_file(&key, &dir.join(&f.name)).await;
        let failure = match stored {
            Ok(n) if n == f.bytes => continue,
            Ok(n) => io::Error::other(format!(
                "`{key}`: {n} bytes stored, {} expected (the file changed)",
                f.bytes
            )),
            Err(e) => e,
        };
        return Err(io::Error::new(
            failure.kind(),
            format!("uploading `{key}`: {failure}"),
        ));
    }
    Ok(manifest)
}

/// This node's copy of `files` of `manifest`: the folder `cache_root/<prefix>/`, each file
/// fetched once (a file already there was verified when it was put in place).
pub async fn cached_copy(
    blobs: &dyn BlobStore,
    manifest: &Manifest,
    files: &[&ManifestFile],
    cache_root: &Path,
) -> io::Result<PathBuf> {
    let dir = cache_root.join(&manifest.prefix);
    crate::perms::private_dir(&dir)?;
    for f in files {
        let dest = dir.join(&f.name);
        if !dest.is_file() {
            fetch_verified(blobs, &manifest.key(&f.name), f, &dest).await?;
        }
    }
    Ok(dir)
}

/// Puts `key` at `dest` through a temporary file, checking its size and hash against
/// `expected` before it becomes visible: a hard link where the store is a folder on the same
/// file system (no second copy of a model on one machine), else a streamed download.
async fn fetch_verified(
    blobs: &dyn BlobStore,
    key: &str,
    expected: &ManifestFile,
    dest: &Path,
) -> io::Result<()> {
    let tmp = dest.with_file_name(format!(
        ".{}.{}.partial",
        expected.name,
        crate::ids::new_id("dl")
    ));
    let copy = async {
        let (bytes, sha256) = if blobs.link_immutable_file(key, &tmp).await? {
            let linked = tmp.clone();
            tokio::task::spawn_blocking(move || sha256_file(&linked))
                .await
                .map_err(io::Error::other)??
        } else {
            stream_hashed(blobs, key, &tmp).await?
        };
        if bytes != expected.bytes || sha256 != expected.sha256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "stored file `{key}` does not match its manifest: {bytes} bytes, sha256 {sha256}; expected {} bytes, sha256 {}",
                    expected.bytes, expected.sha256
                ),
            ));
        }
        tokio::fs::rename(&tmp, dest).await
    };
    let result = copy.await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Downloads `key` into the new file `dest`; returns its size and SHA-256.
async fn stream_hashed(blobs: &dyn BlobStore, key: &str, dest: &Path) -> io::Result<(u64, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut reader = blobs.open(key).await?;
    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await?;
        bytes += n as u64;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok((bytes, crate::ids::to_hex(&hasher.finalize())))
}
