//! The CPU side of pads: sealing, signature checks and decryption run on the blocking pool, at
//! most one task per core, first come first served, so pads finish in the order they were
//! asked for (a sequential reader's next chunk first) instead of all sharing the cores and
//! finishing together. A reader's own pad does not queue.
//!
//! Sealing is split around the SHA3 of the ciphertext, once its largest step: the hashes of
//! pads sealed at the same time (a streaming writer keeps its write buffer of them in flight)
//! are taken side by side, up to [`LANES`] for about the price of one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, SecretKey};
use tokio::sync::{oneshot, Notify, Semaphore, SemaphorePermit};

use super::pads::Priority;
use crate::seal::{hash_ciphertexts, Sealing, StreamKey, LANES};

/// Runs `f` on the blocking pool once a core is free (at once for a reader's own pad).
pub async fn blocking<T: Send + 'static>(
    priority: Priority,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let _turn = core(priority).await;
    tokio::task::spawn_blocking(f)
        .await
        .expect("crypto task panicked")
}

/// A core's turn: held while a crypto task runs.
async fn core(priority: Priority) -> Option<SemaphorePermit<'static>> {
    static CORES: OnceLock<Semaphore> = OnceLock::new();
    let cores = CORES.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    match priority {
        Priority::Background => Some(cores.acquire().await.expect("never closed")),
        Priority::Reader => None,
    }
}

/// Seals pads: encryption and signing on the pool, the ciphertexts' hashes in batches. One
/// per engine, so that engines (and tests' runtimes) never wait on each other's batches.
#[derive(Default)]
pub struct Sealer {
    waiting: Mutex<Waiting>,
    /// Wakes the sealings waiting for others to come when one of those gives up.
    gave_up: Notify,
    batches: AtomicU64,
}

type Unhashed = (Sealing, oneshot::Sender<Sealing>);

#[derive(Default)]
struct Waiting {
    /// Sealings waiting for their ciphertext's hash, oldest first.
    unhashed: Vec<Unhashed>,
    /// Sealings being encrypted, which will join `unhashed`.
    coming: usize,
}

impl Waiting {
    /// The next batch to hash: a full one, or what there is if no more are coming.
    fn batch(&mut self) -> Option<Vec<Unhashed>> {
        let n = self.unhashed.len().min(LANES);
        (n == LANES || (n > 0 && self.coming == 0)).then(|| self.unhashed.drain(..n).collect())
    }
}

/// A sealing counted in `coming` until it joins the queue; if it is dropped before (its
/// future was), the count goes down and the sealings waiting for it are woken.
struct Coming<'a>(Option<&'a Sealer>);

impl Drop for Coming<'_> {
    fn drop(&mut self) {
        if let Some(sealer) = self.0 {
            sealer.waiting.lock().unwrap().coming -= 1;
            sealer.gave_up.notify_waiters();
        }
    }
}

impl Sealer {
    /// Encrypts and signs `data` as version `counter` of the pad of `sk`; also returns the
    /// stream key, to decrypt parts of this version later.
    pub async fn seal(
        &self,
        sk: SecretKey,
        encoding: u64,
        data: Bytes,
        counter: u64,
    ) -> (Scratchpad, StreamKey) {
        self.waiting.lock().unwrap().coming += 1;
        let coming = Coming(Some(self));
        let encrypt = move || Sealing::encrypt(&sk, encoding, &data, counter);
        let sealing = blocking(Priority::Background, encrypt).await;
        let sealing = self.hashed(sealing, coming).await;
        blocking(Priority::Background, move || sealing.sign()).await
    }

    /// Ciphertext hash batches taken so far.
    #[cfg(test)]
    fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// `sealing` with its ciphertext's hash taken. It joins the queue; then, with a core, this
    /// task hashes the batches ready: full ones, and the rest once no sealing is still being
    /// encrypted. So the last sealing of a run leaves none behind, and a lone one waits for
    /// nobody.
    async fn hashed(&self, sealing: Sealing, mut coming: Coming<'_>) -> Sealing {
        let (done, mut hashed) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().unwrap();
            waiting.unhashed.push((sealing, done));
            waiting.coming -= 1;
            coming.0 = None;
        }
        loop {
            // Registered before looking at the queue, so that no give-up goes unseen.
            let gave_up = self.gave_up.notified();
            tokio::pin!(gave_up);
            gave_up.as_mut().enable();
            self.hash_ready().await;
            tokio::select! {
                sealing = &mut hashed => {
                    return sealing.expect("a sealing taken from the queue is hashed");
                }
                () = &mut gave_up => {}
            }
        }
    }

    /// Hashes the batches ready, on a core.
    async fn hash_ready(&self) {
        let _turn = core(Priority::Background).await;
        loop {
            let Some(batch) = self.waiting.lock().unwrap().batch() else {
                return;
            };
            self.batches.fetch_add(1, Ordering::Relaxed);
            // Runs to the end even if this task is dropped: the batch's owners wait on it.
            let hash = tokio::task::spawn_blocking(move || {
                let (mut sealings, owners): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                hash_ciphertexts(&mut sealings);
                for (sealing, owner) in sealings.into_iter().zip(owners) {
                    let _ = owner.send(sealing); // an owner that gave up drops it
                }
            });
            hash.await.expect("crypto task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn data(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>()
            .into()
    }

    /// Fails a test that would otherwise hang.
    async fn within_a_minute<T>(what: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), what)
            .await
            .expect("sealing never finished")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pads_sealed_at_once_share_full_hash_batches() {
        let sealer = Sealer::default();
        let keys: Vec<SecretKey> = (0..16).map(|_| SecretKey::random()).collect();
        let datas: Vec<Bytes> = (0..16).map(|i| data(100_000 + i * 7, i as u8)).collect();
        let seals = keys
            .iter()
            .zip(&datas)
            .map(|(sk, data)| sealer.seal(sk.clone(), 3, data.clone(), 1));
        let sealed = within_a_minute(futures::future::join_all(seals)).await;
        for ((sk, data), (pad, _)) in keys.iter().zip(&datas).zip(sealed) {
            assert!(pad.verify_signature());
            assert_eq!(&pad.decrypt_data(sk).unwrap(), data);
        }
        assert_eq!(sealer.batches(), 16 / LANES as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pad_waits_to_share_its_batch_with_one_being_encrypted() {
        let sealer = Sealer::default();
        let sk = SecretKey::random();
        let mut big = Box::pin(sealer.seal(sk.clone(), 3, data(4 << 20, 2), 0));
        let mut small = Box::pin(sealer.seal(sk.clone(), 3, data(1000, 3), 1));
        // Both are counted before either can join the queue (which takes another poll).
        assert!(futures::poll!(&mut big).is_pending());
        assert!(futures::poll!(&mut small).is_pending());
        let ((big, _), (small, _)) = within_a_minute(async { tokio::join!(big, small) }).await;
        assert_eq!(big.decrypt_data(&sk).unwrap(), data(4 << 20, 2));
        assert_eq!(small.decrypt_data(&sk).unwrap(), data(1000, 3));
        assert_eq!(sealer.batches(), 1);
    }

    #[tokio::test]
    async fn a_lone_pad_waits_for_nobody() {
        let sealer = Sealer::default();
        let sk = SecretKey::random();
        for round in 0..3 {
            let (pad, _) = within_a_minute(sealer.seal(sk.clone(), 3, data(5000, 1), round)).await;
            assert_eq!(pad.decrypt_data(&sk).unwrap(), data(5000, 1));
        }
        assert_eq!(sealer.batches(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sealing_given_up_holds_nobody_back() {
        let sealer = Sealer::default();
        let sk = SecretKey::random();
        let mut abandoned = Box::pin(sealer.seal(sk.clone(), 3, data(4 << 20, 2), 0));
        assert!(futures::poll!(&mut abandoned).is_pending());
        // Another pad is encrypted and waits for the first, still being encrypted, to join it.
        let waiting = sealer.seal(sk.clone(), 3, data(1000, 3), 1);
        let give_up = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(abandoned);
        };
        let ((pad, _), ()) = within_a_minute(async { tokio::join!(waiting, give_up) }).await;
        assert_eq!(pad.decrypt_data(&sk).unwrap(), data(1000, 3));
    }
}
