//! A large file's chunk map, stored outside its index page. A page is rewritten whole when any
//! of its keys changes and has to fit one pad, so a file of many chunks keeps its chunks in
//! segments of their own (each a record in a pad) and the page holds only references to them.
//! A segment covers an aligned window of chunk numbers, so a change rewrites the segments of
//! the windows it touched and nothing else: appending to a file rewrites its last segment, a
//! write in the middle of a disk image the one around it.

use serde::{Deserialize, Serialize};

use super::{Chunk, ChunkMap, PadRef};
use crate::codec::{self, sha256, CodecError, Kind};

/// Chunk numbers per window: at about 80 bytes a chunk a window is about 160 KiB, and with
/// every chunk holding 1 KiB inline (the most a chunk holds inline now) still within a pad.
pub const WINDOW_CHUNKS: u64 = 2048;

/// An entry with more chunks than this keeps them in segments; fewer stay in its page.
pub const SEGMENT_AFTER: usize = 512;

/// The most windows one file's data may lie in: the references stay a few hundred KiB, well
/// within a page. At the default chunk size a 16 TiB file spans about 2,050 windows, so only
/// a file system made with chunks under 2 MiB can reach this, with data scattered widely.
pub const MAX_WINDOWS: usize = 4096;

/// A segment's plaintext must leave room in a pad for the record header.
const SEGMENT_MAX_BYTES: usize = crate::seal::MAX_PLAINTEXT - 4096;

/// Where one segment of a file's chunks is stored: the chunks numbered from `first` up to the
/// next segment's `first`, `chunks` of them, in a pad whose record hashes to `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub first: u64,
    pub chunks: u32,
    pub pad: PadRef,
    pub hash: [u8; 32],
}

/// A segment to store: its first chunk number, how many chunks, its record and the record's
/// hash.
pub struct Segment {
    pub first: u64,
    pub chunks: u32,
    pub bytes: Vec<u8>,
    pub hash: [u8; 32],
}

/// Whether an entry with these chunks keeps them in segments.
pub fn segmented(chunks: &ChunkMap) -> bool {
    chunks.len() > SEGMENT_AFTER
}

/// Whether the data of `chunks` lies in more windows than an entry may list.
pub fn too_spread(chunks: &ChunkMap) -> bool {
    chunks.len() > MAX_WINDOWS && windows(chunks) > MAX_WINDOWS
}

/// How many windows the chunk numbers of `chunks` lie in.
pub fn windows(chunks: &ChunkMap) -> usize {
    let mut count = 0;
    let mut last = None;
    for idx in chunks.indices() {
        let window = idx / WINDOW_CHUNKS;
        if last != Some(window) {
            count += 1;
            last = Some(window);
        }
    }
    count
}

/// Cuts `chunks` into segments, one per window that holds data (a window whose record would
/// not fit a pad, which only chunks of an old format holding 4 KiB inline can make, is halved
/// until each part does).
pub fn split(chunks: &ChunkMap) -> Result<Vec<Segment>, CodecError> {
    let mut segments = Vec::new();
    let mut window: Vec<(u64, &Chunk)> = Vec::new();
    for (idx, chunk) in chunks.iter() {
        if window
            .first()
            .is_some_and(|(first, _)| first / WINDOW_CHUNKS != idx / WINDOW_CHUNKS)
        {
            encode_into(&window, &mut segments)?;
            window.clear();
        }
        window.push((idx, chunk));
    }
    if !window.is_empty() {
        encode_into(&window, &mut segments)?;
    }
    Ok(segments)
}

fn encode_into(chunks: &[(u64, &Chunk)], out: &mut Vec<Segment>) -> Result<(), CodecError> {
    let bytes = codec::encode(Kind::ChunkSegment, &chunks)?;
    if bytes.len() > SEGMENT_MAX_BYTES && chunks.len() > 1 {
        let (low, high) = chunks.split_at(chunks.len() / 2);
        encode_into(low, out)?;
        return encode_into(high, out);
    }
    out.push(Segment {
        first: chunks[0].0,
        chunks: chunks.len() as u32,
        hash: sha256(&bytes),
        bytes,
    });
    Ok(())
}

/// The chunks of a segment record, checked against its reference: as many as it says, in
/// order, from its `first` and below `end` (the next segment's first).
pub fn decode(
    bytes: &[u8],
    segment: &SegmentRef,
    end: Option<u64>,
) -> Result<Vec<(u64, Chunk)>, CodecError> {
    let chunks: Vec<(u64, Chunk)> = codec::decode(Kind::ChunkSegment, bytes)?;
    let in_order = chunks.windows(2).all(|pair| pair[0].0 < pair[1].0);
    let in_range = chunks.first().is_some_and(|(idx, _)| *idx == segment.first)
        && chunks
            .last()
            .is_some_and(|(idx, _)| end.is_none_or(|end| *idx < end));
    if chunks.len() != segment.chunks as usize || !in_order || !in_range {
        return Err(CodecError::Decode(
            "a chunk segment differs from its reference".into(),
        ));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::HashKind;

    fn map(indices: impl IntoIterator<Item = u64>) -> ChunkMap {
        let mut map = ChunkMap::default();
        for idx in indices {
            let chunk = Chunk::in_pad(PadRef::fresh(), 7, [idx as u8; 32], HashKind::default());
            map.insert(idx, chunk);
        }
        map
    }

    fn stored(segments: &[Segment]) -> Vec<SegmentRef> {
        (segments.iter())
            .map(|s| SegmentRef {
                first: s.first,
                chunks: s.chunks,
                pad: PadRef::fresh(),
                hash: s.hash,
            })
            .collect()
    }

    #[test]
    fn segments_are_windows_that_read_back_whole_and_change_alone() {
        let chunks = map((0..3000).chain([10 * WINDOW_CHUNKS + 5, 1 << 40]));
        assert_eq!(windows(&chunks), 4);
        let segments = split(&chunks).unwrap();
        let refs = stored(&segments);
        assert_eq!(
            refs.iter().map(|r| (r.first, r.chunks)).collect::<Vec<_>>(),
            [
                (0, 2048),
                (2048, 952),
                (10 * WINDOW_CHUNKS + 5, 1),
                (1 << 40, 1)
            ]
        );
        let mut back = ChunkMap::default();
        for (n, segment) in segments.iter().enumerate() {
            let end = refs.get(n + 1).map(|r| r.first);
            for (idx, chunk) in decode(&segment.bytes, &refs[n], end).unwrap() {
                back.insert(idx, chunk);
            }
        }
        assert_eq!(back, chunks);

        // A change in one window changes that segment only.
        let mut changed = chunks.clone();
        changed.insert(2500, Chunk::inline(b"new".to_vec()));
        let again = split(&changed).unwrap();
        let differ: Vec<u64> = (segments.iter().zip(&again))
            .filter(|(a, b)| a.hash != b.hash)
            .map(|(a, _)| a.first)
            .collect();
        assert_eq!(differ, [2048]);
    }

    #[test]
    fn a_segment_unlike_its_reference_is_refused() {
        let segments = split(&map(0..10)).unwrap();
        let good = stored(&segments)[0];
        assert!(decode(&segments[0].bytes, &good, Some(10)).is_ok());
        for bad in [
            SegmentRef { chunks: 9, ..good },
            SegmentRef { first: 1, ..good },
        ] {
            assert!(decode(&segments[0].bytes, &bad, None).is_err());
        }
        assert!(decode(&segments[0].bytes, &good, Some(9)).is_err());
    }

    /// Chunks of an old format held up to 4 KiB inline: a window of them is cut to fit a pad.
    #[test]
    fn a_window_too_big_for_a_pad_is_halved() {
        let mut chunks = ChunkMap::default();
        for idx in 0..WINDOW_CHUNKS {
            chunks.insert(idx, Chunk::inline(vec![idx as u8; 4096]));
        }
        let segments = split(&chunks).unwrap();
        assert!(segments.len() >= 2, "{}", segments.len());
        assert!(segments.iter().all(|s| s.bytes.len() <= SEGMENT_MAX_BYTES));
        let total: u32 = segments.iter().map(|s| s.chunks).sum();
        assert_eq!(total as u64, WINDOW_CHUNKS);
    }
}
