//! How an open file is being read, told from the FUSE reads alone: a stream, for which whole
//! chunks are fetched ahead, or reads here and there, which get only the blocks they need.
//!
//! The kernel asks only for bytes its page cache lacks. A file read again after some of its
//! pages were evicted arrives as a sequence of short reads with gaps between them: a stream by
//! its offsets, but fetching whole chunks for it would decrypt everything the kernel already
//! holds. So a stream counts as one only while its reads ask for most of the bytes they pass.

/// The most chunks a sequential reader has fetched ahead of it: twice the pad gets in flight
/// (16 by default), so that while the cores decrypt a round of chunks that has landed, the
/// store is already fetching the next one.
const MAX_READAHEAD_CHUNKS: u64 = 32;
/// The window of a read at the start of a file: a reader from the start usually reads on.
const FIRST_READAHEAD_CHUNKS: u64 = 4;
/// Over a network, where a small first round of gets costs a whole round trip, the first
/// window is the whole window at once: the second round of gets starts as the first lands,
/// not once the reader has its first chunk decrypted.
const FIRST_READAHEAD_CHUNKS_REMOTE: u64 = MAX_READAHEAD_CHUNKS;

#[derive(Debug)]
pub struct ReadPattern {
    chunk_size: u64,
    /// Where the stream has reached: the furthest end of its reads.
    reach: u64,
    /// Reads in a row that began near where the one before ended.
    near_reads: u32,
    readahead_chunks: u64,
    /// Bytes recent reads asked for, and bytes the stream's reach moved over meanwhile, both
    /// halved whenever the reach has moved two chunks: a window over the last chunk or two.
    asked: u64,
    passed: u64,
    /// Reads that were neither part of a stream nor near one.
    random_reads: u64,
}

/// What one read should fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPlan {
    /// Only the bytes asked for (the blocks they lie in, where the store serves parts).
    Part,
    /// Whole chunks, and this many chunks after the read's end ahead of the reader.
    Stream { ahead: u64 },
}

impl ReadPattern {
    pub fn new(chunk_size: u64) -> Self {
        ReadPattern {
            chunk_size,
            reach: 0,
            near_reads: 0,
            // A file opened and read from its start is a stream from the first read.
            readahead_chunks: 1,
            asked: 0,
            passed: 0,
            random_reads: 0,
        }
    }

    /// Takes note of a read of `offset..end` and says what to fetch for it. `remote`: each get
    /// is a round trip and only whole pads are served, so a stream with gaps fetches whole
    /// chunks anyway, and had better fetch them ahead.
    pub fn observe(&mut self, offset: u64, end: u64, remote: bool) -> ReadPlan {
        let cs = self.chunk_size;
        // The kernel's own read-ahead requests reach us out of order (several FUSE threads),
        // so a read within a chunk of where the last one ended continues a stream. A random
        // reader lands that near its last read now and then (one read in a third of the file's
        // chunks), so a stream starts only at the start of the file or with two near reads in
        // a row.
        let near = offset.abs_diff(self.reach) <= cs;
        self.near_reads = if near { self.near_reads + 1 } else { 0 };
        let streaming = self.readahead_chunks > 0;
        let sequential = offset == 0 || (near && streaming) || self.near_reads >= 2;
        if !sequential {
            self.readahead_chunks = 0;
            self.reach = end;
            self.asked = end - offset;
            self.passed = end - offset;
            self.random_reads += 1;
            return ReadPlan::Part;
        }
        self.asked += end - offset;
        self.passed += end.saturating_sub(self.reach);
        self.reach = self.reach.max(end);
        if self.passed > 2 * cs {
            self.asked /= 2;
            self.passed /= 2;
        }
        let dense = 2 * self.asked >= self.passed;
        if !remote && !dense {
            self.readahead_chunks = 0;
            return ReadPlan::Part;
        }
        let first = match offset {
            0 if remote => FIRST_READAHEAD_CHUNKS_REMOTE,
            0 => FIRST_READAHEAD_CHUNKS,
            _ => 1,
        };
        self.readahead_chunks = (self.readahead_chunks * 2).clamp(first, MAX_READAHEAD_CHUNKS);
        ReadPlan::Stream {
            ahead: self.readahead_chunks,
        }
    }

    /// How many reads so far landed away from any stream.
    pub fn random_reads(&self) -> u64 {
        self.random_reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 4 << 20;
    const KIB: u64 = 1024;

    fn read(p: &mut ReadPattern, offset: u64, len: u64) -> ReadPlan {
        p.observe(offset, offset + len, false)
    }

    #[test]
    fn a_sequential_reader_streams_with_a_growing_window() {
        let mut p = ReadPattern::new(CS);
        let mut windows = Vec::new();
        for i in 0..8 {
            match read(&mut p, i * 128 * KIB, 128 * KIB) {
                ReadPlan::Stream { ahead } => windows.push(ahead),
                ReadPlan::Part => panic!("read {i} of a sequential reader was not a stream"),
            }
        }
        assert_eq!(windows, [4, 8, 16, 32, 32, 32, 32, 32]);
    }

    #[test]
    fn reads_out_of_order_by_a_few_requests_still_stream() {
        let mut p = ReadPattern::new(CS);
        for i in [0u64, 2, 1, 3, 5, 4, 7, 6, 9, 8, 11, 10] {
            assert!(
                matches!(
                    read(&mut p, i * 128 * KIB, 128 * KIB),
                    ReadPlan::Stream { .. }
                ),
                "request {i}"
            );
        }
    }

    #[test]
    fn random_reads_fetch_only_their_bytes() {
        let mut p = ReadPattern::new(CS);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20 {
            // xorshift: offsets all over a 1 GiB file
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % (1 << 18)) * 4096;
            assert_eq!(read(&mut p, at, 4 * KIB), ReadPlan::Part, "read at {at}");
        }
    }

    /// A file whose page cache lost a page here and there: the kernel asks for the holes.
    #[test]
    fn reads_that_skip_most_bytes_fetch_only_their_bytes() {
        let mut p = ReadPattern::new(CS);
        let mut at = 64 * KIB;
        let mut streamed = 0;
        while at < 64 * CS {
            if read(&mut p, at, 8 * KIB) != ReadPlan::Part {
                streamed += 1;
            }
            at += 200 * KIB;
        }
        assert_eq!(streamed, 0);
    }

    #[test]
    fn a_stream_that_goes_on_past_a_cached_stretch_streams_again() {
        let mut p = ReadPattern::new(CS);
        for i in 0..8 {
            read(&mut p, i * 128 * KIB, 128 * KIB);
        }
        // The kernel holds the next 3 chunks, then nothing.
        let mut at = 8 * 128 * KIB + 3 * CS;
        let plans: Vec<_> = (0..40)
            .map(|_| {
                let plan = read(&mut p, at, 128 * KIB);
                at += 128 * KIB;
                plan
            })
            .collect();
        assert_eq!(plans[0], ReadPlan::Part, "the jump is not a stream");
        assert!(
            matches!(plans.last(), Some(ReadPlan::Stream { ahead: 32 })),
            "{plans:?}"
        );
    }

    #[test]
    fn over_a_network_a_sparse_stream_still_fetches_ahead() {
        let mut p = ReadPattern::new(CS);
        let mut at = 64 * KIB;
        let mut plan = ReadPlan::Part;
        for _ in 0..10 {
            plan = p.observe(at, at + 8 * KIB, true);
            at += 200 * KIB;
        }
        assert_eq!(plan, ReadPlan::Stream { ahead: 32 });
    }
}
