//! Counting what a store does: pad creates, updates, gets and existence checks, and the bytes
//! moved. On the network these are money (creates) and round trips, so the mount logs them at
//! unmount (and on SIGUSR1), and tests and benchmarks read them.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey};

use super::{PadStore, StoreError};

/// Operation counts: operations the store carried out (failed ones are not counted).
#[derive(Debug, Default)]
pub struct StoreStats {
    pub creates: AtomicU64,
    pub updates: AtomicU64,
    pub gets: AtomicU64,
    pub exists: AtomicU64,
    /// Reads of part of a pad (stores on this machine only), not counted in `gets`.
    pub parts: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
}

impl StoreStats {
    pub fn writes(&self) -> u64 {
        self.creates.load(Ordering::Relaxed) + self.updates.load(Ordering::Relaxed)
    }
}

/// One line, `creates=.. updates=.. gets=.. exists=.. parts=.. bytes_written=.. bytes_read=..`,
/// which the log carries and `scripts/bench.sh` parses.
impl fmt::Display for StoreStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "creates={} updates={} gets={} exists={} parts={} bytes_written={} bytes_read={}",
            n(&self.creates),
            n(&self.updates),
            n(&self.gets),
            n(&self.exists),
            n(&self.parts),
            n(&self.bytes_written),
            n(&self.bytes_read)
        )
    }
}

/// A store that counts the operations its inner store carries out, into shared `StoreStats`.
pub struct CountingStore<S> {
    inner: S,
    stats: Arc<StoreStats>,
}

impl<S: PadStore> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            stats: Arc::default(),
        }
    }

    /// The counters, to read while the store is in use.
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn wrote(&self, counter: &AtomicU64, bytes: usize, result: &Result<(), StoreError>) {
        if result.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_written
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    fn count_get(&self, pad: Scratchpad) -> Scratchpad {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_read
            .fetch_add(pad.payload_size() as u64, Ordering::Relaxed);
        pad
    }
}

#[async_trait]
impl<S: PadStore> PadStore for CountingStore<S> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        let size = pad.payload_size();
        let result = self.inner.create(pad).await;
        self.wrote(&self.stats.creates, size, &result);
        result
    }

    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        let size = pad.payload_size();
        let result = self.inner.update(pad).await;
        self.wrote(&self.stats.updates, size, &result);
        result
    }

    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let pad = self.inner.get(owner).await?;
        Ok(self.count_get(pad))
    }

    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let pad = self.inner.get_newest(owner).await?;
        Ok(self.count_get(pad))
    }

    async fn counter(&self, owner: &PublicKey) -> Result<u64, StoreError> {
        self.inner.counter(owner).await
    }

    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        let found = self.inner.exists(owner).await?;
        self.stats.exists.fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    async fn get_part(
        &self,
        owner: &PublicKey,
        range: Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        let part = self.inner.get_part(owner, range).await?;
        if let Some(bytes) = &part {
            self.stats.parts.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(part)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use autonomi::SecretKey;

    fn pad(sk: &SecretKey, data: &[u8], counter: u64) -> Scratchpad {
        Scratchpad::new(sk, 7, &Bytes::copy_from_slice(data), counter)
    }

    #[tokio::test]
    async fn counts_what_the_store_carried_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = CountingStore::new(LocalStore::open(dir.path()).unwrap());
        let stats = store.stats();
        let sk = SecretKey::random();
        let pk = sk.public_key();
        let (first, second) = (pad(&sk, &[1; 1000], 0), pad(&sk, &[2; 3000], 1));
        let written = (first.payload_size() + second.payload_size()) as u64;

        assert!(!store.exists(&pk).await.unwrap());
        store.create(first).await.unwrap();
        store.update(second).await.unwrap();
        let got = store.get(&pk).await.unwrap();
        let part = store.get_part(&pk, 10..20).await.unwrap().unwrap();
        assert_eq!(part, got.encrypted_data()[10..20]);
        // Refused operations are not counted.
        store.create(pad(&sk, b"again", 0)).await.unwrap_err();
        store.update(pad(&sk, b"stale", 1)).await.unwrap_err();
        let missing = SecretKey::random().public_key();
        store.get(&missing).await.unwrap_err();

        assert_eq!(stats.writes(), 2);
        assert_eq!(stats.bytes_written.load(Ordering::Relaxed), written);
        assert_eq!(
            stats.bytes_read.load(Ordering::Relaxed),
            got.payload_size() as u64 + 10
        );
        assert_eq!(
            stats.to_string(),
            format!(
                "creates=1 updates=1 gets=1 exists=1 parts=1 bytes_written={written} bytes_read={}",
                got.payload_size() + 10
            )
        );
    }
}
