//! [`S3BlobStore`]: blobs as objects on an S3-compatible store (AWS S3, SeaweedFS, MinIO, …)
//! through `object_store`. Writes of more than one part go up as a multipart upload, so nothing
//! is visible under a key until the upload completes and memory stays bounded (a few parts);
//! reads stream. Errors keep the file store's meaning in their `io::ErrorKind`
//! (see [`super::RemoteStorageError`]) and never carry a credential.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncRead;

use super::{BlobStore, BlobWriter, RemoteStorageError, S3Location, check_key, copy_to_file};

/// Size of one multipart part (S3's smallest is 5 MiB); blobs up to this size go up in one PUT.
pub const PART_BYTES: usize = 8 << 20;
/// Parts uploading at once per writer: with the part being filled, the writer's memory.
const PARTS_IN_FLIGHT: usize = 2;

/// The variables whose values must never appear in an error or a log line.
const SECRET_VARS: [&str; 3] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
];

/// Objects under `s3://bucket/prefix/`; local copies under `cache`.
pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    name: String,
    cache: PathBuf,
    /// Credential values to blank out of messages.
    secrets: Vec<String>,
}

impl S3BlobStore {
    /// The store at `loc`, configured from the environment's `AWS_*` variables and `loc.env`.
    pub fn open(loc: &S3Location, cache: PathBuf) -> io::Result<Self> {
        // Client options first: setting them later would drop AWS_ALLOW_HTTP and the like.
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&loc.bucket)
            .with_retry(RetryConfig {
                retry_timeout: loc.retry_timeout,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(120)),
            );
        // The environment's AWS_* variables (as `AmazonS3Builder::from_env` reads them), then
        // the location's own.
        let from_env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        let mut secrets = Vec::new();
        for (key, value) in from_env.chain(loc.env.iter().cloned()) {
            if SECRET_VARS.contains(&key.as_str()) {
                secrets.push(value.clone());
            }
            if let Ok(config) = key.to_ascii_lowercase().parse() {
                builder = builder.with_config(config, value);
            }
        }
        secrets.retain(|s| s.len() >= 4);
        let name = super::BlobStoreUrl::S3(loc.clone()).url();
        let store = builder.build().map_err(|e| {
            let text = redact(&e.to_string(), &secrets);
            io::Error::new(
                io::ErrorKind::InvalidInput,
                RemoteStorageError(format!("cannot configure the object store {name}: {text}")),
            )
        })?;
        Ok(S3BlobStore {
            store: Arc::new(store),
            prefix: loc.prefix.clone(),
            name,
            cache,
            secrets,
        })
    }

    fn location(&self, key: &str) -> io::Result<ObjectPath> {
        check_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad blob key: {e}")))
    }

    fn error(&self, doing: &str, key: &str, e: object_store::Error) -> io::Error {
        map_error(&self.name, &self.secrets, doing, key, e)
    }
}

/// The `io::Error` for an object store error: its kind says what it means, its message names
/// the store, what was being done and the key, with any credential blanked out.
fn map_error(
    name: &str,
    secrets: &[String],
    doing: &str,
    key: &str,
    e: object_store::Error,
) -> io::Error {
    let text = redact(&chain(&e), secrets);
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ if means_full(&text) => io::ErrorKind::StorageFull,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(
        kind,
        RemoteStorageError(format!("object store {name}: {doing} `{key}`: {text}")),
    )
}

/// Whether an object store's answer means it has no room: 507 / `InsufficientStorage`, MinIO's
/// `XMinioStorageFull`, quota errors. (SeaweedFS's S3 gateway answers a bare 500 instead.)
fn means_full(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "507",
        "insufficientstorage",
        "xminiostoragefull",
        "insufficient storage",
        "quotaexceeded",
        "no space left",
        "no writable volumes",
        "no free volumes",
        "not enough free",
    ]
    .iter()
    .any(|t| lower.contains(t))
}

/// The error and its sources, which say what failed (object_store's own message often does not).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

enum WriteState {
    /// Everything so far fits in one part: one PUT at the end.
    Buffer(Vec<u8>),
    Multipart(WriteMultipart),
    Done,
}

struct S3Writer {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    key: String,
    name: String,
    secrets: Vec<String>,
    state: WriteState,
    written: u64,
}

impl S3Writer {
    fn error(&self, doing: &str, e: object_store::Error) -> io::Error {
        map_error(&self.name, &self.secrets, doing, &self.key, e)
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.state {
            WriteState::Buffer(buf) if buf.len() + chunk.len() <= PART_BYTES => {
                buf.extend_from_slice(chunk);
            }
            WriteState::Buffer(buf) => {
                let first = std::mem::take(buf);
                let upload = match self.store.put_multipart(&self.path).await {
                    Ok(u) => u,
                    Err(e) => {
                        self.state = WriteState::Done;
                        return Err(self.error("starting the upload of", e));
                    }
                };
                let mut multipart = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                multipart.write(&first);
                multipart.write(chunk);
                self.state = WriteState::Multipart(multipart);
            }
            WriteState::Multipart(multipart) => {
                if let Err(e) = multipart.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let WriteState::Multipart(m) =
                        std::mem::replace(&mut self.state, WriteState::Done)
                    else {
                        unreachable!()
                    };
                    let _ = m.abort().await;
                    return Err(self.error("uploading", e));
                }
                multipart.write(chunk);
            }
            WriteState::Done => return Err(io::Error::other("blob writer already closed")),
        }
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<u64> {
        // A failed multipart upload is aborted by `WriteMultipart::finish`: no object appears.
        match std::mem::replace(&mut self.state, WriteState::Done) {
            WriteState::Buffer(buf) => {
                let payload = PutPayload::from(Bytes::from(buf));
                self.store
                    .put(&self.path, payload)
                    .await
                    .map_err(|e| self.error("uploading", e))?;
            }
            WriteState::Multipart(m) => {
                m.finish()
                    .await
                    .map_err(|e| self.error("completing the upload of", e))?;
            }
            WriteState::Done => return Err(io::Error::other("blob writer already closed")),
        }
        Ok(self.written)
    }

    async fn abort(mut self: Box<Self>) {
        if let WriteState::Multipart(m) = std::mem::replace(&mut self.state, WriteState::Done)
            && let Err(e) = m.abort().await
        {
            let e = self.error("aborting the upload of", e);
            tracing::warn!(error = %e, "cannot abort a multipart upload");
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped without finish/abort (e.g. the request was cancelled): abort the upload in
        // the background so the store does not keep its parts.
        if let WriteState::Multipart(m) = std::mem::replace(&mut self.state, WriteState::Done)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = m.abort().await;
            });
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn writer(&self, key: &str) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(S3Writer {
            store: self.store.clone(),
            path: self.location(key)?,
            key: key.to_string(),
            name: self.name.clone(),
            secrets: self.secrets.clone(),
            state: WriteState::Buffer(Vec::new()),
            written: 0,
        }))
    }

    async fn open(&self, key: &str) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let got = self
            .store
            .get(&self.location(key)?)
            .await
            .map_err(|e| self.error("reading", key, e))?;
        let (name, secrets, key) = (self.name.clone(), self.secrets.clone(), key.to_string());
        let stream = got
            .into_stream()
            .map_err(move |e| map_error(&name, &secrets, "reading", &key, e));
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match self.store.delete(&self.location(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error("deleting", key, e)),
        }
        match tokio::fs::remove_file(self.cache.join(key)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let location = self.location(prefix)?;
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&location))
            .try_collect()
            .await
            .map_err(|e| self.error("listing", prefix, e))?;
        let ours = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(objects
            .into_iter()
            .filter_map(|o| o.location.as_ref().strip_prefix(&ours).map(str::to_string))
            .collect())
    }

    /// The cached copy when it has the object's size (keys are never rewritten with other
    /// content), else a fresh download.
    async fn local_path(&self, key: &str) -> io::Result<PathBuf> {
        let path = self.location(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| self.error("reading", key, e))?;
        let local = self.cache.join(key);
        if tokio::fs::metadata(&local)
            .await
            .is_ok_and(|m| m.len() == meta.size)
        {
            return Ok(local);
        }
        let mut reader = self.open(key).await?;
        let n = copy_to_file(&mut reader, &local).await?;
        if n != meta.size {
            let _ = tokio::fs::remove_file(&local).await;
            return Err(io::Error::other(format!(
                "object store {}: `{key}` changed while it was downloaded",
                self.name
            )));
        }
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_answers_are_recognised_and_secrets_blanked() {
        assert!(means_full("Server returned 507 Insufficient Storage"));
        assert!(means_full("<Code>XMinioStorageFull</Code>"));
        assert!(means_full("failed to assign: no writable volumes"));
        assert!(!means_full("connection refused"));
        let e = map_error(
            "s3://b/p",
            &["hunter2secret".into()],
            "reading",
            "files/x",
            object_store::Error::Generic {
                store: "S3",
                source: "bad signature for key hunter2secret".into(),
            },
        );
        assert!(!e.to_string().contains("hunter2secret"), "{e}");
        assert!(e.to_string().contains("s3://b/p") && e.to_string().contains("files/x"));
        assert!(super::super::is_remote(&e));
        let full = map_error(
            "s3://b/p",
            &[],
            "uploading",
            "files/x",
            object_store::Error::Generic {
                store: "S3",
                source: "Server returned non-2xx status code: 507 Insufficient Storage".into(),
            },
        );
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        let api = crate::error::ApiError::from(full);
        assert!(api.to_string().contains("object store is full"), "{api}");
    }
}
