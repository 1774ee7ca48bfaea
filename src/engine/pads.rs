//! Pad I/O: derive the key, seal (encrypt and sign on the crypto pool, `crypto_pool.rs`),
//! write with the right operation and counter; read, verify the signature and the plaintext
//! hash.

use std::sync::Arc;

use tokio::sync::Semaphore;

use autonomi::{Bytes, PublicKey, SecretKey};

use super::blocks::{open_hashing, PadBlocks, BLOCK_LEN};
use super::crypto_pool::{blocking, Sealer};
use super::error::{Error, Result};
use crate::codec::HashKind;
use crate::index::PadRef;
use crate::keys::MasterKey;
use crate::seal::{StreamKey, HEADER};
use crate::store::{PadStore, StoreError};

/// `data_encoding` of pads holding file data.
pub const DATA_ENCODING: u64 = 0x6d75_7461_6e74_0001;
/// `data_encoding` of index root and page pads.
pub const INDEX_ENCODING: u64 = 0x6d75_7461_6e74_0002;

pub struct PadIo {
    store: Arc<dyn PadStore>,
    master: MasterKey,
    /// Bounds the pad gets in flight (but a reader's own, see [`Priority`]); a pad being
    /// decrypted no longer holds a place, so read-ahead can keep the store busy while the cores
    /// catch up.
    gets: Semaphore,
    sealer: Sealer,
}

/// Pad gets in flight unless the engine says otherwise (`EngineOptions::parallelism`).
const DEFAULT_GETS_IN_FLIGHT: usize = 16;

impl PadIo {
    pub fn new(store: Arc<dyn PadStore>, master: MasterKey) -> Self {
        Self::with_gets_in_flight(store, master, DEFAULT_GETS_IN_FLIGHT)
    }

    pub fn with_gets_in_flight(store: Arc<dyn PadStore>, master: MasterKey, gets: usize) -> Self {
        PadIo {
            store,
            master,
            gets: Semaphore::new(gets.max(1)),
            sealer: Sealer::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn PadStore> {
        &self.store
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// Writes `data` to a pad: the pad with its new counter, and how to read parts of it.
    pub async fn write(&self, pad: PadRef, encoding: u64, data: Bytes) -> Result<Written> {
        let seed = pad.seed;
        // A scalar multiplication: microseconds, no need to leave the async worker.
        let sk = self.master.pad_key(&seed);
        let (counter, owner, key) = self.write_with_key(sk, pad.counter, encoding, data).await?;
        Ok(Written {
            pad: PadRef {
                seed,
                counter: Some(counter),
            },
            owner,
            key,
        })
    }

    /// Writes with an explicit key: update if the pad is known to exist, else create; either
    /// falls back to the other, and a stale counter is raised past the stored one.
    async fn write_with_key(
        &self,
        sk: SecretKey,
        known: Option<u64>,
        encoding: u64,
        data: Bytes,
    ) -> Result<(u64, PublicKey, StreamKey)> {
        let mut counter = known.map_or(0, |c| c + 1);
        let mut update = known.is_some();
        for _ in 0..3 {
            let sealing = self
                .sealer
                .seal(sk.clone(), encoding, data.clone(), counter);
            let (pad, key) = sealing.await;
            let owner = *pad.owner();
            let result = if update {
                self.store.update(pad).await
            } else {
                self.store.create(pad).await
            };
            match result {
                Ok(()) => return Ok((counter, owner, key)),
                Err(StoreError::NotFound) if update => {
                    update = false;
                    counter = 0;
                }
                Err(StoreError::StaleCounter { stored, .. }) => {
                    update = true;
                    counter = stored + 1;
                }
                Err(StoreError::AlreadyExists) => {
                    let current = self.store.get(&owner).await?;
                    update = true;
                    counter = current.counter() + 1;
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
        let (pad, _) = self.sealer.seal(sk, encoding, data, counter).await;
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

    /// Reads a data or page pad and checks its plaintext against `hash`.
    pub async fn read(&self, pad: &PadRef, hash: [u8; 32], kind: HashKind) -> Result<Bytes> {
        let read = self.read_checked(pad, hash, kind, Priority::Background);
        Ok(read.await?.0)
    }

    /// [`read`](Self::read), also returning what it takes to read parts of this version of
    /// the pad later (for BLAKE3 chunks of more than one block).
    pub async fn read_checked(
        &self,
        pad: &PadRef,
        hash: [u8; 32],
        kind: HashKind,
        priority: Priority,
    ) -> Result<(Bytes, Option<PadBlocks>)> {
        let sk = self.master.pad_key(&pad.seed);
        let (opened, _) = self
            .fetch_and_open(sk, Some((hash, kind)), priority)
            .await?;
        Ok((opened.data, opened.blocks))
    }

    /// Reads the pad owned by `sk`, verified; returns its plaintext and counter.
    pub async fn read_with_key(
        &self,
        sk: SecretKey,
        hash: Option<([u8; 32], HashKind)>,
    ) -> Result<(Bytes, u64)> {
        let (opened, counter) = self.fetch_and_open(sk, hash, Priority::Background).await?;
        Ok((opened.data, counter))
    }

    /// Fetches and verifies a whole pad. The signature check and the decryption are two crypto
    /// tasks, so an idle machine runs them side by side (a random read waits for the longer
    /// one, not both).
    async fn fetch_and_open(
        &self,
        sk: SecretKey,
        hash: Option<([u8; 32], HashKind)>,
        priority: Priority,
    ) -> Result<(Opened, u64)> {
        let owner = sk.public_key();
        let pad = {
            let _place = match priority {
                Priority::Background => Some(self.gets.acquire().await.expect("never closed")),
                Priority::Reader => None,
            };
            self.store.get(&owner).await?
        };
        let corrupt = |why: &str| corrupt_pad(&owner, why);
        if pad.owner() != &owner {
            return Err(corrupt("pad of another owner"));
        }
        let counter = pad.counter();
        let signed = blocking(priority, {
            let pad = pad.clone();
            move || crate::seal::signature_ok(&pad)
        });
        let opened = blocking(priority, move || match hash {
            // The hash check below stands in for blsttc's ciphertext check (see seal.rs).
            Some((hash, kind)) => {
                let (data, blocks) = match kind {
                    HashKind::Blake3 => {
                        let key = crate::seal::stream_key(&sk, &pad).ok_or("cannot decrypt")?;
                        let (data, root, cvs) = open_hashing(&key, &pad.encrypted_data()[HEADER..]);
                        if root != hash {
                            crate::buffers::give_back(data);
                            return Err("content hash mismatch");
                        }
                        let len = data.len();
                        (data, PadBlocks::new(owner, key, cvs, len))
                    }
                    _ => {
                        let data =
                            crate::seal::open_unchecked(&sk, &pad).ok_or("cannot decrypt")?;
                        if kind.hash(&data) != hash {
                            return Err("content hash mismatch");
                        }
                        (data, None)
                    }
                };
                let data = crate::buffers::share(data);
                Ok(Opened { data, blocks })
            }
            None => pad
                .decrypt_data(&sk)
                .map(|data| Opened { data, blocks: None })
                .map_err(|_| "cannot decrypt"),
        });
        let (signed, opened) = tokio::join!(signed, opened);
        if !signed {
            return Err(corrupt("bad signature"));
        }
        Ok((opened.map_err(corrupt)?, counter))
    }

    /// Bytes `from..to` of a pad's plaintext, reading only the blocks they lie in, checked
    /// against `blocks` (from a whole read of the pad). `Ok(None)` if the store serves whole
    /// pads only; an error if the stored blocks are not the version `blocks` describes (a newer
    /// version, or damage: reading the pad whole tells which).
    pub async fn read_part(
        &self,
        blocks: &Arc<PadBlocks>,
        from: usize,
        to: usize,
        priority: Priority,
    ) -> Result<Option<Bytes>> {
        let span = blocks.span(from, to);
        let stored = span.start + HEADER..span.end + HEADER;
        let Some(ciphertext) = self.store.get_part(blocks.owner(), stored).await? else {
            return Ok(None);
        };
        // A few blocks take microseconds; more go to the crypto pool.
        let plain = if span.len() <= 4 * BLOCK_LEN {
            blocks.open(span.clone(), &ciphertext)
        } else {
            let (blocks, span) = (blocks.clone(), span.clone());
            blocking(priority, move || blocks.open(span, &ciphertext)).await
        };
        match plain {
            Some(plain) => Ok(Some(
                crate::buffers::share(plain).slice(from - span.start..to - span.start),
            )),
            None => Err(corrupt_pad(
                blocks.owner(),
                "a block differs from the version read",
            )),
        }
    }
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

/// A pad version just written.
pub struct Written {
    pub pad: PadRef,
    pub owner: PublicKey,
    pub key: StreamKey,
}

/// A pad's checked plaintext, and what reading parts of it takes.
struct Opened {
    data: Bytes,
    blocks: Option<PadBlocks>,
}

fn corrupt_pad(owner: &PublicKey, why: &str) -> Error {
    Error::CorruptPad {
        pad: owner.to_hex()[..16].to_string(),
        why: why.to_string(),
    }
}
