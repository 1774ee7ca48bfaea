//! Retries transient store errors with exponential backoff.
//!
//! A write that failed transiently may still have landed. When its retry then meets
//! `AlreadyExists` or `StaleCounter`, the stored pad is read back: if it is ours, the write
//! succeeded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::PublicKey;

use super::{PadStore, StoreError};

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long one attempt may take before it counts as a transient timeout (a store that
    /// went silent must not hold an upload or a commit for ever).
    pub attempt_limit: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            attempt_limit: None,
        }
    }
}

pub struct RetryingStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl RetryPolicy {
    /// For the Autonomi network: records take a few seconds to reach every close node, and a
    /// young or churning network drops queries; about 20 s in all before giving up.
    pub fn network() -> Self {
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            attempt_limit: None,
        }
    }
}

impl<S: PadStore> RetryingStore<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryingStore { inner, policy }
    }

    /// The store under the retries, for its own counters.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = self.policy.first_delay;
        let mut attempt = 1;
        loop {
            let attempt_result = match self.policy.attempt_limit {
                Some(limit) => tokio::time::timeout(limit, op())
                    .await
                    .unwrap_or(Err(StoreError::Timeout)),
                None => op().await,
            };
            match attempt_result {
                // Offline, the network is joined in the background, on its own schedule.
                Err(e)
                    if e.is_transient()
                        && e != StoreError::Offline
                        && attempt < self.policy.attempts =>
                {
                    tracing::debug!(%e, attempt, "{what} failed, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.policy.max_delay);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// After a transient failure, a write refused as a duplicate may be our own earlier attempt.
    /// An error if the stored pad cannot be read back to tell.
    async fn landed_earlier(&self, pad: &Scratchpad) -> Result<bool, StoreError> {
        let stored = self.run("get", || self.inner.get(pad.owner())).await?;
        Ok(stored.counter() == pad.counter() && stored.encrypted_data() == pad.encrypted_data())
    }

    async fn write(&self, pad: Scratchpad, create: bool) -> Result<(), StoreError> {
        let failed_transiently = AtomicBool::new(false);
        let result = self
            .run(if create { "create" } else { "update" }, || {
                let pad = pad.clone();
                let seen = &failed_transiently;
                async move {
                    let r = if create {
                        self.inner.create(pad).await
                    } else {
                        self.inner.update(pad).await
                    };
                    if matches!(&r, Err(e) if e.is_transient()) {
                        seen.store(true, Ordering::Relaxed);
                    }
                    r
                }
            })
            .await;
        match result {
            Err(refused @ (StoreError::AlreadyExists | StoreError::StaleCounter { .. }))
                if failed_transiently.load(Ordering::Relaxed) =>
            {
                // Not knowing whether our own attempt landed, the refusal must not be reported:
                // a caller would take it for another writer's pad (the index root: a conflict).
                match self.landed_earlier(&pad).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(refused),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}

#[async_trait]
impl<S: PadStore> PadStore for RetryingStore<S> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.write(pad, true).await
    }

    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.write(pad, false).await
    }

    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.run("get", || self.inner.get(owner)).await
    }

    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.run("get", || self.inner.get_newest(owner)).await
    }

    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.run("exists", || self.inner.exists(owner)).await
    }

    async fn counter(&self, owner: &PublicKey) -> Result<u64, StoreError> {
        self.run("counter", || self.inner.counter(owner)).await
    }

    async fn get_part(
        &self,
        owner: &PublicKey,
        range: std::ops::Range<usize>,
    ) -> Result<Option<autonomi::Bytes>, StoreError> {
        self.run("get part", || self.inner.get_part(owner, range.clone()))
            .await
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
