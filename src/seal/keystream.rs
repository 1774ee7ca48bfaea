//! `input ⊕ K`, where `K` is the low byte of each 32-bit word of the ChaCha20 stream (what
//! blsttc's `xor_with_hash` computes: it draws one word per message byte). That is 16 MiB of
//! stream for a 4 MiB pad, the largest cost of opening a pad and the second of sealing one.
//!
//! With AVX-512, sixteen blocks are computed at once, one per 32-bit lane: register `j` holds
//! word `j` of the sixteen blocks, so the rounds need no shuffles, and only the low bytes ever
//! leave the registers (one `vpmovdb` a word, then a 16 x 16 byte transpose puts each block's
//! bytes in order). Elsewhere, and for the unaligned ends, the chacha20 crate's stream.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;

/// Message bytes handed to `out` at a time.
const STEP: usize = 4096;
/// Message bytes per sixteen blocks: one per word.
const GROUP: usize = 16 * 16;

/// `input ⊕ K` from word `offset` of the stream keyed by `key`, handed to `out` a piece at a
/// time (the caller's buffer is written once, not zeroed first).
pub fn xor(key: &[u8; 32], offset: usize, input: &[u8], mut out: impl FnMut(&[u8])) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // The crate up to a group boundary, then whole groups here.
        done = ((GROUP - offset % GROUP) % GROUP).min(input.len());
        with_crate(key, offset, &input[..done], &mut out);
        let whole = done + (input.len() - done) / GROUP * GROUP;
        let words = std::array::from_fn(|i| {
            u32::from_le_bytes(key[4 * i..4 * i + 4].try_into().expect("4 bytes"))
        });
        let mut block = [0u8; STEP];
        for piece in input[done..whole].chunks(STEP) {
            let block = &mut block[..piece.len()];
            let first_block = ((offset + done) / 16) as u64;
            // SAFETY: the CPU has AVX-512F; `piece` is whole groups, as long as `block`.
            unsafe { x86::xor_groups(&words, first_block, piece, block) };
            out(block);
            done += piece.len();
        }
    }
    with_crate(key, offset + done, &input[done..], &mut out);
}

/// [`xor`] with the chacha20 crate's key stream, from any word on.
fn with_crate(key: &[u8; 32], offset: usize, input: &[u8], out: &mut impl FnMut(&[u8])) {
    if input.is_empty() {
        return;
    }
    // rand_chacha's ChaCha20Rng (64-bit counter) and IETF ChaCha20 with a zero nonce (32-bit
    // counter) give the same stream for the first 256 GiB: far more than a pad.
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher.seek(4 * offset as u64);
    let mut words = [0u8; 4 * STEP];
    let mut block = [0u8; STEP];
    for piece in input.chunks(STEP) {
        let stream = &mut words[..4 * piece.len()];
        cipher.write_keystream(stream);
        let block = &mut block[..piece.len()];
        for ((o, &i), word) in block.iter_mut().zip(piece).zip(stream.chunks_exact(4)) {
            *o = i ^ word[0];
        }
        out(block);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::GROUP;

    /// "expand 32-byte k"
    const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

    /// `out = input ⊕ K` for whole groups of sixteen blocks, the first being block
    /// `first_block` of the stream.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn xor_groups(key: &[u32; 8], first_block: u64, input: &[u8], out: &mut [u8]) {
        assert!(input.len().is_multiple_of(GROUP) && input.len() == out.len());
        for (g, (input, out)) in input
            .chunks_exact(GROUP)
            .zip(out.chunks_exact_mut(GROUP))
            .enumerate()
        {
            // The same 32-bit counter as IETF ChaCha20 (see `with_crate`).
            let counter = first_block.wrapping_add(16 * g as u64) as u32;
            xor_group(key, counter, input, out);
        }
    }

    /// `out = input ⊕ K` for the sixteen blocks from `counter` on. Written so that the
    /// compiler keeps it all in registers whatever surrounds it: once, an unrelated change
    /// elsewhere in the crate made it spill the state to the stack on every round and run the
    /// transposition as a loop through memory, a key stream 28% slower. Never inlined, the
    /// start words read again for the final addition, the transposition written out.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn xor_group(key: &[u32; 8], counter: u32, input: &[u8], out: &mut [u8]) {
        assert!(input.len() == GROUP && out.len() == GROUP);
        let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let start = |key: &[u32; 8], counter: u32, j: usize| match j {
            0..4 => _mm512_set1_epi32(CONSTANTS[j] as i32),
            4..12 => _mm512_set1_epi32(key[j - 4] as i32),
            12 => _mm512_add_epi32(_mm512_set1_epi32(counter as i32), lanes),
            _ => _mm512_setzero_si512(),
        };
        let mut x: [__m512i; 16] = std::array::from_fn(|j| start(key, counter, j));
        for _ in 0..10 {
            quarter_round(&mut x, 0, 4, 8, 12);
            quarter_round(&mut x, 1, 5, 9, 13);
            quarter_round(&mut x, 2, 6, 10, 14);
            quarter_round(&mut x, 3, 7, 11, 15);
            quarter_round(&mut x, 0, 5, 10, 15);
            quarter_round(&mut x, 1, 6, 11, 12);
            quarter_round(&mut x, 2, 7, 8, 13);
            quarter_round(&mut x, 3, 4, 9, 14);
        }
        // The start words again, for the final addition, read anew from memory (black_box
        // hides that they are the ones above): kept in registers through the rounds, they
        // left too few for the state, which went to the stack.
        let (key, counter) = std::hint::black_box((key, counter));
        // Row j: the low byte of word j of each of the sixteen blocks.
        let rows: [__m128i; 16] = std::array::from_fn(|j| {
            _mm512_cvtepi32_epi8(_mm512_add_epi32(x[j], start(key, counter, j)))
        });
        // Four rounds of interleaving rows i and i + 8 transpose 16 x 16 bytes: row b is
        // then block b's sixteen bytes, in word order.
        let t = interleave(interleave(interleave(interleave(rows))));
        for (b, stream) in t.into_iter().enumerate() {
            // SAFETY: `16 * b + 16 <= GROUP`, the length of both slices.
            unsafe {
                let message = _mm_loadu_si128(input.as_ptr().add(16 * b).cast());
                let xored = _mm_xor_si128(message, stream);
                _mm_storeu_si128(out.as_mut_ptr().add(16 * b).cast(), xored);
            }
        }
    }

    /// Rows `i` and `i + 8` interleaved byte by byte into rows `2i` and `2i + 1`. Written out
    /// (no loop, no branch on the parity), so that the sixteen rows stay in registers.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn interleave(t: [__m128i; 16]) -> [__m128i; 16] {
        [
            _mm_unpacklo_epi8(t[0], t[8]),
            _mm_unpackhi_epi8(t[0], t[8]),
            _mm_unpacklo_epi8(t[1], t[9]),
            _mm_unpackhi_epi8(t[1], t[9]),
            _mm_unpacklo_epi8(t[2], t[10]),
            _mm_unpackhi_epi8(t[2], t[10]),
            _mm_unpacklo_epi8(t[3], t[11]),
            _mm_unpackhi_epi8(t[3], t[11]),
            _mm_unpacklo_epi8(t[4], t[12]),
            _mm_unpackhi_epi8(t[4], t[12]),
            _mm_unpacklo_epi8(t[5], t[13]),
            _mm_unpackhi_epi8(t[5], t[13]),
            _mm_unpacklo_epi8(t[6], t[14]),
            _mm_unpackhi_epi8(t[6], t[14]),
            _mm_unpacklo_epi8(t[7], t[15]),
            _mm_unpackhi_epi8(t[7], t[15]),
        ]
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn quarter_round(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(key: &[u8; 32], offset: usize, input: &[u8], crate_only: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if crate_only {
            with_crate(key, offset, input, &mut |piece: &[u8]| {
                out.extend_from_slice(piece)
            });
        } else {
            xor(key, offset, input, |piece| out.extend_from_slice(piece));
        }
        out
    }

    #[test]
    fn every_offset_and_length_matches_the_crate_stream() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let input: Vec<u8> = (0..100_000).map(|i| (i * 7 % 251) as u8).collect();
        for offset in [0, 1, 15, 16, 255, 256, 257, 4095, 4096, 70_000] {
            for len in [0, 1, 16, 255, 256, 257, 4096, 4097, 9000, 30_000] {
                let input = &input[..len];
                assert_eq!(
                    collect(&key, offset, input, false),
                    collect(&key, offset, input, true),
                    "offset {offset} len {len}"
                );
            }
        }
    }

    #[test]
    fn the_stream_is_chacha20_low_bytes() {
        // RFC 7539 appendix A.1, test vector 1: all-zero key and nonce, block 0 begins with
        // the words 0xade0b876, 0x903df1a0, 0xe56a5d40, 0x28bd8653.
        let key = [0u8; 32];
        let zeros = [0u8; GROUP];
        let low = collect(&key, 0, &zeros, false);
        assert_eq!(&low[..4], &[0x76, 0xa0, 0x40, 0x53]);
    }
}
