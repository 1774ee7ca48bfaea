//! Sealing pads: what goes inside a scratchpad's signed `encrypted_data`, and its signature.
//!
//! The network's nodes check a scratchpad's owner and BLS signature, never its encryption, so
//! new pads carry the project's own layout ([`Format::Aead`], `seal/aead.rs`, specified in
//! docs/format.md): AES-256-GCM in segments, from a maintained crate. The signature is still
//! made on every write, since nodes verify it; a reader whose key authenticates the pad needs
//! no signature check, since only the owner's key seals.
//!
//! Pads written before that carry autonomi's own BLS encryption ([`Format::Bls`]); they are read
//! with autonomi's code, signature and content hash checked, and resealed only when rewritten.

use autonomi::scratchpad::{Scratchpad, ScratchpadAddress};
use autonomi::{Bytes, SecretKey};
use blsttc::blstrs::G2Projective;
use blsttc::group::Curve;

mod aead;
pub use aead::{
    open_part, part_span, sealed_len, Binding, PartSpan, HEADER as AEAD_HEADER, NO_CONTENT_HASH,
    SEGMENT,
};

/// The project's tag in the high bytes of every `data_encoding` it writes ("mutant").
const ENCODING_TAG: u64 = 0x6d75_7461_6e74;

/// How a pad's bytes are sealed: byte 1 of its `data_encoding` (byte 0 says what it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// autonomi's `Scratchpad::new`: BLS encryption to the owner key. Read, no longer written.
    Bls = 0,
    /// The segmented AEAD layout of docs/format.md.
    Aead = 2,
}

impl Format {
    /// The format of a pad with this `data_encoding`, if it is one of the project's.
    pub fn of(encoding: u64) -> Option<Format> {
        if encoding >> 16 != ENCODING_TAG {
            return None;
        }
        match (encoding >> 8) & 0xff {
            0 => Some(Format::Bls),
            2 => Some(Format::Aead),
            _ => None,
        }
    }

    /// The `data_encoding` of pads of this format holding `what` (a byte of the caller's).
    pub const fn encoding(self, what: u8) -> u64 {
        ENCODING_TAG << 16 | (self as u64) << 8 | what as u64
    }
}

/// Version `counter` of the pad of `sk`, holding `data` sealed in [`Format::Aead`] for readers
/// that expect `content` (the hash the index will hold, or [`NO_CONTENT_HASH`]), and signed.
/// `encoding` must be of that format.
pub fn seal(
    sk: &SecretKey,
    encoding: u64,
    data: &[u8],
    counter: u64,
    content: [u8; 32],
) -> Scratchpad {
    debug_assert_eq!(Format::of(encoding), Some(Format::Aead));
    let owner = sk.public_key();
    let address = ScratchpadAddress::new(owner);
    let prefix = Scratchpad::bytes_for_signature(address, encoding, &Bytes::new(), counter);
    // The signed message is the prefix followed by the sealed bytes: build it once, in place.
    let mut signed = crate::buffers::take(prefix.len() + aead::sealed_len(data.len()));
    signed.extend_from_slice(&prefix);
    let binding = Binding {
        owner,
        encoding,
        counter,
        len: data.len(),
        content,
    };
    aead::seal_into(sk, &binding, data, &mut signed);
    let signature = sk.sign(&signed);
    let sealed = crate::buffers::share(signed).slice(prefix.len()..);
    Scratchpad::new_with_signature(owner, encoding, sealed, counter, signature)
}

/// The plaintext of a [`Format::Aead`] pad of `sk`, if it authenticates as version `counter`
/// sealed for `content`: nothing else opens (another version, owner, content, or damage).
pub fn open(sk: &SecretKey, pad: &Scratchpad, counter: u64, content: [u8; 32]) -> Option<Vec<u8>> {
    let binding = Binding {
        owner: *pad.owner(),
        encoding: pad.data_encoding(),
        counter,
        len: 0, // from the sealed length
        content,
    };
    let sealed = pad.encrypted_data();
    let mut out = crate::buffers::take(sealed.len());
    if aead::open_into(sk, binding, sealed, &mut out) {
        Some(out)
    } else {
        crate::buffers::give_back(out);
        None
    }
}

/// The plaintext of a [`Format::Bls`] pad, by autonomi's own code (which checks that the bytes
/// are a ciphertext; a wrong key still yields garbage: check a hash).
pub fn open_bls(sk: &SecretKey, pad: &Scratchpad) -> Option<Bytes> {
    pad.decrypt_data(sk).ok()
}

/// `pad.verify_signature()` without copying the sealed bytes: the signed message is a short
/// prefix and then those bytes, and the hash to G2 takes the prefix as its augmentation
/// (hashed first, as if the two were one message).
pub fn signature_ok(pad: &Scratchpad) -> bool {
    let prefix = Scratchpad::bytes_for_signature(
        *pad.address(),
        pad.data_encoding(),
        &Bytes::new(),
        pad.counter(),
    );
    let hash = G2Projective::hash_to_curve(pad.encrypted_data(), blsttc::DST, &prefix);
    pad.owner().verify_g2(pad.signature(), hash.to_affine())
}

/// The largest plaintext a [`Format::Aead`] pad holds within autonomi's 4 MiB scratchpad.
pub const MAX_PLAINTEXT: usize = {
    // `Scratchpad::MAX_SIZE` counts the struct's own bytes too (see `Scratchpad::size`).
    let room = crate::store::MAX_PAD_PLAINTEXT + BLS_OVERHEAD;
    let segments = room.div_ceil(SEGMENT + aead::TAG);
    room - aead::HEADER - segments * aead::TAG
};

/// Bytes blsttc's ciphertext adds to a plaintext (two curve points).
const BLS_OVERHEAD: usize = 48 + 96;

#[cfg(test)]
mod tests {
    use super::*;

    const ENCODING: u64 = Format::Aead.encoding(7);

    fn sample(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn formats_are_told_apart_by_the_encoding() {
        assert_eq!(Format::of(0x6d75_7461_6e74_0001), Some(Format::Bls));
        assert_eq!(Format::of(0x6d75_7461_6e74_0002), Some(Format::Bls));
        assert_eq!(Format::of(Format::Aead.encoding(1)), Some(Format::Aead));
        assert_eq!(Format::Bls.encoding(2), 0x6d75_7461_6e74_0002);
        assert_eq!(Format::of(0x6d75_7461_6e74_0101), None);
        assert_eq!(Format::of(7), None);
    }

    #[test]
    fn sealed_pads_are_signed_as_the_network_checks() {
        let sk = SecretKey::random();
        for len in [1, 65, 100_003, 1 << 20] {
            let data = sample(len);
            let pad = seal(&sk, ENCODING, &data, 3, [5; 32]);
            assert!(pad.verify_signature(), "len {len}");
            assert!(signature_ok(&pad), "len {len}");
            assert!(!pad.is_too_big());
            assert_eq!((pad.counter(), pad.data_encoding()), (3, ENCODING));
            assert_eq!(pad.owner(), &sk.public_key());
            assert_eq!(
                open(&sk, &pad, 3, [5; 32]).unwrap(),
                data.to_vec(),
                "len {len}"
            );
            assert!(
                open(&sk, &pad, 2, [5; 32]).is_none(),
                "stale counter, len {len}"
            );
        }
    }

    #[test]
    fn the_largest_plaintext_fits_a_scratchpad() {
        let sk = SecretKey::random();
        let data = sample(MAX_PLAINTEXT);
        let pad = seal(&sk, ENCODING, &data, 0, NO_CONTENT_HASH);
        assert!(!pad.is_too_big());
        assert_eq!(pad.size(), Scratchpad::MAX_SIZE);
        let over = seal(
            &sk,
            ENCODING,
            &sample(MAX_PLAINTEXT + 1),
            0,
            NO_CONTENT_HASH,
        );
        assert!(over.is_too_big());
    }

    #[test]
    fn pads_sealed_in_the_old_format_still_open() {
        let sk = SecretKey::random();
        let data = sample(300_001);
        let pad = Scratchpad::new(&sk, Format::Bls.encoding(1), &data, 0);
        assert!(signature_ok(&pad));
        assert_eq!(open_bls(&sk, &pad).unwrap(), data);
        // Not by the AEAD: the formats never open as each other.
        assert!(open(&sk, &pad, 0, NO_CONTENT_HASH).is_none());
    }

    #[test]
    fn tampering_is_caught() {
        let sk = SecretKey::random();
        let data = sample(10_000);
        let pad = seal(&sk, ENCODING, &data, 0, NO_CONTENT_HASH);
        let mut ct = pad.encrypted_data().to_vec();
        ct[AEAD_HEADER + 5] ^= 1;
        let bad = Scratchpad::new_with_signature(
            sk.public_key(),
            ENCODING,
            ct.into(),
            0,
            pad.signature().clone(),
        );
        assert!(!signature_ok(&bad));
        assert!(open(&sk, &bad, 0, NO_CONTENT_HASH).is_none());
        // The signed prefix counts too: another counter or encoding, same bytes.
        for (encoding, counter) in [(ENCODING, 1), (ENCODING + 1, 0)] {
            let moved = Scratchpad::new_with_signature(
                sk.public_key(),
                encoding,
                pad.encrypted_data().clone(),
                counter,
                pad.signature().clone(),
            );
            assert!(
                !signature_ok(&moved),
                "encoding {encoding} counter {counter}"
            );
            assert!(open(&sk, &moved, counter, NO_CONTENT_HASH).is_none());
        }
        assert!(signature_ok(&pad));
    }
}
