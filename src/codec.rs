//! The on-store encoding of everything the engine writes besides file data: a magic, a format
//! version, a kind, a SHA-256 of the body and the bincode body. The hash catches what the
//! scratchpad signature cannot: a pad decrypted with the wrong key yields garbage, not an error.

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MUTANTMT";
/// Bump when the encoded structures change; old versions stay decodable or are refused clearly.
/// 2: chunks may hold inline bytes.
/// 3: a file's chunks are a map by chunk number without its holes (`index::ChunkMap`).
/// 4: the root holds the free list in free-list pages and a tail (`index::persist::Root`).
/// 5: a chunk may be a piece of a pack (`Chunk::pad_offset`), which an older program cannot
///    read; the encoding is version 4's.
/// 6: an index page lists, beside its entries, the chunk segments of its large files
///    (`index::segments`).
/// Records of every earlier version are still read (docs/format.md).
pub const FORMAT_VERSION: u16 = 6;
const HEADER_LEN: usize = 8 + 2 + 1 + 32;

/// What a blob holds, so a page can never be mistaken for a root or a pad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    IndexRoot = 1,
    IndexPage = 2,
    PadRecord = 3,
    /// A local journal record (never in the store).
    JournalRecord = 4,
    /// The header of a pad file in the local store (its encrypted bytes follow it unencoded).
    PadHeader = 5,
    /// A page of the free list (`index::persist::FreePageRef`).
    FreeListPage = 6,
    /// A segment of a large file's chunks (`index::segments`).
    ChunkSegment = 7,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("not a mutant-mount record (bad magic): wrong master key or corrupt data")]
    BadMagic,
    #[error("format version {0} is newer than this program understands ({FORMAT_VERSION})")]
    Version(u16),
    #[error("expected a {expected:?} record, found kind {found}")]
    WrongKind { expected: Kind, found: u8 },
    #[error("record checksum mismatch: corrupt data")]
    Checksum,
    #[error("cannot decode record: {0}")]
    Decode(String),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Whether `bytes` start like a record of this codec.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// How a chunk's content hash was made.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum HashKind {
    /// Chunks written since format version 2: BLAKE3, many times faster than SHA-256 on CPUs
    /// without SHA extensions, where hashing was a fifth of the CPU a pad costs.
    #[default]
    Blake3,
    /// Chunks of format version 1 pages.
    Sha256,
}

impl HashKind {
    pub fn hash(self, data: &[u8]) -> [u8; 32] {
        match self {
            HashKind::Blake3 => blake3::hash(data).into(),
            HashKind::Sha256 => sha256(data),
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&sha256(&body));
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, CodecError> {
    let (_, body) = open(kind, bytes)?;
    decode_body(body)
}

/// Checks a record's header and checksum; returns its format version and body.
pub fn open(kind: Kind, bytes: &[u8]) -> Result<(u16, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version > FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    if bytes[10] != kind as u8 {
        return Err(CodecError::WrongKind {
            expected: kind,
            found: bytes[10],
        });
    }
    let body = &bytes[HEADER_LEN..];
    if sha256(body)[..] != bytes[11..HEADER_LEN] {
        return Err(CodecError::Checksum);
    }
    Ok((version, body))
}

/// Decodes a body `open` returned, as the structure of its version.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode("trailing bytes".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_kind_of_damage_is_refused() {
        let value = (String::from("hello"), vec![1u64, 2, 3]);
        let bytes = encode(Kind::IndexPage, &value).unwrap();
        let back: (String, Vec<u64>) = decode(Kind::IndexPage, &bytes).unwrap();
        assert_eq!(back, value);

        assert_eq!(
            decode::<(String, Vec<u64>)>(Kind::IndexRoot, &bytes).unwrap_err(),
            CodecError::WrongKind {
                expected: Kind::IndexRoot,
                found: 2
            }
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode::<(String, Vec<u64>)>(Kind::IndexPage, &flipped).unwrap_err(),
            CodecError::Checksum
        );
        assert_eq!(
            decode::<(String, Vec<u64>)>(Kind::IndexPage, &bytes[..20]).unwrap_err(),
            CodecError::BadMagic
        );
        let mut newer = bytes.clone();
        newer[8] = 0xff;
        assert!(matches!(
            decode::<(String, Vec<u64>)>(Kind::IndexPage, &newer).unwrap_err(),
            CodecError::Version(_)
        ));
    }
}
