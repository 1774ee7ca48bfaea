//! The candidate AEADs for sealing pads, on this machine: one 4 MiB pad sealed and opened in
//! place, in 64 KiB segments as the pad format seals them. `cargo bench --bench aead_cpu`.
//! Figures are ratios within the run (MB/s next to a plain memory copy), the machine being
//! shared.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::consts::{U12, U16};

const PAD: usize = 4 << 20;
const SEGMENT: usize = 64 << 10;
const ROUNDS: u32 = 16;
const KEY: [u8; 32] = [7; 32];
const AD: [u8; 100] = [1; 100];

fn time(what: &str, baseline: Option<Duration>, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let started = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    let each = started.elapsed() / ROUNDS;
    let mb_s = PAD as f64 / each.as_secs_f64() / 1e6;
    let ratio = baseline.map_or(String::new(), |b| {
        format!("  {:>5.1}x a copy", each.as_secs_f64() / b.as_secs_f64())
    });
    println!(
        "{what:<40} {:>7.2} ms {mb_s:>7.0} MB/s{ratio}",
        each.as_secs_f64() * 1e3
    );
    each
}

/// The nonce of segment `i`: zeros, the index, the last-segment flag.
fn nonce(i: usize, last: bool) -> [u8; 12] {
    let mut n = [0; 12];
    n[7..11].copy_from_slice(&(i as u32).to_be_bytes());
    n[11] = last as u8;
    n
}

/// Seals and opens `buf` segment by segment with `seal` and `open` (tags kept aside).
fn bench_pair(
    name: &str,
    base: Option<Duration>,
    buf: &mut [u8],
    seal: impl Fn(&[u8; 12], &mut [u8]) -> [u8; 16],
    open: impl Fn(&[u8; 12], &mut [u8], &[u8; 16]) -> bool,
) {
    let segments = PAD.div_ceil(SEGMENT);
    let mut tags = vec![[0u8; 16]; segments];
    time(&format!("{name} seal"), base, || {
        for (i, seg) in buf.chunks_mut(SEGMENT).enumerate() {
            tags[i] = seal(&nonce(i, i + 1 == segments), seg);
        }
    });
    // Opening needs the ciphertext of one sealing: keep it and restore it every round.
    for (i, seg) in buf.chunks_mut(SEGMENT).enumerate() {
        tags[i] = seal(&nonce(i, i + 1 == segments), seg);
    }
    let sealed = buf.to_vec();
    let mut scratch = sealed.clone();
    time(&format!("{name} open"), base, || {
        scratch.copy_from_slice(&sealed);
        for (i, seg) in scratch.chunks_mut(SEGMENT).enumerate() {
            assert!(open(&nonce(i, i + 1 == segments), seg, &tags[i]));
        }
    });
}

fn main() {
    let (key, ad) = (KEY, AD);
    let mut buf: Vec<u8> = (0..PAD).map(|i| ((i * 31) >> 5) as u8).collect();
    println!("one pad of {PAD} bytes in {SEGMENT} B segments:");
    let copy = time("memory copy (baseline)", None, || {
        black_box(buf.to_vec());
    });
    let base = Some(copy);
    time("memory copy twice (open's restore + copy)", base, || {
        black_box(buf.to_vec());
        black_box(buf.to_vec());
    });

    aws_lc(
        "aws-lc-rs AES-256-GCM",
        &aws_lc_rs::aead::AES_256_GCM,
        base,
        &mut buf,
    );
    {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        bench_pair(
            "ring AES-256-GCM",
            base,
            &mut buf,
            |n, seg| {
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(*n),
                        Aad::from(&ad),
                        seg,
                    )
                    .unwrap();
                tag.as_ref().try_into().unwrap()
            },
            |n, seg, tag| {
                let tag = (*tag).into();
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*n),
                    Aad::from(&ad),
                    tag,
                    seg,
                    0..,
                )
                .is_ok()
            },
        );
    }
    rust_crypto::<aes_gcm::Aes256Gcm>("RustCrypto aes-gcm", base, &mut buf);
    rust_crypto::<chacha20poly1305::ChaCha20Poly1305>(
        "RustCrypto chacha20poly1305",
        base,
        &mut buf,
    );
    aws_lc(
        "aws-lc-rs ChaCha20-Poly1305",
        &aws_lc_rs::aead::CHACHA20_POLY1305,
        base,
        &mut buf,
    );
    time("blake3 (for comparison)", base, || {
        black_box(blake3::hash(&buf));
    });
}

/// [`bench_pair`] for an AEAD of aws-lc-rs.
fn aws_lc(
    name: &str,
    algorithm: &'static aws_lc_rs::aead::Algorithm,
    base: Option<Duration>,
    buf: &mut [u8],
) {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let k = LessSafeKey::new(UnboundKey::new(algorithm, &KEY).unwrap());
    bench_pair(
        name,
        base,
        buf,
        |n, seg| {
            let tag = k
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*n), Aad::from(&AD), seg)
                .unwrap();
            tag.as_ref().try_into().unwrap()
        },
        |n, seg, tag| {
            k.open_in_place_separate_tag(Nonce::assume_unique_for_key(*n), Aad::from(&AD), tag, seg)
                .is_ok()
        },
    );
}

/// [`bench_pair`] for an AEAD of RustCrypto (both crates implement `aead` 0.5).
fn rust_crypto<A>(name: &str, base: Option<Duration>, buf: &mut [u8])
where
    A: aes_gcm::aead::AeadInPlace<NonceSize = U12, TagSize = U16> + aes_gcm::aead::KeyInit,
{
    let k = A::new_from_slice(&KEY).unwrap();
    bench_pair(
        name,
        base,
        buf,
        |n, seg| {
            k.encrypt_in_place_detached(n.into(), &AD, seg)
                .unwrap()
                .into()
        },
        |n, seg, tag| {
            k.decrypt_in_place_detached(n.into(), &AD, seg, tag.into())
                .is_ok()
        },
    );
}
