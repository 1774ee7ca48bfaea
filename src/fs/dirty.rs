//! The changed chunks of an open file, with their bytes and big buffers counted as they change.
//! A file written sparsely holds tens of thousands of small buffers; counting them again after
//! every write and every finished upload made writing and closing it quadratic.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use super::budget::SMALL_BUFFER;

/// Chunk number -> its changed bytes. Reads go through `Deref`; changes through the methods
/// here, which keep the counts.
#[derive(Default)]
pub struct DirtyChunks {
    map: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    /// Buffers of [`SMALL_BUFFER`] bytes or more: each holds a unit of the memory budget.
    big: usize,
}

fn is_big(len: usize) -> bool {
    len >= SMALL_BUFFER
}

impl DirtyChunks {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn big(&self) -> usize {
        self.big
    }

    fn add(&mut self, len: usize) {
        self.bytes += len;
        self.big += usize::from(is_big(len));
    }

    fn sub(&mut self, len: usize) {
        self.bytes -= len;
        self.big -= usize::from(is_big(len));
    }

    pub fn insert(&mut self, idx: u64, buf: Vec<u8>) {
        self.add(buf.len());
        if let Some(old) = self.map.insert(idx, buf) {
            self.sub(old.len());
        }
    }

    pub fn remove(&mut self, idx: u64) -> Option<Vec<u8>> {
        let buf = self.map.remove(&idx)?;
        self.sub(buf.len());
        Some(buf)
    }

    /// The buffer of chunk `idx`, to change in place.
    pub fn get_mut(&mut self, idx: u64) -> Option<BufMut<'_>> {
        let DirtyChunks { map, bytes, big } = self;
        let buf = map.get_mut(&idx)?;
        Some(BufMut {
            before: buf.len(),
            buf,
            bytes,
            big,
        })
    }

    /// Drops the chunks from `keep` on.
    pub fn truncate(&mut self, keep: u64) {
        for buf in self.map.split_off(&keep).into_values() {
            self.sub(buf.len());
        }
    }

    pub fn clear(&mut self) {
        *self = DirtyChunks::default();
    }
}

impl Deref for DirtyChunks {
    type Target = BTreeMap<u64, Vec<u8>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// A buffer being changed: its new length is counted when it is dropped.
pub struct BufMut<'a> {
    buf: &'a mut Vec<u8>,
    before: usize,
    bytes: &'a mut usize,
    big: &'a mut usize,
}

impl Deref for BufMut<'_> {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        self.buf
    }
}

impl DerefMut for BufMut<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

impl Drop for BufMut<'_> {
    fn drop(&mut self) {
        let after = self.buf.len();
        *self.bytes = *self.bytes - self.before + after;
        *self.big = *self.big - usize::from(is_big(self.before)) + usize::from(is_big(after));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recounted(chunks: &DirtyChunks) -> (usize, usize) {
        let bytes = chunks.values().map(Vec::len).sum();
        let big = chunks.values().filter(|b| is_big(b.len())).count();
        (bytes, big)
    }

    #[test]
    fn counts_follow_every_change() {
        let mut chunks = DirtyChunks::default();
        chunks.insert(1, vec![0; 10]);
        chunks.insert(2, vec![0; SMALL_BUFFER]);
        chunks.insert(1, vec![0; 20]);
        assert_eq!((chunks.bytes(), chunks.big()), recounted(&chunks));
        chunks.get_mut(1).unwrap().resize(SMALL_BUFFER + 1, 0);
        chunks.get_mut(2).unwrap().truncate(3);
        assert_eq!((chunks.bytes(), chunks.big()), recounted(&chunks));
        assert_eq!(chunks.big(), 1);
        chunks.insert(9, vec![1; SMALL_BUFFER]);
        chunks.truncate(5);
        assert_eq!((chunks.bytes(), chunks.big()), recounted(&chunks));
        assert_eq!(chunks.remove(2).map(|b| b.len()), Some(3));
        assert_eq!(chunks.remove(2), None);
        assert_eq!((chunks.bytes(), chunks.big()), (SMALL_BUFFER + 1, 1));
        chunks.clear();
        assert_eq!((chunks.bytes(), chunks.big()), (0, 0));
    }
}
