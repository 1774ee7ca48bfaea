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
    codec::decode(Kind::IndexPage, bytes)
}
