//! Scratchpad encryption and signing, byte for byte what `Scratchpad::new` and
//! `Scratchpad::decrypt_data` produce and accept, with the bulk work done at memory speed.
//!
//! blsttc encrypts a message `m` to a public key `P` with a random scalar `r` as
//! `u = r·G1`, `v = m ⊕ K`, `w = r·H(sha3(v) ‖ u)`, where `K` is the low byte of each 32-bit
//! word of the ChaCha20 stream keyed by `sha3(r·P)`; the ciphertext is `u ‖ w ‖ v`. Its own
//! code draws that stream one word per message byte through a generic sampler and copies the
//! ciphertext twice more to sign it. Here the stream is generated sixteen blocks at a time
//! (`seal/keystream.rs`), the ciphertext is built in place after the signed prefix, the signature
//! hashes that one buffer, and pads sealed together take `sha3(v)` side by side
//! ([`Sealing`], `seal/sha3_lanes.rs`).
//!
//! Reading a chunk whose plaintext hash the index holds skips blsttc's ciphertext check (a
//! SHA3 of the pad and two pairings): the owner's signature already binds the ciphertext, and
//! the hash binds the plaintext, so a pad that would fail that check fails the hash instead.
//!
//! Byte `i` of the plaintext depends only on byte `i` of `v` and word `i` of the stream, so
//! once a pad has been opened, any range of it can be decrypted from that range of the
//! ciphertext and the stream's key ([`StreamKey`], [`open_part`]).

use autonomi::scratchpad::{Scratchpad, ScratchpadAddress};
use autonomi::{Bytes, PublicKey, SecretKey};
use blsttc::blstrs::{G1Affine, G1Projective, G2Projective, Scalar};
use blsttc::group::ff::Field;
use blsttc::group::prime::PrimeCurveAffine;
use blsttc::group::Curve;

mod keystream;
mod sha3_lanes;
use sha3_lanes::sha3_256;
pub use sha3_lanes::{sha3_256_each, LANES};

const G1_BYTES: usize = 48;
const G2_BYTES: usize = 96;
/// Bytes of a ciphertext before the encrypted message: `u` and `w`.
pub const HEADER: usize = G1_BYTES + G2_BYTES;

/// The key of the stream that encrypts one version of a pad: what decrypting the pad derives
/// with a scalar multiplication, kept to decrypt parts of it later. As secret as the plaintext.
#[derive(Clone)]
pub struct StreamKey([u8; 32]);

impl StreamKey {
    fn of(shared: &G1Affine) -> Self {
        StreamKey(sha3_256(&shared.to_compressed()))
    }
}

/// `Scratchpad::new(sk, encoding, data, counter)`, faster: same format, fresh randomness.
/// (The engine seals in steps, to batch the hashes: [`Sealing`].)
pub fn seal(sk: &SecretKey, encoding: u64, data: &[u8], counter: u64) -> Scratchpad {
    Sealing::encrypt(sk, encoding, data, counter).sign().0
}

/// A pad on its way to being sealed, in the two steps around the SHA3 of its ciphertext, so
/// that pads sealed together can share that hash ([`hash_ciphertexts`]): [`encrypt`], then
/// [`sign`] (which takes the hash itself if it was not taken).
///
/// [`encrypt`]: Sealing::encrypt
/// [`sign`]: Sealing::sign
pub struct Sealing {
    sk: SecretKey,
    pk: PublicKey,
    encoding: u64,
    counter: u64,
    r: Scalar,
    u: G1Affine,
    key: StreamKey,
    /// The signed message: the prefix, room for `u` and `w`, then the encrypted message `v`.
    signed: Vec<u8>,
    /// Where the ciphertext starts in `signed`.
    start: usize,
    /// SHA3 of `v`, once taken.
    v_hash: Option<[u8; 32]>,
}

impl Sealing {
    /// Draws the randomness and encrypts `data`.
    pub fn encrypt(sk: &SecretKey, encoding: u64, data: &[u8], counter: u64) -> Self {
        let pk = sk.public_key();
        let address = ScratchpadAddress::new(pk);
        let prefix = Scratchpad::bytes_for_signature(address, encoding, &Bytes::new(), counter);

        let r = Scalar::random(&mut rand::rngs::OsRng);
        let u = (G1Affine::generator() * r).to_affine();
        let shared = (g1(&pk) * r).to_affine();

        // The signed message is the prefix followed by the ciphertext: build it once, in place.
        let start = prefix.len();
        let mut signed = crate::buffers::take(start + HEADER + data.len());
        signed.extend_from_slice(&prefix);
        signed.extend_from_slice(&[0; HEADER]);
        let key = StreamKey::of(&shared);
        keystream::xor(&key.0, 0, data, |block| signed.extend_from_slice(block));
        Sealing {
            sk: sk.clone(),
            pk,
            encoding,
            counter,
            r,
            u,
            key,
            signed,
            start,
            v_hash: None,
        }
    }

    /// The encrypted message, when blsttc hashes it to 32 bytes before hashing to G2.
    fn long_v(&self) -> Option<&[u8]> {
        let v = &self.signed[self.start + HEADER..];
        (v.len() > 64).then_some(v)
    }

    /// Completes `w` and the ciphertext, and signs.
    pub fn sign(self) -> (Scratchpad, StreamKey) {
        // blsttc's `hash_g1_g2`: a long message is hashed to 32 bytes first.
        let mut message = match self.long_v() {
            Some(v) => self.v_hash.unwrap_or_else(|| sha3_256(v)).to_vec(),
            None => self.signed[self.start + HEADER..].to_vec(),
        };
        let Sealing {
            sk,
            pk,
            encoding,
            counter,
            r,
            u,
            key,
            mut signed,
            start,
            v_hash: _,
        } = self;
        message.extend_from_slice(&u.to_compressed());
        let w = (blsttc::hash_g2(&message) * r).to_affine();
        signed[start..start + G1_BYTES].copy_from_slice(&u.to_compressed());
        signed[start + G1_BYTES..start + HEADER].copy_from_slice(&w.to_compressed());

        let signature = sk.sign(&signed);
        let ciphertext = crate::buffers::share(signed).slice(start..);
        let pad = Scratchpad::new_with_signature(pk, encoding, ciphertext, counter, signature);
        (pad, key)
    }
}

/// Takes the SHA3 of these pads' ciphertexts side by side ([`sha3_256_each`]), for
/// [`Sealing::sign`].
pub fn hash_ciphertexts(sealings: &mut [Sealing]) {
    let long: Vec<&[u8]> = sealings.iter().filter_map(Sealing::long_v).collect();
    let mut hashes = sha3_256_each(&long).into_iter();
    for sealing in sealings.iter_mut().filter(|s| s.long_v().is_some()) {
        sealing.v_hash = hashes.next();
    }
}

/// `pad.verify_signature()` without copying the ciphertext: the signed message is a short
/// prefix and then the ciphertext, and the hash to G2 takes the prefix as its augmentation
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

/// The plaintext of `pad` for `sk`, without blsttc's ciphertext check: only for pads whose
/// plaintext the caller checks against a known hash. `None` if the bytes are not a ciphertext.
pub fn open_unchecked(sk: &SecretKey, pad: &Scratchpad) -> Option<Vec<u8>> {
    let key = stream_key(sk, pad)?;
    Some(open_part(&key, 0, &pad.encrypted_data()[HEADER..]))
}

/// The key of the stream that encrypts this version of `pad` (whose message starts at
/// [`HEADER`] of `encrypted_data`); `None` if the bytes are not a ciphertext.
pub fn stream_key(sk: &SecretKey, pad: &Scratchpad) -> Option<StreamKey> {
    let ct = pad.encrypted_data();
    if ct.len() <= HEADER {
        return None;
    }
    let u: [u8; G1_BYTES] = ct[..G1_BYTES].try_into().expect("length checked");
    let u = Option::<G1Affine>::from(G1Affine::from_compressed(&u))?;
    let scalar = Option::<Scalar>::from(Scalar::from_bytes_be(&sk.to_bytes()))?;
    Some(StreamKey::of(&(u * scalar).to_affine()))
}

/// Decrypts `part`, the ciphertext of the plaintext bytes from `offset` on (that is, the bytes
/// from `HEADER + offset` of `encrypted_data`), unchecked: the caller checks a hash.
pub fn open_part(key: &StreamKey, offset: usize, part: &[u8]) -> Vec<u8> {
    let mut out = crate::buffers::take(part.len());
    open_part_into(key, offset, part, &mut out);
    out
}

/// [`open_part`], appending to `out`.
pub fn open_part_into(key: &StreamKey, offset: usize, part: &[u8], out: &mut Vec<u8>) {
    keystream::xor(&key.0, offset, part, |block| out.extend_from_slice(block));
}

fn g1(pk: &PublicKey) -> G1Projective {
    let affine = G1Affine::from_compressed(&pk.to_bytes());
    G1Projective::from(Option::<G1Affine>::from(affine).expect("a PublicKey is a valid point"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn sealed_pads_are_what_autonomi_reads() {
        let sk = SecretKey::random();
        for len in [1, 63, 64, 65, 4095, 4096, 100_003, 1 << 20] {
            let data = sample(len);
            let pad = seal(&sk, 7, &data, 3);
            assert!(pad.verify_signature(), "len {len}");
            assert_eq!(pad.decrypt_data(&sk).unwrap(), data, "len {len}");
            assert_eq!(pad.counter(), 3);
            assert_eq!(pad.data_encoding(), 7);
            assert_eq!(pad.owner(), &sk.public_key());
            assert!(signature_ok(&pad));
            assert_eq!(open_unchecked(&sk, &pad).unwrap(), data.to_vec());
        }
    }

    #[test]
    fn pads_sealed_together_are_what_autonomi_reads() {
        // Short and long messages (blsttc hashes only long ones), different keys and counters.
        let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::random()).collect();
        let lens = [
            1,
            64,
            65,
            100_003,
            1 << 20,
            1 << 20,
            4095,
            300_000,
            7,
            1 << 19,
        ];
        let datas: Vec<Bytes> = lens.iter().map(|&len| sample(len)).collect();
        let mut sealings: Vec<Sealing> = datas
            .iter()
            .enumerate()
            .map(|(i, data)| Sealing::encrypt(&keys[i % 3], 5, data, i as u64))
            .collect();
        hash_ciphertexts(&mut sealings);
        for (i, sealing) in sealings.into_iter().enumerate() {
            let (pad, key) = sealing.sign();
            let owner = &keys[i % 3];
            assert!(pad.verify_signature(), "pad {i}");
            assert_eq!(pad.decrypt_data(owner).unwrap(), datas[i], "pad {i}");
            assert_eq!(pad.counter(), i as u64);
            let v = &pad.encrypted_data()[HEADER..];
            assert_eq!(open_part(&key, 0, v), datas[i].to_vec());
        }
    }

    #[test]
    fn autonomi_pads_open_here() {
        let sk = SecretKey::random();
        let data = sample(300_001);
        let pad = Scratchpad::new(&sk, 9, &data, 0);
        assert!(signature_ok(&pad));
        assert_eq!(open_unchecked(&sk, &pad).unwrap(), data.to_vec());
    }

    #[test]
    fn tampering_is_caught() {
        let sk = SecretKey::random();
        let data = sample(10_000);
        let pad = seal(&sk, 1, &data, 0);
        let mut ct = pad.encrypted_data().to_vec();
        ct[HEADER + 5] ^= 1;
        let bad = Scratchpad::new_with_signature(
            sk.public_key(),
            1,
            ct.into(),
            0,
            pad.signature().clone(),
        );
        assert!(!signature_ok(&bad));
        // The signed prefix counts too: another counter or encoding, same bytes.
        for (encoding, counter) in [(1, 1), (2, 0)] {
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
        }
        assert!(signature_ok(&pad));
        let other = SecretKey::random();
        assert_ne!(open_unchecked(&other, &pad).unwrap(), data.to_vec());
    }

    #[test]
    fn any_part_decrypts_alone_with_the_kept_key() {
        let sk = SecretKey::random();
        let data = sample(100_003);
        let pad = Scratchpad::new(&sk, 9, &data, 0);
        let key = stream_key(&sk, &pad).unwrap();
        let ct = &pad.encrypted_data()[HEADER..];
        for (from, to) in [
            (0, 1),
            (0, 100_003),
            (1, 2),
            (15, 17),
            (16_384, 32_768),
            (99_000, 100_003),
        ] {
            assert_eq!(
                open_part(&key, from, &ct[from..to]),
                data[from..to],
                "{from}..{to}"
            );
        }
        // Another version of the pad has another key, which sealing it returns.
        let (again, again_key) = Sealing::encrypt(&sk, 9, &data, 1).sign();
        let moved = &again.encrypted_data()[HEADER..];
        assert_ne!(open_part(&key, 0, &moved[..64]), data[..64]);
        assert_eq!(open_part(&again_key, 500, &moved[500..564]), data[500..564]);
    }
}
