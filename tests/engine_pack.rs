//! Packing: small files share pads, each read back byte for byte after a reopen; a pack is freed
//! with its last piece; a damaged pack is an error for the files in it, never wrong data.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mutant_mount::engine::{Engine, EngineOptions, DEFAULT_SCRATCHPAD_SIZE};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{LocalStore, PadStore, SimConfig, SimStore};

fn options() -> EngineOptions {
    EngineOptions {
        cache_bytes: 0,
        ..Default::default()
    }
}

async fn open(store: Arc<dyn PadStore>, master: &MasterKey) -> Engine {
    Engine::open(store, master.clone(), options())
        .await
        .unwrap()
}

/// A local store in `dir` that counts what reaches it.
fn counted_store(dir: &Path) -> Arc<SimStore<LocalStore>> {
    Arc::new(SimStore::new(
        LocalStore::open(dir).unwrap(),
        SimConfig::default(),
    ))
}

/// Pseudo-random bytes, none of them zero.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}

/// A source tree's worth of small files: 5 KiB to 60 KiB.
fn tree() -> Vec<(String, Vec<u8>)> {
    (0..300u64)
        .map(|i| {
            let len = 5_000 + (i as usize * 7_919) % 55_000;
            (format!("src/dir{}/file{i}.rs", i % 7), noise(i, len))
        })
        .collect()
}

fn pad_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir.join("pads")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_share_pads_and_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = counted_store(dir.path());
    let engine = open(store.clone(), &master).await;
    let files = tree();
    let bytes: usize = files.iter().map(|(_, d)| d.len()).sum();
    let before = store.stats.creates.load(Ordering::Relaxed);
    for (key, data) in &files {
        engine.store(key, data, Meta::file()).await.unwrap();
    }
    engine.commit().await.unwrap();
    let created = store.stats.creates.load(Ordering::Relaxed) - before;
    // The data fits in ceil(bytes / chunk) packs, first fit may need one more; then one index
    // page. A pad each would have been 300.
    let packs = bytes.div_ceil(DEFAULT_SCRATCHPAD_SIZE as usize) as u64 + 1;
    assert!(
        created <= packs + 1,
        "{created} pads created for {bytes} bytes in 300 files"
    );
    let in_use = engine.stats().await.pads_in_use;
    assert!(in_use as u64 <= packs, "{in_use} pads in use");
    engine.check_accounting().await.unwrap();
    drop(engine);

    let engine = open(store.clone(), &master).await;
    for (key, data) in &files {
        assert_eq!(&engine.fetch(key).await.unwrap(), data, "{key}");
        let part = engine.fetch_range(key, 1000, 3000).await.unwrap();
        assert_eq!(part, data[1000..4000], "{key} from 1000");
    }
    engine.verify_all().await.unwrap();
    engine.check_accounting().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_is_freed_with_its_last_piece_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let engine = open(store.clone(), &master).await;
    let files = tree();
    for (key, data) in &files {
        engine.store(key, data, Meta::file()).await.unwrap();
    }
    engine.commit().await.unwrap();
    let packs = engine.stats().await.pads_in_use;
    assert!(packs >= 2, "the tree takes several packs: {packs}");

    // Half the files go, and one is rewritten: every pack still holds live pieces.
    for (key, _) in files.iter().step_by(2) {
        engine.remove(key).await.unwrap();
    }
    let (rewritten, _) = &files[1];
    let new = noise(99, 20_000);
    engine.store(rewritten, &new, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();
    drop(engine);

    let engine = open(store.clone(), &master).await;
    assert_eq!(engine.fetch(rewritten).await.unwrap(), new);
    for (key, data) in files.iter().skip(3).step_by(2) {
        assert_eq!(&engine.fetch(key).await.unwrap(), data, "{key}");
    }
    for (key, _) in files.iter().step_by(2) {
        assert!(engine.fetch(key).await.is_err(), "{key} was removed");
    }

    // Every file goes: every pack is free, and the next tree reuses them rather than creating.
    let free_before = engine.stats().await.free_pads;
    for key in engine.list_keys().await {
        if !key.is_empty() {
            engine.remove(&key).await.unwrap();
        }
    }
    engine.commit().await.unwrap();
    let stats = engine.stats().await;
    assert_eq!(stats.pads_in_use, 0);
    assert!(
        stats.free_pads > free_before + packs / 2,
        "the packs went back to the free list: {} free, {free_before} before",
        stats.free_pads
    );
    engine.check_accounting().await.unwrap();
    let files_before = pad_files(dir.path()).len();
    for (key, data) in &files {
        engine.store(key, data, Meta::file()).await.unwrap();
    }
    engine.commit().await.unwrap();
    assert_eq!(
        pad_files(dir.path()).len(),
        files_before,
        "the same tree again fits in the freed packs"
    );
    drop(engine);
    let engine = open(store, &master).await;
    for (key, data) in &files {
        assert_eq!(&engine.fetch(key).await.unwrap(), data, "{key}");
    }
    engine.check_accounting().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pack_fails_its_files_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let engine = open(store.clone(), &master).await;
    let files = tree();
    for (key, data) in &files {
        engine.store(key, data, Meta::file()).await.unwrap();
    }
    engine.commit().await.unwrap();
    let first = engine.entry(&files[0].0).await.unwrap();
    let pack = first.chunks.get(0).unwrap().pad.unwrap();
    let path = LocalStore::open(dir.path())
        .unwrap()
        .pad_path(&master.pad_key(&pack.seed).public_key());
    drop(engine);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let engine = open(store, &master).await;
    let (mut failed, mut read) = (0, 0);
    for (key, data) in &files {
        let entry = engine.entry(key).await.unwrap();
        let in_pack = entry.chunks.get(0).unwrap().pad.unwrap().seed == pack.seed;
        match engine.fetch(key).await {
            Ok(got) => {
                assert!(!in_pack, "{key} read from a damaged pack");
                assert_eq!(&got, data);
                read += 1;
            }
            Err(_) => {
                assert!(in_pack, "{key} failed outside the damaged pack");
                failed += 1;
            }
        }
    }
    assert!(failed > 0 && read > 0, "{failed} failed, {read} read");
    assert!(engine.verify_all().await.is_err());
    let report = engine.check(&|_, _| {}).await;
    assert_eq!(
        report.damaged.len(),
        failed,
        "fsck lists each file of the pack"
    );
}

/// An editor saving one small file per commit: each commit writes a pack for little data, and
/// once there are several of those they are merged into one. A chunk list taken before the
/// merge (an open file's) still reads and installs; the merged packs are freed once their
/// retired keys go (the next mount drops them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_packs_are_compacted_and_stale_chunk_lists_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let engine = open(store.clone(), &master).await;
    let mut files = Vec::new();
    engine
        .store("kept", &noise(1000, 30_000), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let held = engine.entry("kept").await.unwrap();
    let mut most_packs = 0;
    let mut first_note = None;
    for i in 0..20u64 {
        let key = format!("notes/{i}.md");
        let data = noise(i, 10_000 + i as usize * 100);
        engine.store(&key, &data, Meta::file()).await.unwrap();
        engine.commit().await.unwrap();
        first_note.get_or_insert(engine.entry(&key).await.unwrap());
        files.push((key, data));
        most_packs = most_packs.max(engine.stats().await.pads_in_use);
        engine.check_accounting().await.unwrap();
    }
    assert_eq!(
        most_packs, 21,
        "compacted packs stay referenced while in use"
    );

    // The chunk list held from before reads, and installs, as it was.
    let chunk = held.chunks.get(0).unwrap();
    assert!(chunk.is_packed());
    assert_eq!(engine.read_chunk(chunk).await.unwrap(), noise(1000, 30_000));
    engine.install("kept", held.clone()).await.unwrap();
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();

    // Once no chunk list from before is in use, the retired packs go.
    let in_use = engine.stats().await.pads_in_use;
    engine.drop_retired(Instant::now()).await.unwrap();
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();
    let after = engine.stats().await.pads_in_use;
    assert!(
        after <= 9 && after < in_use,
        "{after} packs in use for 21 small files, {in_use} before"
    );
    // A chunk list read before its pack was merged and freed still installs: its piece is
    // found where the file holds the same bytes now.
    let stale = first_note.unwrap();
    let pack = stale.chunks.get(0).unwrap().pad.unwrap();
    let now = engine.entry("notes/0.md").await.unwrap();
    assert_ne!(now.chunks.get(0).unwrap().pad.unwrap().seed, pack.seed);
    engine.install("notes/0.md", stale).await.unwrap();
    assert_eq!(engine.fetch("notes/0.md").await.unwrap(), files[0].1);
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();
    drop(engine);
    let engine = open(store, &master).await;
    for (key, data) in &files {
        assert_eq!(&engine.fetch(key).await.unwrap(), data, "{key}");
    }
    assert_eq!(engine.fetch("kept").await.unwrap(), noise(1000, 30_000));
    engine.verify_all().await.unwrap();
    engine.check_accounting().await.unwrap();
}

/// A commit of a few small files, after many, writes little: small files are packed, not held
/// inline in index pages, which a commit rewrites whole and which every later commit (over the
/// network, every upload) would carry again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_a_few_small_files_after_many_writes_little() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = counted_store(dir.path());
    let engine = open(store.clone(), &master).await;
    for i in 0..3_000u64 {
        let len = 2_000 + (i as usize * 37) % 2_000;
        (engine.store(&format!("tree/f{i}"), &noise(i, len), Meta::file()))
            .await
            .unwrap();
    }
    engine.commit().await.unwrap();
    let written = || store.stats.bytes_written.load(Ordering::Relaxed);
    let before = written();
    for i in 0..100u64 {
        (engine.store(
            &format!("new/f{i}"),
            &noise(10_000 + i, 3_000),
            Meta::file(),
        ))
        .await
        .unwrap();
    }
    engine.commit().await.unwrap();
    let commit = written() - before;
    // 300 KB of new files in a pack, and index pages of metadata for 3,100 keys. With the
    // earlier 9 MB held inline, the pages holding them would all have gone again.
    assert!(commit < 2 << 20, "{commit} bytes written to commit 300 KB");
    drop(engine);

    let engine = open(store.clone(), &master).await;
    assert_eq!(engine.fetch("tree/f7").await.unwrap(), noise(7, 2_259));
    assert_eq!(engine.fetch("new/f9").await.unwrap(), noise(10_009, 3_000));
}
