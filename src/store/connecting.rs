//! The network store, or the attempt to reach it. A mount whose local tier holds the index
//! need not wait for the network: it starts offline, serves what the tier holds, stages
//! writes, and keeps trying to join in the background; every operation until then fails at
//! once with [`StoreError::Offline`] (the uploader retries it, a read of a pad the tier does
//! not hold is `EIO`), and goes to the network from the moment it is joined.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::PublicKey;
use bytes::Bytes;

use super::{PadStore, StoreError};

/// The longest wait between two attempts to join.
const RETRY_MAX: Duration = Duration::from_secs(60);

pub struct ConnectingStore<S> {
    network: Arc<OnceLock<Arc<S>>>,
}

impl<S: PadStore> ConnectingStore<S> {
    /// A store already joined.
    pub fn connected(network: Arc<S>) -> Self {
        ConnectingStore {
            network: Arc::new(OnceLock::from(network)),
        }
    }

    /// A store that joins in the background: `connect` is tried until it succeeds, waiting
    /// `first_retry`, then twice as long each time up to a minute. Must be called within a
    /// tokio runtime.
    pub fn offline<F, Fut>(first_retry: Duration, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<S, String>> + Send,
    {
        let network = Arc::new(OnceLock::new());
        let joined = Arc::downgrade(&network);
        tokio::spawn(async move {
            let mut delay = first_retry;
            loop {
                tokio::time::sleep(delay).await;
                if joined.strong_count() == 0 {
                    return; // The mount has ended.
                }
                match connect().await {
                    Ok(store) => {
                        tracing::info!("joined the network: uploads and reads go to it now");
                        if let Some(slot) = joined.upgrade() {
                            let _ = slot.set(Arc::new(store));
                        }
                        return;
                    }
                    Err(e) => {
                        delay = (delay * 2).min(RETRY_MAX);
                        tracing::info!("still offline ({e}); trying again in {delay:?}");
                    }
                }
            }
        });
        ConnectingStore { network }
    }

    /// The network store, once joined.
    pub fn network(&self) -> Option<Arc<S>> {
        self.network.get().cloned()
    }

    fn joined(&self) -> Result<&S, StoreError> {
        self.network.get().map(|n| &**n).ok_or(StoreError::Offline)
    }
}

#[async_trait]
impl<S: PadStore> PadStore for ConnectingStore<S> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.joined()?.create(pad).await
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.joined()?.update(pad).await
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.joined()?.get(owner).await
    }
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.joined()?.get_newest(owner).await
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.joined()?.exists(owner).await
    }
    async fn get_part(
        &self,
        owner: &PublicKey,
        range: std::ops::Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        self.joined()?.get_part(owner, range).await
    }
    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::local::LocalStore;

    #[tokio::test(start_paused = true)]
    async fn offline_until_joined_then_every_operation_reaches_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let key = autonomi::SecretKey::random();
        let pad = Scratchpad::new(&key, 1, &Bytes::from_static(b"x"), 0);
        let tries = Arc::new(AtomicU32::new(0));
        let (counted, path) = (tries.clone(), dir.path().to_path_buf());
        let store = ConnectingStore::offline(Duration::from_secs(1), move || {
            let (counted, path) = (counted.clone(), path.clone());
            async move {
                // The network answers at the third attempt.
                match counted.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err("no peers".to_string()),
                    _ => LocalStore::open(&path).map_err(|e| e.to_string()),
                }
            }
        });
        assert_eq!(store.create(pad.clone()).await, Err(StoreError::Offline));
        assert_eq!(store.get(&key.public_key()).await, Err(StoreError::Offline));
        assert!(StoreError::Offline.is_transient());

        // Attempts at 1 s, then 2 s later, then 4 s later: joined after 7 s.
        tokio::time::sleep(Duration::from_millis(6_900)).await;
        assert!(store.network().is_none());
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.network().is_some());
        store.create(pad.clone()).await.unwrap();
        assert_eq!(store.get(&key.public_key()).await.unwrap().counter(), 0);
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }
}
