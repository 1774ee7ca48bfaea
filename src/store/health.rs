//! Counting a store's failures, for `mutant-mount status`: how many operations failed and the
//! last error. Placed under the retry layer it counts every failed attempt (each one retried
//! or given up); above it, only the failures the engine saw.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey};

use super::{PadStore, StoreError};

#[derive(Debug, Default)]
pub struct HealthStats {
    pub errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl HealthStats {
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            // A missing pad is an answer (a new pad, a free check), not a failure.
            Err(StoreError::NotFound) => Err(StoreError::NotFound),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap() = Some(e.to_string());
                Err(e)
            }
            ok => ok,
        }
    }
}

/// A store that records its inner store's failures into shared [`HealthStats`].
pub struct HealthStore<S> {
    inner: S,
    stats: Arc<HealthStats>,
}

impl<S: PadStore> HealthStore<S> {
    pub fn new(inner: S, stats: Arc<HealthStats>) -> Self {
        HealthStore { inner, stats }
    }
}

#[async_trait]
impl<S: PadStore> PadStore for HealthStore<S> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.stats.note(self.inner.create(pad).await)
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.stats.note(self.inner.update(pad).await)
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.stats.note(self.inner.get(owner).await)
    }
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.stats.note(self.inner.get_newest(owner).await)
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.stats.note(self.inner.exists(owner).await)
    }
    async fn counter(&self, owner: &PublicKey) -> Result<u64, StoreError> {
        self.stats.note(self.inner.counter(owner).await)
    }
    async fn get_part(
        &self,
        owner: &PublicKey,
        range: Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        self.stats.note(self.inner.get_part(owner, range).await)
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn on_this_disk(&self) -> bool {
        self.inner.on_this_disk()
    }
    async fn trim(&self, owners: Vec<PublicKey>) -> Result<(), StoreError> {
        self.inner.trim(owners).await
    }
}
