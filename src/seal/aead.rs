//! The AEAD pad layout (docs/format.md, "Sealed pads"): a salt, then the plaintext in segments
//! of [`SEGMENT`] bytes, each AES-256-GCM sealed with its own tag. The key of a pad version
//! derives from the pad's secret key and the salt; a segment's nonce is its index and whether
//! it is the last one (the STREAM construction), so segments cannot be moved, dropped or cut
//! short; the associated data binds the pad's owner, encoding, counter, plaintext length and
//! the content hash the reader expects.
//!
//! The salt of a pad whose content hash the index holds derives from the pad's key, counter and
//! that hash, so a reader of a part derives the key without fetching the salt; two sealings get
//! the same salt only as the same version of the same pad with the same plaintext, which then
//! seal to the same bytes. A pad nothing holds a hash of (the index root) gets a random salt.

use std::ops::Range;

use autonomi::{PublicKey, SecretKey};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes per segment: what a random read decrypts at least.
pub const SEGMENT: usize = 64 << 10;
/// Bytes of each segment's tag.
pub const TAG: usize = 16;
/// Bytes of the salt that starts the sealed bytes.
pub const HEADER: usize = 32;
/// HKDF's `info`: keys for this layout and nothing else.
const KEY_LABEL: &[u8] = b"mutant-mount pad seal v2 AES-256-GCM";
/// What a derived salt's HMAC starts with.
const SALT_LABEL: &[u8] = b"mutant-mount pad seal v2 salt";
/// Bytes of the associated data (see [`Binding::ad`]).
const AD_LEN: usize = 48 + 8 + 8 + 8 + 32;

/// What a pad version is sealed for, and what a reader must expect for it to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub owner: PublicKey,
    pub encoding: u64,
    pub counter: u64,
    /// Plaintext bytes.
    pub len: usize,
    /// The hash the index holds for the content, or [`NO_CONTENT_HASH`] where none does (the
    /// index root).
    pub content: [u8; 32],
}

/// The content hash of a pad that nothing holds a hash of.
pub const NO_CONTENT_HASH: [u8; 32] = [0; 32];

impl Binding {
    fn ad(&self) -> [u8; AD_LEN] {
        let mut ad = [0; AD_LEN];
        ad[..48].copy_from_slice(&self.owner.to_bytes());
        ad[48..56].copy_from_slice(&self.encoding.to_be_bytes());
        ad[56..64].copy_from_slice(&self.counter.to_be_bytes());
        ad[64..72].copy_from_slice(&(self.len as u64).to_be_bytes());
        ad[72..].copy_from_slice(&self.content);
        ad
    }
}

/// Segments of a plaintext of `len` bytes: at least one, so an empty pad still has a tag.
fn segments(len: usize) -> usize {
    len.div_ceil(SEGMENT).max(1)
}

/// Sealed bytes of a plaintext of `len` bytes.
pub fn sealed_len(len: usize) -> usize {
    HEADER + len + TAG * segments(len)
}

/// The plaintext length of `sealed` sealed bytes, if that is a length sealing makes.
pub fn plain_len(sealed: usize) -> Option<usize> {
    let body = sealed.checked_sub(HEADER)?;
    let len = body.checked_sub(TAG * body.div_ceil(SEGMENT + TAG))?;
    (sealed_len(len) == sealed).then_some(len)
}

/// The nonce of segment `index`: zeros, the index, and whether it is the last segment.
fn nonce(index: usize, last: bool) -> Nonce {
    let mut n = [0; 12];
    n[7..11].copy_from_slice(&(index as u32).to_be_bytes());
    n[11] = u8::from(last);
    // One key per pad version (a fresh salt), one index per segment: never reused.
    Nonce::assume_unique_for_key(n)
}

/// The salt of version `counter` of the pad of `sk` holding the content of hash `content`
/// (not [`NO_CONTENT_HASH`]).
fn bound_salt(sk: &SecretKey, counter: u64, content: &[u8; 32]) -> [u8; HEADER] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &sk.to_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(SALT_LABEL);
    ctx.update(&counter.to_be_bytes());
    ctx.update(content);
    ctx.sign()
        .as_ref()
        .try_into()
        .expect("HMAC-SHA256 is 32 bytes")
}

/// The key of the pad version of `sk` sealed with `salt`.
fn key(sk: &SecretKey, salt: &[u8]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, salt).extract(&sk.to_bytes());
    let okm = prk
        .expand(&[KEY_LABEL], &AES_256_GCM)
        .expect("an AES-256 key is a valid HKDF output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// Appends the sealed bytes of `data` for `binding` (whose `len` is `data.len()`) to `out`.
pub fn seal_into(sk: &SecretKey, binding: &Binding, data: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(binding.len, data.len());
    let salt = if binding.content == NO_CONTENT_HASH {
        let mut salt = [0; HEADER];
        SystemRandom::new()
            .fill(&mut salt)
            .expect("the system's random source works");
        salt
    } else {
        bound_salt(sk, binding.counter, &binding.content)
    };
    out.extend_from_slice(&salt);
    let key = key(sk, &salt);
    let ad = binding.ad();
    let count = segments(data.len());
    for index in 0..count {
        let plain =
            &data[(index * SEGMENT).min(data.len())..((index + 1) * SEGMENT).min(data.len())];
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                nonce(index, index + 1 == count),
                Aad::from(&ad),
                &mut out[start..],
            )
            .expect("a segment is far below AES-GCM's limit");
        out.extend_from_slice(tag.as_ref());
    }
}

/// The plaintext of a whole pad's sealed bytes, appended to `out`, if they are a sealing for
/// `binding` under `sk`'s key (`binding.len` is taken from the length of `sealed`).
pub fn open_into(sk: &SecretKey, binding: Binding, sealed: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(len) = plain_len(sealed.len()) else {
        return false;
    };
    let binding = Binding { len, ..binding };
    let key = key(sk, &sealed[..HEADER]);
    open_segments(&key, &binding, 0, &sealed[HEADER..], out)
}

/// Opens whole segments from `first` on, appending their plaintext to `out`.
fn open_segments(
    key: &LessSafeKey,
    binding: &Binding,
    first: usize,
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let ad = binding.ad();
    let last = segments(binding.len) - 1;
    for (i, segment) in sealed.chunks(SEGMENT + TAG).enumerate() {
        let index = first + i;
        let Some(text_len) = segment.len().checked_sub(TAG) else {
            return false;
        };
        let start = out.len();
        out.extend_from_slice(&segment[..text_len]);
        let tag: [u8; TAG] = segment[text_len..].try_into().expect("TAG bytes");
        let opened = key.open_in_place_separate_tag(
            nonce(index, index == last),
            Aad::from(&ad),
            Tag::from(tag),
            &mut out[start..],
            0..,
        );
        if opened.is_err() {
            out.truncate(start);
            return false;
        }
    }
    true
}

/// Where a part of a pad lies in its sealed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSpan {
    /// The sealed bytes of the segments the part lies in.
    pub sealed: Range<usize>,
    /// The first of those segments.
    first: usize,
    /// Where those segments' plaintext starts in the pad's plaintext.
    pub plain_start: usize,
}

/// The segments that hold plaintext bytes `from..to` (`from < to <= len`) of a pad of `len`.
pub fn part_span(len: usize, from: usize, to: usize) -> PartSpan {
    debug_assert!(from < to && to <= len);
    let first = from / SEGMENT;
    let end = to.div_ceil(SEGMENT);
    let at = |segment: usize| (HEADER + segment * (SEGMENT + TAG)).min(sealed_len(len));
    PartSpan {
        sealed: at(first)..at(end),
        first,
        plain_start: first * SEGMENT,
    }
}

/// The plaintext of the segments of `span`, from their sealed bytes, if they are a sealing for
/// `binding` (whose content hash is known) under `sk`'s key.
pub fn open_part(
    sk: &SecretKey,
    binding: &Binding,
    span: &PartSpan,
    sealed: &[u8],
) -> Option<Vec<u8>> {
    if binding.content == NO_CONTENT_HASH || sealed.len() != span.sealed.len() {
        return None;
    }
    let key = key(sk, &bound_salt(sk, binding.counter, &binding.content));
    let mut out = crate::buffers::take(sealed.len());
    if open_segments(&key, binding, span.first, sealed, &mut out) {
        Some(out)
    } else {
        crate::buffers::give_back(out);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    fn binding(sk: &SecretKey, len: usize) -> Binding {
        Binding {
            owner: sk.public_key(),
            encoding: 9,
            counter: 4,
            len,
            content: [3; 32],
        }
    }

    fn sealed(sk: &SecretKey, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_into(sk, &binding(sk, data.len()), data, &mut out);
        out
    }

    fn opens(sk: &SecretKey, binding: Binding, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        open_into(sk, binding, sealed, &mut out).then_some(out)
    }

    #[test]
    fn lengths_round_trip() {
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            4_190_208,
        ] {
            assert_eq!(plain_len(sealed_len(len)), Some(len), "len {len}");
        }
        // Lengths that no plaintext seals to.
        for bad in [0, HEADER, HEADER + TAG - 1, HEADER + SEGMENT + TAG + 5] {
            assert_eq!(plain_len(bad), None, "sealed {bad}");
        }
    }

    #[test]
    fn sealed_pads_open_to_their_plaintext() {
        let sk = SecretKey::random();
        for len in [0, 1, 1000, SEGMENT, SEGMENT + 1, 5 * SEGMENT + 77] {
            let data = sample(len);
            let s = sealed(&sk, &data);
            assert_eq!(s.len(), sealed_len(len));
            assert_eq!(opens(&sk, binding(&sk, len), &s), Some(data), "len {len}");
        }
    }

    #[test]
    fn versions_never_share_a_key() {
        let sk = SecretKey::random();
        let data = sample(1000);
        let seal = |b: Binding, data: &[u8]| {
            let mut out = Vec::new();
            seal_into(
                &sk,
                &Binding {
                    len: data.len(),
                    ..b
                },
                data,
                &mut out,
            );
            out
        };
        let one = binding(&sk, data.len());
        // Another counter or another content: another salt, so another key.
        let base = seal(one, &data);
        let mut other = data.clone();
        other[0] ^= 1;
        for (what, b, d) in [
            ("counter", Binding { counter: 5, ..one }, &data),
            (
                "content",
                Binding {
                    content: [4; 32],
                    ..one
                },
                &other,
            ),
        ] {
            let s = seal(b, d);
            assert_ne!(s[..HEADER], base[..HEADER], "{what}");
            assert_ne!(s[HEADER..HEADER + 16], base[HEADER..HEADER + 16], "{what}");
        }
        // The same version of the same content seals to the same bytes, no key reused on
        // other plaintext.
        assert_eq!(seal(one, &data), base);
        // Nothing holds the root's hash: a random salt every time.
        let root = Binding {
            content: NO_CONTENT_HASH,
            ..one
        };
        assert_ne!(seal(root, &data)[..HEADER], seal(root, &data)[..HEADER]);
    }

    #[test]
    fn anything_else_fails_to_open() {
        let sk = SecretKey::random();
        let data = sample(3 * SEGMENT + 10);
        let s = sealed(&sk, &data);
        let good = binding(&sk, data.len());
        let other_key = SecretKey::random();
        assert!(opens(&other_key, good, &s).is_none(), "another key");
        let expect = |b: Binding| opens(&sk, b, &s).is_none();
        assert!(
            expect(Binding { counter: 5, ..good }),
            "another counter (a stale pad)"
        );
        assert!(
            expect(Binding {
                content: [4; 32],
                ..good
            }),
            "another content hash"
        );
        assert!(
            expect(Binding {
                encoding: 8,
                ..good
            }),
            "another encoding"
        );
        assert!(
            expect(Binding {
                owner: other_key.public_key(),
                ..good
            }),
            "another owner (a swapped pad)"
        );
        // Damage anywhere: the salt, a segment, a tag.
        for at in [0, HEADER + 5, HEADER + SEGMENT + 3, s.len() - 1] {
            let mut bad = s.clone();
            bad[at] ^= 1;
            assert!(opens(&sk, good, &bad).is_none(), "byte {at}");
        }
        // Cut after a whole segment: the new last segment was not sealed as the last.
        let cut = &s[..HEADER + 2 * (SEGMENT + TAG)];
        assert!(opens(&sk, good, cut).is_none(), "truncated");
        // Two segments swapped.
        let mut swapped = s.clone();
        let (one, two) = (
            HEADER..HEADER + SEGMENT + TAG,
            HEADER + SEGMENT + TAG..HEADER + 2 * (SEGMENT + TAG),
        );
        swapped[one.clone()].copy_from_slice(&s[two.clone()]);
        swapped[two].copy_from_slice(&s[one]);
        assert!(opens(&sk, good, &swapped).is_none(), "reordered");
    }

    #[test]
    fn parts_open_alone() {
        let sk = SecretKey::random();
        let data = sample(5 * SEGMENT + 123);
        let s = sealed(&sk, &data);
        let good = binding(&sk, data.len());
        for (from, to) in [
            (0, 1),
            (SEGMENT - 1, SEGMENT + 1),
            (2 * SEGMENT, 3 * SEGMENT),
            (5 * SEGMENT + 7, data.len()),
            (0, data.len()),
        ] {
            let span = part_span(data.len(), from, to);
            let part = open_part(&sk, &good, &span, &s[span.sealed.clone()]).unwrap();
            let start = span.plain_start;
            assert!(start <= from && to <= start + part.len(), "{from}..{to}");
            assert_eq!(part, data[start..start + part.len()], "{from}..{to}");
        }
        // A segment read in another's place fails, as does a part of another version.
        let span = part_span(data.len(), 0, 10);
        let moved = part_span(data.len(), SEGMENT, SEGMENT + 10);
        assert!(open_part(&sk, &good, &span, &s[moved.sealed]).is_none());
        let mut other = Vec::new();
        let newer = Binding { counter: 5, ..good };
        seal_into(&sk, &newer, &data, &mut other);
        assert!(open_part(&sk, &good, &span, &other[span.sealed.clone()]).is_none());
        // A stale reader (the index's counter differs) gets nothing either.
        let stale = Binding { counter: 3, ..good };
        assert!(open_part(&sk, &stale, &span, &s[span.sealed.clone()]).is_none());
    }
}
