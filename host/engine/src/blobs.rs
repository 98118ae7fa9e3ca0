//! Bytes every node must reach (issue 17): uploaded plugins (`plugins/<sha256>.wasm`) and
//! recordings (`recordings/<sid>.wav`, `.mp3`). One node keeps them in its data folder, as it
//! always has; several nodes keep them in S3-compatible object storage (`[storage] url =
//! "s3://bucket/prefix"`), so a plugin uploaded through one node runs on all, and a recording
//! made on one is served by all. Both through the `object_store` crate: one interface, and a
//! write is whole or absent (a local write goes to a temporary file and is renamed).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutPayload};

/// Where the shared bytes live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageConfig {
    /// `s3://bucket` or `s3://bucket/prefix`; none: the data folder.
    pub url: Option<String>,
    /// An S3-compatible server other than AWS (MinIO, Ceph, Garage, …), such as
    /// `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    /// Never printed or logged.
    pub secret_access_key: Option<String>,
}

/// Why bytes could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BlobError(String);

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        BlobError(e.to_string())
    }
}

/// The shared bytes. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// For logs: the folder or the bucket, never credentials.
    place: String,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("place", &self.place).finish()
    }
}

impl Blobs {
    /// The blobs of `config`, or the data folder `dir` when it names no object storage.
    pub fn open(config: &StorageConfig, dir: &Path) -> Result<Blobs, BlobError> {
        let Some(url) = &config.url else {
            return Blobs::folder(dir);
        };
        // `s3://bucket/prefix`: the builder takes the bucket; the prefix is ours to apply
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError(format!("storage {url}: an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(BlobError(format!("storage {url}: no bucket")));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &config.endpoint {
            // a server on plain HTTP (a test server on loopback, a private MinIO) is allowed
            // only when named so
            b = b
                .with_endpoint(endpoint.as_str())
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &config.region {
            b = b.with_region(region.as_str());
        }
        if let Some(id) = &config.access_key_id {
            b = b.with_access_key_id(id.as_str());
        }
        if let Some(secret) = &config.secret_access_key {
            b = b.with_secret_access_key(secret.as_str());
        }
        let store = b
            .build()
            .map_err(|e| BlobError(format!("storage {url}: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, parse(prefix)?))
        };
        Ok(Blobs {
            store,
            place: url.clone(),
        })
    }

    /// The blobs in the folder `dir` (created if missing).
    pub fn folder(dir: &Path) -> Result<Blobs, BlobError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BlobError(format!("creating {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Blobs {
            store: Arc::new(store),
            place: dir.display().to_string(),
        })
    }

    /// Where they are, for logs.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Stores `bytes` under `key` (such as `plugins/<sha256>.wasm`), replacing what was there.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.store
            .put(&parse(key)?, PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The bytes under `key`, all of them; `None` when there are none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        match self.store.get(&parse(key)?).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The bytes under `key` as a stream, with their length; `None` when there are none.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<Option<(u64, BoxStream<'static, Result<Bytes, BlobError>>)>, BlobError> {
        match self.store.get(&parse(key)?).await {
            Ok(r) => {
                let len = r.meta.size;
                Ok(Some((
                    len,
                    r.into_stream().map_err(BlobError::from).boxed(),
                )))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether there are bytes under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.store.head(&parse(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the bytes under `key` (none there is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&parse(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A key of ours as the store's path: plain segments only (no `..`, no empty or absolute
/// parts), as every key callflow builds is.
fn parse(key: &str) -> Result<Key, BlobError> {
    let plain = !key.is_empty()
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
    if !plain {
        return Err(BlobError(format!("not a storage key: {key:?}")));
    }
    Key::parse(key).map_err(|e| BlobError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_keeps_what_it_is_given_at_the_names_it_always_had() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::folder(dir.path()).unwrap();
        assert_eq!(blobs.get("plugins/a.wasm").await.unwrap(), None);
        assert!(!blobs.exists("plugins/a.wasm").await.unwrap());
        blobs
            .put("plugins/a.wasm", b"\0asm".to_vec())
            .await
            .unwrap();
        // where earlier versions kept it, so an existing data folder still reads
        assert_eq!(
            std::fs::read(dir.path().join("plugins/a.wasm")).unwrap(),
            b"\0asm"
        );
        assert_eq!(
            blobs.get("plugins/a.wasm").await.unwrap().unwrap().as_ref(),
            b"\0asm"
        );
        let (len, stream) = blobs.stream("plugins/a.wasm").await.unwrap().unwrap();
        let streamed: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!((len, streamed.concat()), (4, b"\0asm".to_vec()));
        blobs.delete("plugins/a.wasm").await.unwrap();
        blobs.delete("plugins/a.wasm").await.unwrap();
        assert!(!blobs.exists("plugins/a.wasm").await.unwrap());
    }

    #[tokio::test]
    async fn keys_that_would_leave_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::folder(&dir.path().join("data")).unwrap();
        for key in [
            "../x",
            "recordings/../../x",
            "/etc/passwd",
            "",
            "a//b",
            "a\\..\\b",
        ] {
            assert!(blobs.put(key, b"x".to_vec()).await.is_err(), "{key}");
            assert!(blobs.get(key).await.is_err(), "{key}");
        }
        assert!(!dir.path().join("x").exists());
    }
}
