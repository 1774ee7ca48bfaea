//! How the index is laid out in pads. The root pad, at a key derived from the master key alone,
//! lists the page pads (each with the hash of its bytes) and the free pads. Pages are written
//! copy-on-write to other pads; the root is updated last, so the root update is the commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Entry, PadRef};
use crate::codec::{self, CodecError, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    pub pad: PadRef,
    pub hash: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Counts commits; also tells another machine's commit from ours.
    pub generation: u64,
    pub scratchpad_size: u32,
    /// One slot per page (a power of two of them); `None` for an empty page.
    pub pages: Vec<Option<PageRef>>,
    pub free_pads: Vec<PadRef>,
}

impl Root {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(Kind::IndexRoot, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let root: Root = codec::decode(Kind::IndexRoot, bytes)?;
        if !root.pages.len().is_power_of_two() || root.scratchpad_size == 0 {
            return Err(CodecError::Decode("malformed index root".into()));
        }
        Ok(root)
    }
}

pub fn encode_page(page: &BTreeMap<String, Entry>) -> Result<Vec<u8>, CodecError> {
    codec::encode(Kind::IndexPage, page)
}

pub fn decode_page(bytes: &[u8]) -> Result<BTreeMap<String, Entry>, CodecError> {
    match codec::open(Kind::IndexPage, bytes)? {
        (1, body) => {
            let old: BTreeMap<String, super::v1::Entry> = codec::decode_body(body)?;
            Ok(old.into_iter().map(|(k, e)| (k, e.into())).collect())
        }
        (_, body) => codec::decode_body(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Chunk, Meta};

    /// A page as format version 1 wrote it: chunks without inline bytes.
    #[derive(Serialize)]
    struct ChunkV1 {
        pad: Option<PadRef>,
        len: u32,
        hash: [u8; 32],
    }

    #[derive(Serialize)]
    struct EntryV1 {
        chunks: Vec<ChunkV1>,
        size: u64,
        meta: Meta,
    }

    #[test]
    fn pages_of_format_version_1_are_still_read() {
        let pad = PadRef::fresh();
        let mut page = BTreeMap::new();
        page.insert(
            "old".to_string(),
            EntryV1 {
                chunks: vec![ChunkV1 {
                    pad: Some(pad),
                    len: 5,
                    hash: [7; 32],
                }],
                size: 5,
                meta: Meta::file(),
            },
        );
        let mut bytes = codec::encode(Kind::IndexPage, &page).unwrap();
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        let read = decode_page(&bytes).unwrap();
        assert_eq!(
            read["old"].chunks,
            vec![Chunk {
                pad: Some(pad),
                len: 5,
                hash: [7; 32],
                hash_kind: crate::codec::HashKind::Sha256,
                inline: None,
            }]
        );

        // And a page of today's format round-trips, inline bytes included.
        let mut today = BTreeMap::new();
        today.insert(
            "new".to_string(),
            Entry {
                chunks: vec![Chunk::inline(b"small".to_vec())],
                size: 5,
                meta: Meta::file(),
            },
        );
        assert_eq!(decode_page(&encode_page(&today).unwrap()).unwrap(), today);
    }
}
