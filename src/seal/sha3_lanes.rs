//! SHA3-256 of several messages at once. Keccak is a chain of permutations over one 200-byte
//! state, so a single message cannot be hashed faster than one permutation after another; but
//! eight messages can share the work: lane `i` of each 512-bit register holds message `i`'s
//! state word, and AVX-512's rotate and three-input logic instructions do a whole step of the
//! permutation for all eight in about the instructions one scalar step takes.
//!
//! Sealing a pad hashes its whole ciphertext (4 MiB), the largest cost of a write; pads sealed
//! together go through here. Without AVX-512, or for a lone message, it is tiny-keccak's hash.

use tiny_keccak::{keccakf, Hasher, Sha3};

/// Bytes absorbed per permutation for SHA3-256.
const RATE: usize = 136;
const RATE_WORDS: usize = RATE / 8;
/// Messages hashed side by side.
pub const LANES: usize = 8;

/// SHA3-256 of each message, in order. Messages of like length go side by side.
pub fn sha3_256_each(messages: &[&[u8]]) -> Vec<[u8; 32]> {
    let mut out = vec![[0; 32]; messages.len()];
    let mut by_length: Vec<usize> = (0..messages.len()).collect();
    by_length.sort_by_key(|&i| std::cmp::Reverse(messages[i].len()));
    for group in by_length.chunks(LANES) {
        let group_messages: Vec<&[u8]> = group.iter().map(|&i| messages[i]).collect();
        for (&i, hash) in group.iter().zip(hash_group(&group_messages)) {
            out[i] = hash;
        }
    }
    out
}

fn hash_group(messages: &[&[u8]]) -> Vec<[u8; 32]> {
    #[cfg(target_arch = "x86_64")]
    if messages.len() > 1 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { x86::hash_group(messages) };
    }
    messages.iter().map(|m| sha3_256(m)).collect()
}

/// SHA3-256 of one message.
pub fn sha3_256(message: &[u8]) -> [u8; 32] {
    let mut sha3 = Sha3::v256();
    sha3.update(message);
    let mut out = [0; 32];
    sha3.finalize(&mut out);
    out
}

/// Finishes one message's hash from `state`, which has absorbed `message[..absorbed]` (a whole
/// number of blocks): the rest, the SHA3 padding, and the first 32 bytes squeezed out.
fn finish(mut state: [u64; 25], message: &[u8]) -> [u8; 32] {
    let mut blocks = message.chunks_exact(RATE);
    for block in &mut blocks {
        absorb(&mut state, block);
        keccakf(&mut state);
    }
    let mut last = [0u8; RATE];
    let tail = blocks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] ^= 0x06; // SHA3's domain bits and the first bit of pad10*1
    last[RATE - 1] ^= 0x80;
    absorb(&mut state, &last);
    keccakf(&mut state);
    let mut digest = [0u8; 32];
    for (out, word) in digest.chunks_exact_mut(8).zip(state) {
        out.copy_from_slice(&word.to_le_bytes());
    }
    digest
}

fn absorb(state: &mut [u64; 25], block: &[u8]) {
    for (word, bytes) in state.iter_mut().zip(block.chunks_exact(8)) {
        *word ^= u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{finish, LANES, RATE, RATE_WORDS};

    const ROUND_CONSTANTS: [u64; 24] = [
        0x0000000000000001,
        0x0000000000008082,
        0x800000000000808a,
        0x8000000080008000,
        0x000000000000808b,
        0x0000000080000001,
        0x8000000080008081,
        0x8000000000008009,
        0x000000000000008a,
        0x0000000000000088,
        0x0000000080008009,
        0x000000008000000a,
        0x000000008000808b,
        0x800000000000008b,
        0x8000000000008089,
        0x8000000000008003,
        0x8000000000008002,
        0x8000000000000080,
        0x000000000000800a,
        0x800000008000000a,
        0x8000000080008081,
        0x8000000000008080,
        0x0000000080000001,
        0x8000000080008008,
    ];

    /// ρ's rotation of the word at `x + 5y`.
    const ROTATIONS: [u32; 25] = [
        0, 1, 62, 28, 27, //
        36, 44, 6, 55, 20, //
        3, 10, 43, 25, 39, //
        41, 45, 15, 21, 8, //
        18, 2, 61, 56, 14,
    ];

    /// Hashes up to [`LANES`] messages side by side, block after block, as long as two or
    /// more still have whole blocks to take; each message's state is taken out when its last
    /// whole block is in, and finished on its own.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn hash_group(messages: &[&[u8]]) -> Vec<[u8; 32]> {
        assert!((1..=LANES).contains(&messages.len()));
        let blocks = |i: usize| messages[i].len() / RATE;
        let longest = (0..messages.len()).max_by_key(|&i| blocks(i)).unwrap_or(0);
        // Lanes read at offsets from the longest message; a lane without a message of its
        // own, or whose message is done, reads that one too (and its result is dropped).
        let base = messages[longest].as_ptr();
        let mut offsets = [0i64; LANES];
        for (offset, message) in offsets.iter_mut().zip(messages) {
            *offset = (message.as_ptr() as i64).wrapping_sub(base as i64);
        }

        let mut out = vec![[0; 32]; messages.len()];
        let mut open: Vec<usize> = (0..messages.len()).collect();
        let mut state = [_mm512_setzero_si512(); 25];
        let mut absorbed = 0;
        while open.len() > 1 {
            let until = open.iter().map(|&i| blocks(i)).min().unwrap_or(0);
            let lanes = _mm512_loadu_si512(offsets.as_ptr().cast());
            for block in absorbed..until {
                let at = base.wrapping_add(block * RATE);
                for (word, value) in state.iter_mut().take(RATE_WORDS).enumerate() {
                    // SAFETY: every lane reads a message that has this whole block.
                    let loaded = unsafe {
                        _mm512_i64gather_epi64::<1>(lanes, at.wrapping_add(8 * word).cast())
                    };
                    *value = _mm512_xor_si512(*value, loaded);
                }
                permute(&mut state);
            }
            absorbed = until;
            let words = lanes_of(&state);
            open.retain(|&i| {
                if blocks(i) > until {
                    return true;
                }
                let own = std::array::from_fn(|w| words[w][i]);
                out[i] = finish(own, &messages[i][until * RATE..]);
                offsets[i] = 0;
                false
            });
        }
        // The last one left goes on alone: one lane of eight would be slower than scalar.
        if let Some(&i) = open.first() {
            let words = lanes_of(&state);
            let own = std::array::from_fn(|w| words[w][i]);
            out[i] = finish(own, &messages[i][absorbed * RATE..]);
        }
        out
    }

    /// Each state word, lane by lane.
    #[target_feature(enable = "avx512f")]
    fn lanes_of(state: &[__m512i; 25]) -> [[u64; LANES]; 25] {
        let mut words = [[0u64; LANES]; 25];
        for (out, value) in words.iter_mut().zip(state) {
            // SAFETY: `out` is 64 bytes.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), *value) };
        }
        words
    }

    /// Keccak-f[1600] on eight states at once.
    #[target_feature(enable = "avx512f")]
    fn permute(a: &mut [__m512i; 25]) {
        for rc in ROUND_CONSTANTS {
            // θ: each word takes in the parity of the column before it and of the column
            // after it, rotated by one.
            let column = |x: usize| {
                let three = _mm512_ternarylogic_epi64::<0x96>(a[x], a[x + 5], a[x + 10]);
                _mm512_ternarylogic_epi64::<0x96>(three, a[x + 15], a[x + 20])
            };
            let parity: [__m512i; 5] = std::array::from_fn(column);
            for x in 0..5 {
                let before = parity[(x + 4) % 5];
                let after = _mm512_rol_epi64::<1>(parity[(x + 1) % 5]);
                for y in 0..5 {
                    a[x + 5 * y] = _mm512_ternarylogic_epi64::<0x96>(a[x + 5 * y], before, after);
                }
            }
            // ρ and π: rotate each word and move it to (y, 2x + 3y).
            let mut b = [_mm512_setzero_si512(); 25];
            for x in 0..5 {
                for y in 0..5 {
                    let rotation = _mm512_set1_epi64(i64::from(ROTATIONS[x + 5 * y]));
                    b[y + 5 * ((2 * x + 3 * y) % 5)] = _mm512_rolv_epi64(a[x + 5 * y], rotation);
                }
            }
            // χ: a ^ (!b & c) along each row.
            for y in 0..5 {
                for x in 0..5 {
                    a[x + 5 * y] = _mm512_ternarylogic_epi64::<0xd2>(
                        b[x + 5 * y],
                        b[(x + 1) % 5 + 5 * y],
                        b[(x + 2) % 5 + 5 * y],
                    );
                }
            }
            // ι
            a[0] = _mm512_xor_si512(a[0], _mm512_set1_epi64(rc as i64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 977) >> 9) as u8)
            .collect()
    }

    #[test]
    fn every_message_gets_its_own_sha3() {
        // Lengths around the block size, equal and unequal, and groups of every size up to
        // more than one group.
        let lengths = [
            0,
            1,
            135,
            136,
            137,
            271,
            272,
            4096,
            100_003,
            136 * 50,
            9,
            300_000,
        ];
        for count in 1..=lengths.len() {
            for shift in [0, 5] {
                let messages: Vec<Vec<u8>> = (0..count)
                    .map(|i| message(lengths[(i + shift) % lengths.len()], i))
                    .collect();
                let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                let expected: Vec<[u8; 32]> = refs.iter().map(|m| sha3_256(m)).collect();
                assert_eq!(sha3_256_each(&refs), expected, "{count} messages");
            }
        }
    }

    #[test]
    fn equal_messages_in_a_group_hash_equal() {
        let one = message(1 << 20, 3);
        let refs = vec![one.as_slice(); 8];
        let hashes = sha3_256_each(&refs);
        assert!(hashes.iter().all(|h| *h == sha3_256(&one)));
    }

    #[test]
    fn the_known_answer() {
        // FIPS 202 SHA3-256("abc").
        let abc = b"abc".as_slice();
        let expected = "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532";
        for hash in sha3_256_each(&[abc, abc, abc]) {
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, expected);
        }
    }
}
