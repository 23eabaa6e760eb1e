//! [`LocalBlobStore`]: blobs as files under the data directory (the default), private:
//! directories 0700, files 0600 ([`crate::perms`]).

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{BlobStore, BlobWriter, check_key};

/// Blobs as plain files under `root` (written aside, then renamed into place).
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBlobStore { root: root.into() }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

struct LocalWriter {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    written: u64,
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) => {
                f.write_all(chunk).await?;
                self.written += chunk.len() as u64;
                Ok(())
            }
            None => Err(io::Error::other("blob writer already closed")),
        }
    }

    async fn finish(mut self: Box<Self>) -> io::Result<u64> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
            f.sync_all().await?;
        }
        tokio::fs::rename(&self.tmp, &self.dest).await?;
        Ok(self.written)
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Dropped without finish/abort (e.g. the request was cancelled): don't leave the partial file.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("."))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn writer(&self, key: &str) -> io::Result<Box<dyn BlobWriter>> {
        let dest = self.path(key)?;
        let dir = parent(&dest).to_path_buf();
        tokio::task::spawn_blocking(move || crate::perms::private_dir(&dir))
            .await
            .map_err(io::Error::other)??;
        let tmp = dest.with_extension("partial");
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::perms::PRIVATE_FILE_MODE)
            .open(&tmp)
            .await?;
        Ok(Box::new(LocalWriter {
            file: Some(file),
            tmp,
            dest,
            written: 0,
        }))
    }

    async fn open(&self, key: &str) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(Box::new(tokio::fs::File::open(self.path(key)?).await?))
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn local_path(&self, key: &str) -> io::Result<PathBuf> {
        self.path(key)
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (root, top) = (self.root.clone(), self.path(prefix)?);
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let mut dirs = vec![top];
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    if entry.file_type()?.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    // Blobs being written (`*.partial`, hidden temporaries) are not blobs yet.
                    if name.starts_with('.') || name.ends_with(".partial") {
                        continue;
                    }
                    if let Ok(rel) = path.strip_prefix(&root) {
                        keys.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
            Ok(keys)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// A hard link when `src` is on the same file system (no second copy of a checkpoint on
    /// one machine), else a copy.
    async fn put_immutable_file(&self, key: &str, src: &Path) -> io::Result<u64> {
        let dest = self.path(key)?;
        let (src_owned, dest_owned) = (src.to_path_buf(), dest.clone());
        let linked = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            crate::perms::private_dir(parent(&dest_owned))?;
            let tmp = dest_owned.with_extension("partial");
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(&src_owned, &tmp)?;
            std::fs::rename(&tmp, &dest_owned)?;
            Ok(std::fs::metadata(&dest_owned)?.len())
        })
        .await
        .map_err(io::Error::other)?;
        match linked {
            Ok(n) => Ok(n),
            Err(_) => super::put_file(self, key, src).await,
        }
    }

    async fn link_immutable_file(&self, key: &str, dest: &Path) -> io::Result<bool> {
        let src = self.path(key)?;
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = dest.parent() {
                crate::perms::private_dir(dir)?;
            }
            match std::fs::hard_link(&src, &dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
                // Another file system (EXDEV) or no links allowed: the caller copies.
                Err(_) => Ok(false),
            }
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_private_and_visible_only_once_finished() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        let mut w = store.writer("files/a").await.unwrap();
        w.write(b"hello").await.unwrap();
        assert!(
            !dir.path().join("files/a").exists(),
            "visible before finish"
        );
        w.finish().await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("files/a")), 0o600);
        assert_eq!(mode(&dir.path().join("files")), 0o700);
    }

    #[tokio::test]
    async fn an_immutable_file_is_linked_not_copied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path().join("blobs"));
        let src = dir.path().join("weights");
        std::fs::write(&src, b"0123456789").unwrap();
        assert_eq!(store.put_immutable_file("c/w", &src).await.unwrap(), 10);
        let stored = dir.path().join("blobs/c/w");
        assert_eq!(
            std::fs::metadata(&stored).unwrap().ino(),
            std::fs::metadata(&src).unwrap().ino()
        );
        // The source goes (a checkpoint's optimizer state is dropped): the blob stays.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(std::fs::read(&stored).unwrap(), b"0123456789");
    }
}
