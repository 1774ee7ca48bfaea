//! Pad I/O: derive the key, seal and sign (on the crypto pool, `crypto_pool.rs`), write with
//! the right operation and counter; read and open by the pad's format (`seal.rs`). A pad sealed
//! with the AEAD opens only as the version (counter) and content (hash) the index expects, so
//! its signature is not checked again; a pad of the old BLS format has its signature and
//! plaintext hash checked.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::sync::Semaphore;

use autonomi::{Bytes, PublicKey, SecretKey};

use super::crypto_pool::blocking;
use super::error::{Error, Result};
use crate::codec::HashKind;
use crate::index::PadRef;
use crate::keys::{MasterKey, PadSeed};
use crate::seal::{self, Binding, Format, NO_CONTENT_HASH, SEGMENT};
use crate::store::{PadStore, StoreError};

/// `data_encoding` of pads holding file data.
pub const DATA_ENCODING: u64 = Format::Aead.encoding(1);
/// `data_encoding` of index root and page pads.
pub const INDEX_ENCODING: u64 = Format::Aead.encoding(2);
/// `data_encoding` of packs: pads shared by small pieces (`pack.rs`).
pub const PACK_ENCODING: u64 = Format::Aead.encoding(3);
/// The same, of the BLS-encrypted pads of earlier versions: read, never written.
pub const BLS_DATA_ENCODING: u64 = Format::Bls.encoding(1);
pub const BLS_INDEX_ENCODING: u64 = Format::Bls.encoding(2);

pub struct PadIo {
    store: Arc<dyn PadStore>,
    master: MasterKey,
    /// Bounds the pad gets in flight (but a reader's own, see [`Priority`]); a pad being
    /// opened no longer holds a place, so read-ahead can keep the store busy while the cores
    /// catch up.
    gets: Semaphore,
    /// Public keys of pads read in part lately (see [`OWNERS_KEPT`]).
    owners: Mutex<LruCache<PadSeed, PublicKey>>,
    /// Free pads by the version of the index root from which on no root names them, as this
    /// mount freed them: passed on with the pad's next write ([`PadStore::update_freed`]).
    /// A pad not here (free when the mount started) is written with no such promise.
    freed: Mutex<HashMap<PadSeed, u64>>,
}

/// Waits before asking a network again, every node of the pad's close group this time
/// ([`PadStore::get_newest`]), for a pad that came back older than the index's version: nodes
/// back from a while away hold the versions from before it, and can form a majority. One of
/// the group holds the new version unless it is still spreading. Within the default `--timeout`.
const STALE_RETRIES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// See [`PadIo::upload_waits`].
pub struct UploadWaits<'a> {
    freed: std::sync::MutexGuard<'a, HashMap<PadSeed, u64>>,
    settled: Option<u64>,
}

impl UploadWaits<'_> {
    /// 0 if a write of free pad `seed` may go at once (free since before this mount, or freed
    /// with a root the destination holds), else the root version it waits for.
    pub fn of(&self, seed: &PadSeed) -> u64 {
        match (self.freed.get(seed), self.settled) {
            (None, _) => 0,
            (Some(&root), Some(settled)) if root <= settled => 0,
            (Some(&root), _) => root,
        }
    }
}

/// Pad gets in flight unless the engine says otherwise (`EngineOptions::parallelism`).
const DEFAULT_GETS_IN_FLIGHT: usize = 16;

/// Pads whose public key (their address) a random reader keeps: deriving one is a scalar
/// multiplication, several times the CPU of the part read it is for. 48 bytes each.
const OWNERS_KEPT: usize = 4096;

/// Segments a part read opens on the async worker (microseconds); more go to the crypto pool.
const INLINE_PART_SEGMENTS: usize = 2;

impl PadIo {
    pub fn new(store: Arc<dyn PadStore>, master: MasterKey) -> Self {
        Self::with_gets_in_flight(store, master, DEFAULT_GETS_IN_FLIGHT)
    }

    pub fn with_gets_in_flight(store: Arc<dyn PadStore>, master: MasterKey, gets: usize) -> Self {
        PadIo {
            store,
            master,
            gets: Semaphore::new(gets.max(1)),
            owners: Mutex::new(LruCache::new(
                NonZeroUsize::new(OWNERS_KEPT).expect("not zero"),
            )),
            freed: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn PadStore> {
        &self.store
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// `pads` are named by no index root from version `root` on: the root just written
    /// released them. Kept only for a store with a use for it (`PadStore::orders_by_root`).
    pub fn note_freed(&self, pads: impl IntoIterator<Item = PadSeed>, root: u64) {
        if !self.store.orders_by_root() {
            return;
        }
        let mut freed = self.freed.lock().unwrap();
        freed.extend(pads.into_iter().map(|seed| (seed, root)));
    }

    /// How long writes of free pads would wait to reach the store's destination, as of now
    /// ([`UploadWaits::of`]); holds the freed list while it lives.
    pub fn upload_waits(&self) -> UploadWaits<'_> {
        UploadWaits {
            freed: self.freed.lock().unwrap(),
            settled: self.store.settled_root(),
        }
    }

    /// Forgets every pad noted as freed: the index was replaced by one this mount did not
    /// write (another machine's, after a conflict).
    pub fn forget_freed(&self) {
        self.freed.lock().unwrap().clear();
    }

    /// Writes `data`, whose hash the index will hold as `content`, to a pad: the pad with its
    /// new counter.
    pub async fn write(
        &self,
        pad: PadRef,
        encoding: u64,
        data: Bytes,
        content: [u8; 32],
    ) -> Result<PadRef> {
        let seed = pad.seed;
        // A scalar multiplication: microseconds, no need to leave the async worker.
        let sk = self.master.pad_key(&seed);
        // Taken, not read: if this write is abandoned and the pad freed again, it goes back
        // with no promise, which only costs an upload its head start.
        let freed = self.freed.lock().unwrap().remove(&seed);
        let counter = self
            .write_with_key(sk, pad.counter, encoding, data, content, freed)
            .await?;
        Ok(PadRef {
            seed,
            counter: Some(counter),
        })
    }

    /// Writes with an explicit key: update if the pad is known to exist, else create; either
    /// falls back to the other, and a stale counter is raised past the stored one. `freed`:
    /// the root version from which on no root names the pad, if known.
    async fn write_with_key(
        &self,
        sk: SecretKey,
        known: Option<u64>,
        encoding: u64,
        data: Bytes,
        content: [u8; 32],
        freed: Option<u64>,
    ) -> Result<u64> {
        let mut counter = known.map_or(0, |c| c + 1);
        let mut update = known.is_some();
        for _ in 0..3 {
            let pad = sealed(&sk, encoding, &data, counter, content).await;
            let owner = *pad.owner();
            let result = if update {
                match freed {
                    Some(root) => self.store.update_freed(pad, root).await,
                    None => self.store.update(pad).await,
                }
            } else {
                self.store.create(pad).await
            };
            match result {
                Ok(()) => return Ok(counter),
                Err(StoreError::NotFound) if update => {
                    update = false;
                    counter = 0;
                }
                Err(StoreError::StaleCounter { stored, .. }) => {
                    update = true;
                    counter = stored + 1;
                }
                Err(StoreError::AlreadyExists) => {
                    update = true;
                    counter = self.store.counter(&owner).await? + 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Permanent("pad write kept racing another writer".into()).into())
    }

    /// Writes the index root: exactly one counter past the one we loaded. Finding the root
    /// already moved on means another writer committed since: a conflict, never overwritten.
    pub async fn write_root(
        &self,
        sk: SecretKey,
        known: Option<u64>,
        encoding: u64,
        data: Bytes,
    ) -> Result<u64> {
        let counter = known.map_or(0, |c| c + 1);
        // Nothing holds the root's hash: a fresh machine finds it by its key alone.
        let pad = sealed(&sk, encoding, &data, counter, NO_CONTENT_HASH).await;
        let result = match known {
            Some(_) => self.store.update(pad).await,
            None => self.store.create(pad).await,
        };
        match result {
            Ok(()) => Ok(counter),
            Err(StoreError::StaleCounter { .. } | StoreError::AlreadyExists) => {
                Err(Error::Conflict)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a data or page pad and checks it holds the content of hash `hash`.
    pub async fn read(&self, pad: &PadRef, hash: [u8; 32], kind: HashKind) -> Result<Bytes> {
        self.read_checked(pad, hash, kind, Priority::Background)
            .await
    }

    /// [`read`](Self::read), waiting as `priority` says.
    pub async fn read_checked(
        &self,
        pad: &PadRef,
        hash: [u8; 32],
        kind: HashKind,
        priority: Priority,
    ) -> Result<Bytes> {
        let sk = self.master.pad_key(&pad.seed);
        let read = self.fetch_and_open(sk, pad.counter, Some((hash, kind)), priority);
        Ok(read.await?.0)
    }

    /// Reads a pack: the version the index holds, its plaintext bound to no content hash (each
    /// piece is checked by its own).
    pub async fn read_pack(&self, pad: &PadRef, priority: Priority) -> Result<Bytes> {
        let sk = self.master.pad_key(&pad.seed);
        Ok(self
            .fetch_and_open(sk, pad.counter, None, priority)
            .await?
            .0)
    }

    /// Reads the pad owned by `sk`, whatever its counter; returns its plaintext and counter.
    pub async fn read_with_key(
        &self,
        sk: SecretKey,
        hash: Option<([u8; 32], HashKind)>,
    ) -> Result<(Bytes, u64)> {
        self.fetch_and_open(sk, None, hash, Priority::Background)
            .await
    }

    /// Fetches and opens a whole pad, expected at `counter` if the caller knows it. A version
    /// older than that from a network is asked for again a few times (see [`STALE_RETRIES`]);
    /// a copy that does not open is not kept by a caching store either way. A pad whose version
    /// nothing vouches for (the index root) is asked of every node that may hold it.
    async fn fetch_and_open(
        &self,
        sk: SecretKey,
        counter: Option<u64>,
        hash: Option<([u8; 32], HashKind)>,
        priority: Priority,
    ) -> Result<(Bytes, u64)> {
        let owner = sk.public_key();
        let remote = self.store.is_remote();
        let mut newest = counter.is_none() && remote;
        let mut retries = STALE_RETRIES.iter();
        loop {
            let pad = {
                let _place = match priority {
                    Priority::Background => Some(self.gets.acquire().await.expect("never closed")),
                    Priority::Reader => None,
                };
                if newest {
                    self.store.get_newest(&owner).await?
                } else {
                    self.store.get(&owner).await?
                }
            };
            let stale = counter.is_some_and(|c| pad.counter() < c);
            let opened = self
                .open_fetched(sk.clone(), pad, counter, hash, priority)
                .await;
            if opened.is_ok() {
                return opened;
            }
            self.store.forget_fetched(&owner);
            match retries.next() {
                Some(wait) if stale && remote => {
                    tracing::debug!(pad = ?owner, "an older version than the index's; asking every holder");
                    tokio::time::sleep(*wait).await;
                    newest = true;
                }
                _ => return opened,
            }
        }
    }

    /// Fetches a data or page pad and checks everything about it: its signature (which reads
    /// otherwise leave to the nodes, who check it on write), its owner, and that it opens as
    /// the version and content the index holds (`hash`; `None` for a pack). For `fsck`; returns
    /// the plaintext.
    pub async fn verify(&self, pad: &PadRef, hash: Option<([u8; 32], HashKind)>) -> Result<Bytes> {
        let sk = self.master.pad_key(&pad.seed);
        let owner = sk.public_key();
        let fetched = {
            let _place = self.gets.acquire().await.expect("never closed");
            self.store.get_newest(&owner).await?
        };
        let (checked, signed) = blocking(Priority::Background, move || {
            let signed = seal::signature_ok(&fetched);
            (fetched, signed)
        })
        .await;
        if !signed {
            return Err(corrupt_pad(&owner, "bad signature"));
        }
        let opened = self.open_fetched(sk, checked, pad.counter, hash, Priority::Background);
        opened.await.map(|(data, _)| data)
    }

    /// Opens a fetched pad: see [`fetch_and_open`](Self::fetch_and_open).
    async fn open_fetched(
        &self,
        sk: SecretKey,
        pad: autonomi::scratchpad::Scratchpad,
        counter: Option<u64>,
        hash: Option<([u8; 32], HashKind)>,
        priority: Priority,
    ) -> Result<(Bytes, u64)> {
        let owner = sk.public_key();
        let corrupt = |why: &str| corrupt_pad(&owner, why);
        if pad.owner() != &owner {
            return Err(corrupt("pad of another owner"));
        }
        let stored = pad.counter();
        match Format::of(pad.data_encoding()) {
            Some(Format::Aead) => {
                let expected = counter.unwrap_or(stored);
                let content = hash.map_or(NO_CONTENT_HASH, |(hash, _)| hash);
                let open = move || seal::open(&sk, &pad, expected, content);
                match blocking(priority, open).await {
                    Some(data) => Ok((crate::buffers::share(data), stored)),
                    None if stored != expected => Err(corrupt(&format!(
                        "version {stored} where the index expects {expected}"
                    ))),
                    None => Err(corrupt("does not authenticate")),
                }
            }
            Some(Format::Bls) => {
                let data = open_bls(sk, pad, hash, priority).await.map_err(corrupt)?;
                Ok((data, stored))
            }
            None => Err(corrupt(&format!(
                "unknown data encoding {:#x}",
                pad.data_encoding()
            ))),
        }
    }

    /// Bytes `from..to` of the data pad `pad` holding `len` bytes of hash `hash`, reading and
    /// opening only the segments they lie in. `Ok(None)` if the store serves whole pads only
    /// or the pad's counter is unknown; an error if the segments do not open as that version
    /// and content (a pad of the old format, another version, or damage: reading the pad whole
    /// tells which).
    pub async fn read_part(
        &self,
        pad: &PadRef,
        len: usize,
        hash: [u8; 32],
        range: std::ops::Range<usize>,
        priority: Priority,
    ) -> Result<Option<Bytes>> {
        let to = range.end.min(len);
        let Some(counter) = pad.counter.filter(|_| range.start < to) else {
            return Ok(None);
        };
        let from = range.start;
        let sk = self.master.pad_key(&pad.seed);
        let owner = self.owner(&pad.seed, &sk);
        let span = seal::part_span(len, from, to);
        let Some(sealed) = self.store.get_part(&owner, span.sealed.clone()).await? else {
            return Ok(None);
        };
        let binding = Binding {
            owner,
            encoding: DATA_ENCODING,
            counter,
            len,
            content: hash,
        };
        let start = span.plain_start;
        let open = move || seal::open_part(&sk, &binding, &span, &sealed);
        let plain = if to - start <= INLINE_PART_SEGMENTS * SEGMENT {
            open()
        } else {
            blocking(priority, open).await
        };
        match plain {
            Some(plain) => Ok(Some(
                crate::buffers::share(plain).slice(from - start..to - start),
            )),
            None => Err(corrupt_pad(&owner, "a part does not authenticate")),
        }
    }
}

impl PadIo {
    /// The public key of the pad of `seed`, whose secret key is `sk`.
    fn owner(&self, seed: &PadSeed, sk: &SecretKey) -> PublicKey {
        if let Some(owner) = self.owners.lock().unwrap().get(seed) {
            return *owner;
        }
        let owner = sk.public_key();
        self.owners.lock().unwrap().put(*seed, owner);
        owner
    }
}

/// Seals on the crypto pool.
async fn sealed(
    sk: &SecretKey,
    encoding: u64,
    data: &Bytes,
    counter: u64,
    content: [u8; 32],
) -> autonomi::scratchpad::Scratchpad {
    let (sk, data) = (sk.clone(), data.clone());
    let seal = move || seal::seal(&sk, encoding, &data, counter, content);
    blocking(Priority::Background, seal).await
}

/// Opens a pad of the old BLS format: its signature checked (the ciphertext is not
/// authenticated otherwise) beside its decryption, and its plaintext against `hash`.
async fn open_bls(
    sk: SecretKey,
    pad: autonomi::scratchpad::Scratchpad,
    hash: Option<([u8; 32], HashKind)>,
    priority: Priority,
) -> std::result::Result<Bytes, &'static str> {
    let signed = blocking(priority, {
        let pad = pad.clone();
        move || seal::signature_ok(&pad)
    });
    let opened = blocking(priority, move || {
        let data = seal::open_bls(&sk, &pad).ok_or("cannot decrypt")?;
        match hash {
            Some((hash, kind)) if kind.hash(&data) != hash => Err("content hash mismatch"),
            _ => Ok(data),
        }
    });
    let (signed, opened) = tokio::join!(signed, opened);
    if !signed {
        return Err("bad signature");
    }
    opened
}

/// Who waits for a pad read. Read-ahead, index pages and checks wait for one of the places
/// that bound the gets in flight, then for a core; a reader's own chunk waits for neither, so
/// it never queues behind the read-ahead it started (which holds every place at the start of
/// a file, and, when a round of gets lands at once, every core). There are at most as many
/// reader gets as FUSE requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Reader,
    Background,
}

fn corrupt_pad(owner: &PublicKey, why: &str) -> Error {
    Error::CorruptPad {
        pad: owner.to_hex()[..16].to_string(),
        why: why.to_string(),
    }
}
