//! CPU cost of one full pad on each path, per step: what bounds throughput on a machine with
//! few cores. `cargo bench --bench pad_cpu`. Figures are ratios within the run (MB/s of each
//! step next to a plain memory copy of the same bytes), since the machine is shared.

use std::hint::black_box;
use std::time::{Duration, Instant};

use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, SecretKey};
use mutant_mount::codec::{sha256, HashKind};
use mutant_mount::engine::pads::{BLS_DATA_ENCODING, DATA_ENCODING};
use mutant_mount::engine::DEFAULT_SCRATCHPAD_SIZE;
use mutant_mount::keys::MasterKey;
use mutant_mount::seal::{self, Binding};
use mutant_mount::store::{LocalStore, PadStore};

fn time(what: &str, baseline: Option<Duration>, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let rounds = 8;
    let started = Instant::now();
    for _ in 0..rounds {
        f();
    }
    let each = started.elapsed() / rounds;
    report(what, each, baseline);
    each
}

fn report(what: &str, each: Duration, baseline: Option<Duration>) {
    let mb_s = DEFAULT_SCRATCHPAD_SIZE as f64 / each.as_secs_f64() / 1e6;
    match baseline {
        Some(base) => println!(
            "{what:<40} {:>8.2} ms {mb_s:>9.0} MB/s  {:>6.1}x a copy",
            each.as_secs_f64() * 1e3,
            each.as_secs_f64() / base.as_secs_f64()
        ),
        None => println!(
            "{what:<40} {:>8.2} ms {mb_s:>9.0} MB/s",
            each.as_secs_f64() * 1e3
        ),
    }
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
    time("sha256 (index hash of a page)", base, || {
        black_box(sha256(&data));
    });
    let hash = time("blake3 (content hash of a chunk)", base, || {
        black_box(HashKind::Blake3.hash(&data));
    });
    let content = HashKind::Blake3.hash(&data);

    println!("AEAD pads (written now):");
    let sealing = time("seal (encrypt + sign)", base, || {
        black_box(seal::seal(&sk, DATA_ENCODING, &data, 0, content));
    });
    time("  of which the BLS signature", base, || {
        black_box(sk.sign(&data));
    });
    let pad = seal::seal(&sk, DATA_ENCODING, &data, 0, content);
    let opening = time("open (decrypt + authenticate)", base, || {
        black_box(seal::open(&sk, &pad, 0, content).unwrap());
    });

    println!("BLS pads (written by earlier versions, read only):");
    let old = Scratchpad::new(&sk, BLS_DATA_ENCODING, &data, 0);
    time("Scratchpad::new (encrypt + sign)", base, || {
        black_box(Scratchpad::new(&sk, BLS_DATA_ENCODING, &data, 0));
    });
    let old_signature = time("signature_ok", base, || {
        assert!(seal::signature_ok(black_box(&old)));
    });
    let old_open = time("open_bls (autonomi's decrypt_data)", base, || {
        black_box(seal::open_bls(&sk, &old).unwrap());
    });
    let old_hash = hash;

    // The local store as the engine uses it (header + raw bytes, fsync, rename).
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.create(pad.clone())).unwrap();
    // Sealed ahead: `time` runs its closure 9 times.
    let mut versions =
        (1..=9).map(|counter| seal::seal(&sk, DATA_ENCODING, &data, counter, content));
    time("local store update (with fsync)", base, || {
        let next = versions.next().expect("enough versions");
        rt.block_on(store.update(next)).unwrap();
    });
    time("local store get", base, || {
        black_box(rt.block_on(store.get(&sk.public_key())).unwrap());
    });

    // A cold random 4 KiB read: the pad's secret key derived from the master key (its public
    // key, the pad's address, is kept by the engine after a first read), the segment the bytes
    // lie in fetched and opened.
    let master = MasterKey::generate();
    let seed = [7u8; 16];
    let pad_sk = master.pad_key(&seed);
    let owner = pad_sk.public_key();
    let stored = seal::seal(&pad_sk, DATA_ENCODING, &data, 0, content);
    rt.block_on(store.create(stored)).unwrap();
    let reads = 2000;
    let started = Instant::now();
    for i in 0..reads {
        let at = (i * 7919 * 4096) % (data.len() - 4096);
        let sk = master.pad_key(&seed);
        let span = seal::part_span(data.len(), at, at + 4096);
        let part = rt
            .block_on(store.get_part(&owner, span.sealed.clone()))
            .unwrap()
            .unwrap();
        let binding = Binding {
            owner,
            encoding: DATA_ENCODING,
            counter: 0,
            len: data.len(),
            content,
        };
        assert!(black_box(seal::open_part(&sk, &binding, &span, &part)).is_some());
    }
    let each = started.elapsed() / reads as u32;
    let keys = Instant::now();
    for _ in 0..reads {
        black_box(master.pad_key(&seed).public_key());
    }
    let keys = keys.elapsed() / reads as u32;
    println!(
        "{:<40} {:>8.1} us; deriving a pad's public key: {:.1} us",
        "cold random 4 KiB read (local)",
        each.as_secs_f64() * 1e6,
        keys.as_secs_f64() * 1e6,
    );

    println!("per pad, written and read back whole (content hash + seal + open):");
    let new = hash + sealing + opening;
    report("AEAD", new, base);
    // A BLS pad was sealed the same way as `Scratchpad::new` and read with both checks.
    println!(
        "{:<40} {:>8.2} ms read side alone (signature + decrypt + hash): {:.1}x the AEAD's",
        "BLS",
        (old_signature + old_open + old_hash).as_secs_f64() * 1e3,
        (old_signature + old_open + old_hash).as_secs_f64() / opening.as_secs_f64()
    );
}
