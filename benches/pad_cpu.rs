//! CPU cost of one full pad on each path, per step: what bounds throughput on a machine with
//! few cores. `cargo bench --bench pad_cpu`. Figures are ratios within the run (MB/s of each
//! step next to a plain memory copy of the same bytes), since the machine is shared.

use std::hint::black_box;
use std::time::{Duration, Instant};

use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, SecretKey};
use mutant_mount::codec::{self, sha256, Kind};
use mutant_mount::engine::blocks::{hash_blocks, open_hashing, PadBlocks, BLOCK_LEN};
use mutant_mount::engine::DEFAULT_SCRATCHPAD_SIZE;
use mutant_mount::seal;
use mutant_mount::store::{LocalStore, PadStore};

fn time(what: &str, baseline: Option<Duration>, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let rounds = 8;
    let started = Instant::now();
    for _ in 0..rounds {
        f();
    }
    let each = started.elapsed() / rounds;
    let mb_s = DEFAULT_SCRATCHPAD_SIZE as f64 / each.as_secs_f64() / 1e6;
    match baseline {
        Some(base) => println!(
            "{what:<34} {:>8.1} ms {mb_s:>9.0} MB/s  {:>6.1}x a copy",
            each.as_secs_f64() * 1e3,
            each.as_secs_f64() / base.as_secs_f64()
        ),
        None => println!(
            "{what:<34} {:>8.1} ms {mb_s:>9.0} MB/s",
            each.as_secs_f64() * 1e3
        ),
    }
    each
}

fn main() {
    let data: Vec<u8> = (0..DEFAULT_SCRATCHPAD_SIZE as usize)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let data = Bytes::from(data);
    let sk = SecretKey::random();
    println!("one pad of {} bytes:", data.len());
    let copy = time("memory copy (baseline)", None, || {
        black_box(data.to_vec());
    });
    let base = Some(copy);
    time("sha256 (index hash of a chunk)", base, || {
        black_box(sha256(&data));
    });
    let pad = Scratchpad::new(&sk, 1, &data, 0);
    time("Scratchpad::new (encrypt + sign)", base, || {
        black_box(Scratchpad::new(&sk, 1, &data, 0));
    });
    time("seal (engine: encrypt + sign)", base, || {
        black_box(seal::seal(&sk, 1, &data, 0));
    });
    time("verify_signature", base, || {
        assert!(black_box(&pad).verify_signature());
    });
    let signature = time("signature_ok (engine)", base, || {
        assert!(seal::signature_ok(black_box(&pad)));
    });
    time("decrypt_data", base, || {
        black_box(pad.decrypt_data(&sk).unwrap());
    });
    time("sha3 (of a ciphertext, sealing)", base, || {
        black_box(seal::sha3_256_each(&[&data]));
    });
    for lanes in [2, 4, seal::LANES] {
        let group = vec![&data[..]; lanes];
        let all = time(&format!("sha3 of {lanes} pads side by side"), base, || {
            black_box(seal::sha3_256_each(&group));
        });
        println!(
            "{:<34} {:>8.1} ms",
            "  each pad",
            all.as_secs_f64() * 1e3 / lanes as f64
        );
    }
    time("blake3", base, || {
        black_box(blake3::hash(&data));
    });
    time("hash_blocks (blake3 + block values)", base, || {
        black_box(hash_blocks(&data));
    });
    let opening = time("open_hashing (engine: decrypt + check)", base, || {
        let key = seal::stream_key(&sk, &pad).unwrap();
        black_box(open_hashing(&key, &pad.encrypted_data()[seal::HEADER..]));
    });
    let record = codec::encode(Kind::PadRecord, &pad).unwrap();
    time("first-format record encode", base, || {
        black_box(codec::encode(Kind::PadRecord, &pad).unwrap());
    });
    time("first-format record decode", base, || {
        black_box(codec::decode::<Scratchpad>(Kind::PadRecord, &record).unwrap());
    });

    // The local store as the engine uses it (header + raw bytes, fsync, rename).
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.create(pad.clone())).unwrap();
    // Signed ahead: `time` runs its closure 9 times.
    let mut versions = (1..=9).map(|counter| Scratchpad::new(&sk, 1, &data, counter));
    time("local store update (with fsync)", base, || {
        let next = versions.next().expect("enough versions");
        rt.block_on(store.update(next)).unwrap();
    });
    time("local store get", base, || {
        black_box(rt.block_on(store.get(&sk.public_key())).unwrap());
    });

    // A random read of a pad read whole before: one block fetched, decrypted and checked.
    let stored = rt.block_on(store.get(&sk.public_key())).unwrap();
    let key = seal::stream_key(&sk, &stored).unwrap();
    let (plain, _, cvs) = open_hashing(&key, &stored.encrypted_data()[seal::HEADER..]);
    let blocks = PadBlocks::new(sk.public_key(), key, cvs, plain.len()).unwrap();
    let reads = 2000;
    let started = Instant::now();
    for i in 0..reads {
        let at = (i * 7919 * 4096) % (plain.len() - 4096);
        let span = blocks.span(at, at + 4096);
        let stored = span.start + seal::HEADER..span.end + seal::HEADER;
        let part = rt
            .block_on(store.get_part(&sk.public_key(), stored))
            .unwrap()
            .unwrap();
        assert!(black_box(blocks.open(span, &part)).is_some());
    }
    let each = started.elapsed() / reads as u32;
    // A pad read before, read again whole (a sequential reader): one part, every block checked.
    let whole_part = time("whole pad as one checked part", base, || {
        let all = seal::HEADER..seal::HEADER + plain.len();
        let part = rt
            .block_on(store.get_part(&sk.public_key(), all))
            .unwrap()
            .unwrap();
        assert!(black_box(blocks.open(0..plain.len(), &part)).is_some());
    });
    // A whole read runs the signature check and the opening side by side.
    let whole_read = signature.max(opening);
    println!(
        "{:<34} {:>8.1} us per 4 KiB read, {:.0}x faster than the whole pad",
        "part read of one block (local)",
        each.as_secs_f64() * 1e6,
        whole_read.as_secs_f64() / each.as_secs_f64()
    );
    println!(
        "{:<34} {:>8.1}x less CPU than a whole read (signature check + opening), {} B blocks",
        "whole pad as one checked part",
        (signature + opening).as_secs_f64() / whole_part.as_secs_f64(),
        BLOCK_LEN
    );
}
