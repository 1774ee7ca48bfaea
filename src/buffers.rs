//! A few megabyte buffers kept for reuse. Buffers of megabytes come straight from `mmap` (the
//! allocator is bounded in `main.rs` so that a long write does not keep its peak), and each
//! fresh one costs a page fault and a zeroed page per 4 KiB: a quarter of the CPU of a
//! sequential write went there. Chunk buffers now go back here when their last user drops
//! them, up to `KEPT` of them, and the next chunk reuses one. The payloads of FUSE writes
//! (up to 1 MiB each, copied out of fuser's buffer so the write can wait in a task) have a
//! pool of their own, so that they never push chunk buffers out.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers kept at most (64 MiB of 4 MiB chunks).
const KEPT: usize = 16;
/// Only buffers this big are worth keeping; smaller ones come from the allocator's heap.
const MIN_KEPT_CAPACITY: usize = 1 << 20;
const MAX_KEPT_CAPACITY: usize = 8 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Write payloads kept at most, and the size from which one is worth keeping: the allocator
/// maps anything from its 256 KiB threshold up afresh.
const REQUESTS_KEPT: usize = 8;
const MIN_REQUEST: usize = 256 << 10;
/// The largest write FUSE sends (`max_write`).
pub const MAX_REQUEST: usize = 1 << 20;

static REQUESTS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A copy of a FUSE write's payload; give it back with [`give_back_request`].
pub fn copy_request(data: &[u8]) -> Vec<u8> {
    if !(MIN_REQUEST..=MAX_REQUEST).contains(&data.len()) {
        return data.to_vec();
    }
    let mut buf = REQUESTS
        .lock()
        .unwrap()
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(MAX_REQUEST));
    buf.clear();
    buf.extend_from_slice(data);
    buf
}

/// Keeps a payload from [`copy_request`] for the next write.
pub fn give_back_request(buf: Vec<u8>) {
    if buf.capacity() == MAX_REQUEST {
        let mut kept = REQUESTS.lock().unwrap();
        if kept.len() < REQUESTS_KEPT {
            kept.push(buf);
        }
    }
}

/// An empty buffer that can hold `capacity` bytes without growing.
pub fn take(capacity: usize) -> Vec<u8> {
    if (MIN_KEPT_CAPACITY..=MAX_KEPT_CAPACITY).contains(&capacity) {
        let mut pool = POOL.lock().unwrap();
        if let Some(at) = pool.iter().position(|b| b.capacity() >= capacity) {
            let mut buf = pool.swap_remove(at);
            buf.clear();
            return buf;
        }
        // Whole MiBs, so that a buffer fits whichever chunk-sized use comes next (a pad file,
        // a ciphertext, a plaintext are a few hundred bytes apart).
        return Vec::with_capacity(capacity.next_multiple_of(1 << 20));
    }
    Vec::with_capacity(capacity)
}

/// `buf` as `Bytes` that return it to the pool when the last clone is dropped.
pub fn share(buf: Vec<u8>) -> Bytes {
    if (MIN_KEPT_CAPACITY..=MAX_KEPT_CAPACITY).contains(&buf.capacity()) {
        Bytes::from_owner(Returned(buf))
    } else {
        Bytes::from(buf)
    }
}

/// Returns a buffer from [`take`] that is no longer needed.
pub fn give_back(buf: Vec<u8>) {
    drop(share(buf));
}

/// A copy of `data` in a buffer of the pool, with room to grow to `capacity`.
pub fn copy_of(data: &[u8], capacity: usize) -> Vec<u8> {
    let mut buf = take(capacity.max(data.len()));
    buf.extend_from_slice(data);
    buf
}

struct Returned(Vec<u8>);

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let mut pool = POOL.lock().unwrap();
        if pool.len() < KEPT {
            pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_chunk_buffer_is_reused_and_small_ones_are_not_kept() {
        let mut buf = take(4 << 20);
        buf.extend_from_slice(b"chunk");
        let ptr = buf.as_ptr();
        let shared = share(buf);
        let clone = shared.clone();
        drop(shared);
        assert_eq!(&clone[..], b"chunk");
        drop(clone);
        // Other tests share the pool: look for our buffer among a few takes.
        let taken: Vec<Vec<u8>> = (0..KEPT).map(|_| take(4 << 20)).collect();
        assert!(taken.iter().any(|b| b.as_ptr() == ptr && b.is_empty()));

        let small = share(Vec::with_capacity(1000));
        drop(small);
        assert!(POOL.lock().unwrap().iter().all(|b| b.capacity() >= 1 << 20));
    }

    #[test]
    fn a_write_payload_is_reused_and_small_ones_are_plain_copies() {
        let data = vec![7u8; 512 << 10];
        let first = copy_request(&data);
        assert_eq!(first, data);
        let ptr = first.as_ptr();
        give_back_request(first);
        // Other tests share the pool: look for our buffer among a few copies.
        let copies: Vec<Vec<u8>> = (0..REQUESTS_KEPT).map(|_| copy_request(&data)).collect();
        assert!(copies.iter().all(|c| *c == data));
        assert!(copies.iter().any(|c| c.as_ptr() == ptr));

        let small = copy_request(b"tiny");
        assert_eq!(small, b"tiny");
        give_back_request(small);
        assert!(REQUESTS
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.capacity() == MAX_REQUEST));
    }
}
