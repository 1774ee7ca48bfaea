//! How the index is laid out in pads. The root pad, at a key derived from the master key alone,
//! lists the page pads (each with the hash of its bytes) and the free list (in free-list pages
//! and a tail). Pages are written copy-on-write to other pads; the root is updated last, so the
//! root update is the commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::segments::SegmentRef;
use super::{Entry, PadRef};
use crate::codec::{self, CodecError, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    pub pad: PadRef,
    pub hash: [u8; 32],
}

/// A page of the free list: `len` pads, in a pad whose record hashes to `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreePageRef {
    pub pad: PadRef,
    pub hash: [u8; 32],
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Counts commits; also tells another machine's commit from ours.
    pub generation: u64,
    pub scratchpad_size: u32,
    /// One slot per page (a power of two of them); `None` for an empty page.
    pub pages: Vec<Option<PageRef>>,
    /// The free list is the pads of these pages in order, then `free_tail`.
    pub free_pages: Vec<FreePageRef>,
    /// The end of the free list, where pads are taken and returned: most commits change only
    /// this, and write no free-list page.
    pub free_tail: Vec<PadRef>,
}

/// The root of format versions 1 to 3: the whole free list inline.
#[derive(Deserialize)]
struct RootV3 {
    generation: u64,
    scratchpad_size: u32,
    pages: Vec<Option<PageRef>>,
    free_pads: Vec<PadRef>,
}

impl Root {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(Kind::IndexRoot, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let root = match codec::open(Kind::IndexRoot, bytes)? {
            (1..=3, body) => {
                let old: RootV3 = codec::decode_body(body)?;
                Root {
                    generation: old.generation,
                    scratchpad_size: old.scratchpad_size,
                    pages: old.pages,
                    free_pages: Vec::new(),
                    free_tail: old.free_pads,
                }
            }
            (_, body) => codec::decode_body(body)?,
        };
        if !root.pages.len().is_power_of_two() || root.scratchpad_size == 0 {
            return Err(CodecError::Decode("malformed index root".into()));
        }
        Ok(root)
    }
}

pub fn encode_free_page(pads: &[PadRef]) -> Result<Vec<u8>, CodecError> {
    codec::encode(Kind::FreeListPage, &pads)
}

/// A free-list page, checked against the length its root gives.
pub fn decode_free_page(bytes: &[u8], len: u32) -> Result<Vec<PadRef>, CodecError> {
    let pads: Vec<PadRef> = codec::decode(Kind::FreeListPage, bytes)?;
    if pads.len() != len as usize {
        return Err(CodecError::Decode(format!(
            "free-list page of {} pads where the root says {len}",
            pads.len()
        )));
    }
    Ok(pads)
}

/// An index page: its entries, and where the chunks of its large files are (a large file's
/// entry holds no chunks in the page; `segments.rs`). Before format version 6 a page was its
/// entries alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub entries: BTreeMap<String, Entry>,
    pub segments: BTreeMap<String, Vec<SegmentRef>>,
}

pub fn encode_page(page: &Page) -> Result<Vec<u8>, CodecError> {
    codec::encode(Kind::IndexPage, page)
}

pub fn decode_page(bytes: &[u8]) -> Result<Page, CodecError> {
    let entries = match codec::open(Kind::IndexPage, bytes)? {
        (1, body) => {
            let old: BTreeMap<String, super::v1::Entry> = codec::decode_body(body)?;
            old.into_iter().map(|(k, e)| (k, e.into())).collect()
        }
        (2, body) => {
            let old: BTreeMap<String, super::v2::Entry> = codec::decode_body(body)?;
            old.into_iter().map(|(k, e)| (k, e.into())).collect()
        }
        (3..=5, body) => codec::decode_body(body)?,
        (_, body) => return codec::decode_body(body),
    };
    Ok(Page {
        entries,
        segments: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Chunk, ChunkMap, Meta};

    /// A root as format version 3 wrote it, with the free list inline, loads as a root whose
    /// free list is all tail.
    #[test]
    fn roots_of_format_version_3_are_still_read() {
        #[derive(Serialize)]
        struct RootV3 {
            generation: u64,
            scratchpad_size: u32,
            pages: Vec<Option<PageRef>>,
            free_pads: Vec<PadRef>,
        }
        let free: Vec<PadRef> = (0..3).map(|_| PadRef::fresh()).collect();
        let old = RootV3 {
            generation: 7,
            scratchpad_size: 4096,
            pages: vec![None, None],
            free_pads: free.clone(),
        };
        let mut bytes = codec::encode(Kind::IndexRoot, &old).unwrap();
        bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
        let read = Root::decode(&bytes).unwrap();
        assert_eq!(
            read,
            Root {
                generation: 7,
                scratchpad_size: 4096,
                pages: vec![None, None],
                free_pages: Vec::new(),
                free_tail: free.clone(),
            }
        );
        assert_eq!(Root::decode(&read.encode().unwrap()).unwrap(), read);

        let page = encode_free_page(&free).unwrap();
        assert_eq!(decode_free_page(&page, 3).unwrap(), free);
        assert!(decode_free_page(&page, 2).is_err());
    }

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
        let read = decode_page(&bytes).unwrap().entries;
        assert_eq!(
            read["old"].chunks,
            ChunkMap::from_ordered([Chunk::in_pad(
                pad,
                5,
                [7; 32],
                crate::codec::HashKind::Sha256
            )])
        );

        // And a page of today's format round-trips, inline bytes and segments included.
        let mut today = Page::default();
        today.entries.insert(
            "new".to_string(),
            Entry {
                chunks: ChunkMap::from_ordered([Chunk::inline(b"small".to_vec())]),
                size: 5,
                meta: Meta::file(),
                link: None,
            },
        );
        let segment = SegmentRef {
            first: 4096,
            chunks: 600,
            pad: PadRef::fresh(),
            hash: [3; 32],
        };
        (today.segments).insert("big".to_string(), vec![segment]);
        today
            .entries
            .insert("big".to_string(), Entry::empty(Meta::file()));
        assert_eq!(decode_page(&encode_page(&today).unwrap()).unwrap(), today);

        // A page of format version 5 is its entries alone.
        let mut bytes = codec::encode(Kind::IndexPage, &today.entries).unwrap();
        bytes[8..10].copy_from_slice(&5u16.to_le_bytes());
        let read = decode_page(&bytes).unwrap();
        assert_eq!(read.entries, today.entries);
        assert!(read.segments.is_empty());
    }

    /// A chunk as format version 2 wrote it.
    #[derive(Serialize)]
    struct ChunkV2 {
        pad: Option<PadRef>,
        len: u32,
        hash: [u8; 32],
        hash_kind: crate::codec::HashKind,
        inline: Option<Vec<u8>>,
    }

    impl ChunkV2 {
        fn hole(len: u32) -> Self {
            ChunkV2 {
                pad: None,
                len,
                hash: [0; 32],
                hash_kind: crate::codec::HashKind::Blake3,
                inline: None,
            }
        }
    }

    /// A page as format version 2 wrote it: every chunk of a file listed, holes included.
    #[derive(Serialize)]
    struct EntryV2 {
        chunks: Vec<ChunkV2>,
        size: u64,
        meta: Meta,
    }

    /// A 1 TiB sparse file took a 10 MB entry in format version 2, more than a pad holds: the
    /// file system could no longer commit nor mount. Read now, its entry holds only its data.
    #[test]
    fn a_sparse_file_of_format_version_2_shrinks_to_its_data() {
        let chunk = 4_190_208u64;
        let size = 1u64 << 40;
        let count = size.div_ceil(chunk);
        let data = Chunk::inline(b"end".to_vec());
        let mut chunks: Vec<ChunkV2> = (0..count - 1)
            .map(|_| ChunkV2::hole(chunk as u32))
            .collect();
        chunks.push(ChunkV2 {
            pad: None,
            len: 3,
            hash: data.hash,
            hash_kind: data.hash_kind,
            inline: Some(b"end".to_vec()),
        });
        let mut page = BTreeMap::new();
        page.insert(
            "disk.img".to_string(),
            EntryV2 {
                chunks,
                size,
                meta: Meta::file(),
            },
        );
        let mut bytes = codec::encode(Kind::IndexPage, &page).unwrap();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert!(bytes.len() > 8 << 20, "{} bytes", bytes.len());
        let read = decode_page(&bytes).unwrap();
        let entry = &read.entries["disk.img"];
        assert_eq!(entry.size, size);
        assert_eq!(
            entry.chunks.iter().collect::<Vec<_>>(),
            vec![(count - 1, &data)]
        );
        assert!(encode_page(&read).unwrap().len() < 200);
    }
}
