//! Engine cases: wrong keys, damaged and substituted pads, 100,000 keys, large and empty values,
//! free-pad recycling, and what one change costs in writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use autonomi::scratchpad::{Scratchpad, ScratchpadAddress};
use mutant_mount::engine::pads::{PadIo, DATA_ENCODING};
use mutant_mount::engine::{Engine, EngineOptions, Error, DEFAULT_SCRATCHPAD_SIZE};
use mutant_mount::index::persist::Root;
use mutant_mount::index::{Meta, PadRef};
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{CountingStore, LocalStore, PadStore, SimConfig, SimStore};

fn options(chunk: u32) -> EngineOptions {
    EngineOptions {
        scratchpad_size: chunk,
        cache_bytes: 0,
        ..Default::default()
    }
}

async fn open_local(dir: &Path, master: &MasterKey, chunk: u32) -> Result<Engine, Error> {
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir).unwrap());
    Engine::open(store, master.clone(), options(chunk)).await
}

fn sim(dir: &Path) -> Arc<SimStore<LocalStore>> {
    Arc::new(SimStore::new(
        LocalStore::open(dir).unwrap(),
        SimConfig::default(),
    ))
}

/// Pseudo-random bytes, none of them zero (so no chunk becomes a hole).
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
    files.sort();
    files
}

fn pad_path(dir: &Path, master: &MasterKey, pad: &PadRef) -> PathBuf {
    LocalStore::open(dir)
        .unwrap()
        .pad_path(&master.pad_key(&pad.seed).public_key())
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Writes {
    creates: u64,
    updates: u64,
}

fn writes(store: &SimStore<LocalStore>) -> Writes {
    Writes {
        creates: store.stats.creates.load(Ordering::Relaxed),
        updates: store.stats.updates.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for Writes {
    type Output = Writes;
    fn sub(self, before: Writes) -> Writes {
        Writes {
            creates: self.creates - before.creates,
            updates: self.updates - before.updates,
        }
    }
}

impl Writes {
    fn total(&self) -> u64 {
        self.creates + self.updates
    }
}

/// Every future the file system spawns or holds across tasks must be `Send`.
#[test]
fn engine_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let engine: Option<Engine> = None;
    if let Some(e) = engine {
        let store: Arc<dyn PadStore> =
            Arc::new(LocalStore::open(Path::new("/nonexistent")).unwrap());
        send(&Engine::open(
            store,
            MasterKey::generate(),
            EngineOptions::default(),
        ));
        send(&e.store("k", b"v", Meta::file()));
        send(&e.fetch("k"));
        send(&e.fetch_range("k", 0, 1));
        send(&e.remove("k"));
        send(&e.rename("k", "l"));
        send(&e.commit());
        send(&e.verify_all());
        send(&e.check_accounting());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_master_key_finds_no_index_and_leaves_the_first_alone() {
    let dir = tempfile::tempdir().unwrap();
    let first = MasterKey::generate();
    let engine = open_local(dir.path(), &first, 256).await.unwrap();
    engine
        .store("secret", &noise(1, 600), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    drop(engine);

    let second = MasterKey::generate();
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let opts = EngineOptions {
        create_if_missing: false,
        ..options(256)
    };
    match Engine::open(store.clone(), second.clone(), opts).await {
        Err(Error::NoIndex) => {}
        Err(e) => panic!("expected NoIndex, got {e}"),
        Ok(_) => panic!("opened an index with the wrong key"),
    }
    // Allowed to create, the second key gets an index of its own, empty.
    let other = Engine::open(store, second, options(256)).await.unwrap();
    assert!(other.list_keys().await.is_empty());
    drop(other);
    let again = open_local(dir.path(), &first, 256).await.unwrap();
    assert_eq!(again.fetch("secret").await.unwrap(), noise(1, 600));
}

/// A pad read with a key that does not own it is an error, never plaintext: the file of another
/// key's pad put where ours should be, and a pad validly signed by our key but carrying
/// ciphertext made for another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pad_read_with_the_wrong_key_is_an_error() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    let data = noise(2, 300);
    let engine = open_local(dir_a.path(), &a, 4096).await.unwrap();
    engine.store("k", &data, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    let chunk = engine
        .entry("k")
        .await
        .unwrap()
        .chunks
        .get(0)
        .unwrap()
        .clone();
    let pad = chunk.pad.unwrap();

    // A's pad file where B looks for the same seed.
    let store_b = LocalStore::open(dir_b.path()).unwrap();
    let from = pad_path(dir_a.path(), &a, &pad);
    let to = pad_path(dir_b.path(), &b, &pad);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(&from, &to).unwrap();
    let io_b = PadIo::new(Arc::new(store_b.clone()), b.clone());
    let read = io_b.read(&pad, chunk.hash, chunk.hash_kind).await;
    assert!(
        matches!(&read, Err(e) if e.is_corruption()),
        "copied pad: {read:?}"
    );

    // A pad at B's address, signed by B's pad key, holding A's ciphertext.
    std::fs::remove_file(&to).unwrap();
    let theirs = LocalStore::open(dir_a.path())
        .unwrap()
        .get(&a.pad_key(&pad.seed).public_key())
        .await
        .unwrap();
    let sk_b = b.pad_key(&pad.seed);
    let address = ScratchpadAddress::new(sk_b.public_key());
    let signed = sk_b.sign(Scratchpad::bytes_for_signature(
        address,
        DATA_ENCODING,
        theirs.encrypted_data(),
        0,
    ));
    let forged = Scratchpad::new_with_signature(
        sk_b.public_key(),
        DATA_ENCODING,
        theirs.encrypted_data().clone(),
        0,
        signed,
    );
    assert!(forged.verify_signature());
    store_b.create(forged).await.unwrap();
    let read = io_b.read(&pad, chunk.hash, chunk.hash_kind).await;
    assert!(
        matches!(&read, Err(e) if e.is_corruption()),
        "forged pad: {read:?}"
    );
    // Same with the index root: B finds a root it cannot read, and says so.
    let root_a = LocalStore::open(dir_a.path())
        .unwrap()
        .get(&a.root_key().public_key())
        .await
        .unwrap();
    let root_b = b.root_key();
    let address = ScratchpadAddress::new(root_b.public_key());
    let signed = root_b.sign(Scratchpad::bytes_for_signature(
        address,
        root_a.data_encoding(),
        root_a.encrypted_data(),
        0,
    ));
    store_b
        .create(Scratchpad::new_with_signature(
            root_b.public_key(),
            root_a.data_encoding(),
            root_a.encrypted_data().clone(),
            0,
            signed,
        ))
        .await
        .unwrap();
    match open_local(dir_b.path(), &b, 4096).await {
        Err(e) => assert!(e.is_corruption(), "{e}"),
        Ok(_) => panic!("opened a root encrypted for another key"),
    }
}

/// Every pad file damaged in turn, in several ways: opening fails or reads fail, as corruption;
/// no read ever returns other bytes than were stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_pad_files_are_errors_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let mut model = HashMap::new();
    {
        let engine = open_local(dir.path(), &master, 512).await.unwrap();
        for i in 0..5u64 {
            let data = noise(i, 200 + 400 * i as usize);
            engine
                .store(&format!("file{i}"), &data, Meta::file())
                .await
                .unwrap();
            model.insert(format!("file{i}"), data);
        }
        engine.commit().await.unwrap();
    }
    let files = pad_files(dir.path());
    assert!(files.len() >= 12, "{} pad files", files.len());

    type Damage = fn(&[u8]) -> Vec<u8>;
    let damages: [(&str, Damage); 5] = [
        ("flip a middle byte", |b| {
            let mut b = b.to_vec();
            let mid = b.len() / 2;
            b[mid] ^= 0x10;
            b
        }),
        ("flip the last byte", |b| {
            let mut b = b.to_vec();
            *b.last_mut().unwrap() ^= 0x01;
            b
        }),
        ("truncate to half", |b| b[..b.len() / 2].to_vec()),
        ("drop the last byte", |b| b[..b.len() - 1].to_vec()),
        ("empty", |_| Vec::new()),
    ];
    let (mut refused_open, mut refused_reads) = (0, 0);
    for file in &files {
        let good = std::fs::read(file).unwrap();
        // A flipped data byte sits under no checksum of the local store's own: only the
        // pad's authentication (checked on every read) catches it.
        for (what, damage) in &damages {
            std::fs::write(file, damage(&good)).unwrap();
            match open_local(dir.path(), &master, 512).await {
                Err(e) => {
                    assert!(e.is_corruption(), "{what}: open failed otherwise: {e}");
                    refused_open += 1;
                }
                Ok(engine) => {
                    let mut failed = 0;
                    for (key, data) in &model {
                        match engine.fetch(key).await {
                            Ok(got) => assert_eq!(&got, data, "{what}: wrong bytes for {key}"),
                            Err(e) => {
                                assert!(e.is_corruption(), "{what}: {key}: {e}");
                                failed += 1;
                            }
                        }
                    }
                    let verified = engine.verify_all().await;
                    assert_eq!(verified.is_err(), failed > 0, "{what}: {verified:?}");
                    // A damaged data pad belongs to exactly one key.
                    assert_eq!(failed, 1, "{what}: {failed} keys failed");
                    refused_reads += 1;
                }
            }
        }
        std::fs::write(file, &good).unwrap();
    }
    // The root and the index page are refused at open; each data pad at read.
    assert_eq!(refused_open, 2 * damages.len());
    assert_eq!(refused_reads, (files.len() - 2) * damages.len());
    let engine = open_local(dir.path(), &master, 512).await.unwrap();
    engine.verify_all().await.unwrap();
}

/// A store that hands back an older version of a pad (its counter rolled back, signature valid)
/// is caught by the content hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_of_a_recycled_pad_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let engine = open_local(dir.path(), &master, 256).await.unwrap();
    engine
        .store("old", &noise(3, 700), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let saved: HashMap<PathBuf, Vec<u8>> = pad_files(dir.path())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    engine.remove("old").await.unwrap();
    engine.commit().await.unwrap();
    engine
        .store("new", &noise(4, 700), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let mut rolled_back = 0;
    for pad in engine.entry("new").await.unwrap().pads() {
        let path = pad_path(dir.path(), &master, &pad);
        if let Some(old) = saved.get(&path) {
            std::fs::write(&path, old).unwrap();
            rolled_back += 1;
        }
    }
    assert!(
        rolled_back > 0,
        "no pad of \"old\" was recycled for \"new\""
    );
    drop(engine);
    let engine = open_local(dir.path(), &master, 256).await.unwrap();
    let read = engine.fetch("new").await;
    assert!(
        matches!(&read, Err(e) if e.is_corruption()),
        "rolled-back pad: {read:?}"
    );
}

/// 100,000 keys fit the index; a change to one key rewrites one page, not the index.
///
/// Most values are a few zero bytes, which the engine keeps as holes (index entries without a
/// pad): a real pad costs about 1.5 ms of BLS encryption and signing (measured here: ~3.4 ms a
/// pad with 32 writers on the local store on 2 cores), so 100,000 of them would take minutes.
/// One key in a hundred holds real bytes in a pad of its own (the ignored test below gives every
/// key a pad).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_and_one_change_rewrites_one_page() {
    hundred_thousand_keys(100).await;
}

/// As above with a pad for every key: minutes on 2 cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_hundred_thousand_keys_each_in_a_pad() {
    hundred_thousand_keys(1).await;
}

/// Every `real`-th key holds bytes (a pad), the others a few zero bytes (a hole).
async fn hundred_thousand_keys(real: usize) {
    const KEYS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = sim(dir.path());
    let opts = EngineOptions {
        cache_bytes: 0,
        ..EngineOptions::default()
    };
    let engine = Engine::open(store.clone(), master.clone(), opts.clone())
        .await
        .unwrap();
    let key = |i: usize| format!("dir{}/file{i}", i % 97);
    let value = move |i: usize| -> Vec<u8> {
        if i.is_multiple_of(real) || i == 500 {
            format!("v{i}").into_bytes()
        } else {
            vec![0; 1 + i % 7]
        }
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in (t..KEYS).step_by(32) {
                    let mut meta = Meta::file();
                    meta.mode = (i % 0o777) as u32;
                    engine.store(&key(i), &value(i), meta).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stored = started.elapsed();
    let started = Instant::now();
    engine.commit().await.unwrap();
    let committed = started.elapsed();
    assert_eq!(engine.stats().await.keys, KEYS);
    drop(engine);

    let started = Instant::now();
    let engine = Engine::open(store.clone(), master.clone(), opts.clone())
        .await
        .unwrap();
    let reopened = started.elapsed();
    eprintln!(
        "100k keys: stored in {stored:?}, committed in {committed:?}, reopened in {reopened:?}"
    );
    let keys = engine.list_keys().await;
    assert_eq!(keys.len(), KEYS);
    for i in (0..KEYS)
        .step_by(997)
        .chain((0..KEYS).step_by(100).take(50))
    {
        assert_eq!(engine.fetch(&key(i)).await.unwrap(), value(i), "{}", key(i));
        assert_eq!(
            engine.entry(&key(i)).await.unwrap().meta.mode,
            (i % 0o777) as u32
        );
    }
    engine.check_accounting().await.unwrap();
    let io = PadIo::new(store.clone(), master.clone());
    let (root, _) = io.read_with_key(master.root_key(), None).await.unwrap();
    let root = Root::decode(&root).unwrap();
    assert!(root.pages.len() >= 32, "{} pages", root.pages.len());

    // Nothing changed: nothing written.
    let before = writes(&store);
    engine.commit().await.unwrap();
    assert_eq!(
        writes(&store) - before,
        Writes {
            creates: 0,
            updates: 0
        }
    );

    // One key's content: its data pad, its page, the root.
    let before = writes(&store);
    let big = vec![7u8; engine.inline_limit() + 1];
    engine.store(&key(501), &big, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    let cost = writes(&store) - before;
    assert_eq!(cost.total(), 3, "one change cost {cost:?}");

    // A small value lives in the index: its page and the root.
    let before = writes(&store);
    engine
        .store(&key(500), b"changed", Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let cost = writes(&store) - before;
    assert_eq!(cost.total(), 2, "one small change cost {cost:?}");

    // One key's metadata: its page and the root.
    let before = writes(&store);
    engine
        .update_meta(&key(1), |m| m.mode = 0o600)
        .await
        .unwrap();
    engine.commit().await.unwrap();
    assert_eq!((writes(&store) - before).total(), 2);

    // A rename: at most the two pages and the root, no data pad.
    let before = writes(&store);
    engine.rename(&key(500), "elsewhere/file500").await.unwrap();
    engine.commit().await.unwrap();
    assert!((writes(&store) - before).total() <= 3);
    drop(engine);

    let engine = Engine::open(store, master, opts).await.unwrap();
    assert_eq!(engine.stats().await.keys, KEYS);
    assert_eq!(engine.fetch("elsewhere/file500").await.unwrap(), b"changed");
    assert_eq!(engine.entry(&key(1)).await.unwrap().meta.mode, 0o600);
    assert!(engine.entry(&key(500)).await.is_none());
    engine.check_accounting().await.unwrap();
}

/// Values spanning several pads, read whole and in ranges across pad boundaries; and a value
/// of full-size (4 MiB) pads on the local store, which must accept them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_larger_than_a_pad() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = sim(dir.path());
    let engine = Engine::open(store.clone(), master.clone(), options(4096))
        .await
        .unwrap();
    let data = noise(5, 10_000);
    let before = writes(&store);
    engine.store("big", &data, Meta::file()).await.unwrap();
    assert_eq!(
        writes(&store) - before,
        Writes {
            creates: 3,
            updates: 0
        }
    );
    let entry = engine.entry("big").await.unwrap();
    let lens: Vec<u32> = entry.chunks.iter().map(|(_, c)| c.len).collect();
    assert_eq!(lens, [4096, 4096, 1808]);
    for (offset, len) in [
        (0, 10_000),
        (4000, 200),
        (4095, 2),
        (8191, 1809),
        (9999, 50),
        (10_000, 1),
        (20_000, 5),
        (0, 0),
    ] {
        let want = &data[offset.min(10_000)..(offset + len).min(10_000)];
        assert_eq!(
            engine.fetch_range("big", offset as u64, len).await.unwrap(),
            want,
            "{offset}+{len}"
        );
    }
    // A value with a hole in the middle: the zero chunk takes no pad.
    let mut holey = noise(6, 3 * 4096);
    holey[4096..8192].fill(0);
    let before = writes(&store);
    engine.store("holey", &holey, Meta::file()).await.unwrap();
    assert_eq!((writes(&store) - before).total(), 2);
    assert!(engine.entry("holey").await.unwrap().chunks.get(1).is_none());
    assert_eq!(engine.fetch("holey").await.unwrap(), holey);
    engine.commit().await.unwrap();
    drop(engine);
    let engine = Engine::open(store, master, options(4096)).await.unwrap();
    assert_eq!(engine.fetch("big").await.unwrap(), data);
    assert_eq!(engine.fetch("holey").await.unwrap(), holey);
    engine.verify_all().await.unwrap();

    // Full-size chunks.
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let engine = open_local(dir.path(), &master, DEFAULT_SCRATCHPAD_SIZE)
        .await
        .unwrap();
    let data = noise(7, 2 * DEFAULT_SCRATCHPAD_SIZE as usize + 1000);
    engine.store("huge", &data, Meta::file()).await.unwrap();
    assert_eq!(engine.entry("huge").await.unwrap().chunks.len(), 3);
    engine.commit().await.unwrap();
    drop(engine);
    let engine = open_local(dir.path(), &master, 4096).await.unwrap();
    assert_eq!(engine.chunk_size(), DEFAULT_SCRATCHPAD_SIZE as usize);
    assert_eq!(engine.fetch("huge").await.unwrap(), data);
}

/// An empty value and an all-zero one take no pad, read back right, and survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_zero_values_take_no_pad() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = sim(dir.path());
    let engine = Engine::open(store.clone(), master.clone(), options(1024))
        .await
        .unwrap();
    let before = writes(&store);
    engine.store("empty", b"", Meta::file()).await.unwrap();
    engine
        .store("zeros", &vec![0; 5000], Meta::file())
        .await
        .unwrap();
    assert_eq!((writes(&store) - before).total(), 0);
    let empty = engine.entry("empty").await.unwrap();
    assert_eq!((empty.size, empty.chunks.len()), (0, 0));
    assert_eq!(engine.fetch("empty").await.unwrap(), b"");
    assert_eq!(engine.fetch_range("empty", 0, 10).await.unwrap(), b"");
    assert_eq!(engine.fetch_range("empty", 10, 10).await.unwrap(), b"");
    assert_eq!(engine.fetch("zeros").await.unwrap(), vec![0; 5000]);
    assert_eq!(
        engine.fetch_range("zeros", 1000, 100).await.unwrap(),
        vec![0; 100]
    );
    // Emptying a file releases its pads.
    engine
        .store("shrinks", &noise(8, 3000), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    engine.store("shrinks", b"", Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    assert_eq!(engine.stats().await.pads_in_use, 0);
    drop(engine);
    let engine = Engine::open(store, master, options(1024)).await.unwrap();
    assert_eq!(engine.fetch("empty").await.unwrap(), b"");
    assert_eq!(engine.fetch("zeros").await.unwrap(), vec![0; 5000]);
    assert_eq!(engine.fetch("shrinks").await.unwrap(), b"");
    assert_eq!(engine.stats().await.keys, 3);
    engine.check_accounting().await.unwrap();
}

/// Freed pads are reused, but only once the change that freed them is committed: before that a
/// store must create new pads; after it, an equal store creates none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_pads_are_recycled_only_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = sim(dir.path());
    let engine = Engine::open(store.clone(), master.clone(), options(256))
        .await
        .unwrap();
    let size = 5 * 256;
    engine
        .store("a", &noise(1, size), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();

    // Freed but not committed: not reusable.
    engine.remove("a").await.unwrap();
    let before = writes(&store);
    engine
        .store("b", &noise(2, size), Meta::file())
        .await
        .unwrap();
    assert_eq!((writes(&store) - before).creates, 5);
    engine.commit().await.unwrap();

    // Committed: reusable, also for the index pages.
    let free = engine.stats().await.free_pads;
    assert!(free >= 5, "{free} free pads");
    let before = writes(&store);
    engine
        .store("c", &noise(3, size), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let cost = writes(&store) - before;
    assert_eq!(cost.creates, 0, "{cost:?}");
    assert_eq!(cost.updates, 5 + 1 + 1, "{cost:?}");

    // Overwriting recycles too, after a commit.
    engine.remove("b").await.unwrap();
    engine.commit().await.unwrap();
    let before = writes(&store);
    engine
        .store("c", &noise(4, size), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    assert_eq!((writes(&store) - before).creates, 0);
    engine.check_accounting().await.unwrap();

    // And the free list survives a restart.
    let free = engine.stats().await.free_pads;
    drop(engine);
    let engine = Engine::open(store.clone(), master, options(256))
        .await
        .unwrap();
    assert_eq!(engine.stats().await.free_pads, free);
    let before = writes(&store);
    engine
        .store("d", &noise(5, size), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    assert_eq!((writes(&store) - before).creates, 0);
    assert_eq!(engine.fetch("c").await.unwrap(), noise(4, size));
    assert_eq!(engine.fetch("d").await.unwrap(), noise(5, size));
}

/// A file with this many bytes of extended attributes (the engine does not bound them; the
/// file system does).
fn meta_with_xattr(bytes: usize) -> Meta {
    let mut meta = Meta::file();
    meta.xattrs.insert(b"user.big".to_vec(), noise(9, bytes));
    meta
}

/// Entries too big to share a page: the index splits its pages until each fits a pad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_split_when_entries_outgrow_a_pad() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let engine = open_local(dir.path(), &master, 64).await.unwrap();
    // Ten entries of half a MiB each: more than one pad of index.
    for i in 0..10 {
        engine
            .store(&format!("big-meta{i}"), b"", meta_with_xattr(512 << 10))
            .await
            .unwrap();
    }
    engine.store("small", b"data", Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    drop(engine);
    let engine = open_local(dir.path(), &master, 64).await.unwrap();
    assert_eq!(engine.stats().await.keys, 11);
    let kept = engine.entry("big-meta9").await.unwrap().meta.xattrs;
    assert!(
        kept == meta_with_xattr(512 << 10).xattrs,
        "the attribute came back changed"
    );
    assert_eq!(engine.fetch("small").await.unwrap(), b"data");
    engine.check_accounting().await.unwrap();
    let io = PadIo::new(engine.store_handle().clone(), master.clone());
    let (root, _) = io.read_with_key(master.root_key(), None).await.unwrap();
    let pages = Root::decode(&root).unwrap().pages;
    assert!(pages.len() >= 2, "{} pages for 5 MiB of index", pages.len());
}

/// One entry bigger than any page can be: the commit fails with an error, and does not split
/// pages for ever. (The file system refuses such an entry before it is made; this is the
/// engine's own guard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_too_big_for_any_page_fails_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let engine = open_local(dir.path(), &master, 64).await.unwrap();
    engine
        .store("vast", b"", meta_with_xattr(5 << 20))
        .await
        .unwrap();
    let commit = tokio::time::timeout(std::time::Duration::from_secs(60), engine.commit()).await;
    let result = commit.expect("the commit did not finish");
    assert!(result.is_err(), "committed an index page bigger than a pad");
    // The rest of the index still commits once the key is gone.
    engine.store("small", b"data", Meta::file()).await.unwrap();
    engine.remove("vast").await.unwrap();
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();
    drop(engine);
    let engine = open_local(dir.path(), &master, 64).await.unwrap();
    assert_eq!(engine.list_keys().await, ["small"]);
}

/// A file larger than the index can list, or than the largest size, is refused when it is
/// installed, before it is journaled: nothing is left that no commit could ever write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_beyond_the_index_limits_are_refused_before_they_are_made() {
    use mutant_mount::index::{Chunk, ChunkMap, Entry, MAX_DATA_CHUNKS, MAX_FILE_SIZE};
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let engine = open_local(dir.path(), &master, 4096).await.unwrap();
    let many = Entry {
        chunks: ChunkMap::from_ordered((0..=MAX_DATA_CHUNKS).map(|_| Chunk::inline(vec![1]))),
        size: (MAX_DATA_CHUNKS as u64 + 1) * 4096,
        ..Entry::empty(Meta::file())
    };
    let huge = Entry {
        size: MAX_FILE_SIZE + 1,
        ..Entry::empty(Meta::file())
    };
    for entry in [many, huge] {
        assert!(matches!(
            engine.install("f", entry).await,
            Err(mutant_mount::engine::Error::TooLarge(_))
        ));
        assert!(engine.entry("f").await.is_none());
    }
    let largest = Entry {
        size: MAX_FILE_SIZE,
        ..Entry::empty(Meta::file())
    };
    engine.install("f", largest).await.unwrap();
    engine.commit().await.unwrap();
}

/// The free list is paged: 300,000 free pads (the root alone held about 230,000) still commit,
/// the root stays small, a small change rewrites no free-list page, and the whole list reads
/// back after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_thousand_free_pads_commit_in_a_small_root() {
    const FREE: usize = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = sim(dir.path());
    let engine = Engine::open(store.clone(), master.clone(), options(4096))
        .await
        .unwrap();
    engine
        .store("a", &noise(1, 3 * 4096), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let free_before = engine.stats().await.free_pads;
    engine
        .test_free_pads((0..FREE).map(|_| PadRef::fresh()).collect())
        .await;
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();

    let io = PadIo::new(store.clone(), master.clone());
    let root_size = || async {
        let (bytes, _) = io.read_with_key(master.root_key(), None).await.unwrap();
        (bytes.len(), Root::decode(&bytes).unwrap())
    };
    let (size, root) = root_size().await;
    assert!(size < 256 << 10, "root of {size} bytes");
    assert!(root.free_pages.len() >= 100, "{}", root.free_pages.len());

    // Taking a pad and giving pads back touches only the tail: no free-list page is written.
    let before = writes(&store);
    engine
        .store("b", &noise(2, 4096), Meta::file())
        .await
        .unwrap();
    engine.remove("a").await.unwrap();
    engine.commit().await.unwrap();
    let cost = writes(&store) - before;
    assert_eq!(
        cost.total(),
        1 + 1 + 1,
        "data pad, index page, root: {cost:?}"
    );
    let (size, _) = root_size().await;
    assert!(size < 256 << 10, "root of {size} bytes");

    // Less the pads that now hold the free-list pages.
    let free = engine.stats().await.free_pads;
    let pages = root.free_pages.len();
    assert!(free + pages >= free_before + FREE, "{free} + {pages}");
    drop(engine);
    let engine = Engine::open(store.clone(), master.clone(), options(4096))
        .await
        .unwrap();
    assert_eq!(engine.stats().await.free_pads, free);
    engine.check_accounting().await.unwrap();
    assert_eq!(engine.fetch("b").await.unwrap(), noise(2, 4096));
}

/// Bytes of every pad file of the local store at `dir`.
fn store_bytes(dir: &Path) -> u64 {
    pad_files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

/// On the local store a pad freed by a landed commit keeps its file (the free list reuses it)
/// but not its content: a removed file's space is the disk's again. The pads are reused by
/// the next writes (updates, no creates) and read back after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_pads_give_their_space_back_to_the_disk_and_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store: Arc<CountingStore<LocalStore>> =
        Arc::new(CountingStore::new(LocalStore::open(dir.path()).unwrap()));
    let open = || Engine::open(store.clone(), master.clone(), options(64 << 10));
    let engine = open().await.unwrap();
    engine
        .store("big", &noise(1, 40 * (64 << 10)), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    let with_big = store_bytes(dir.path());
    assert!(with_big > 40 * (64 << 10), "{with_big}");

    engine.remove("big").await.unwrap();
    engine.commit().await.unwrap();
    let after = store_bytes(dir.path());
    assert!(after < 64 << 10, "{after} bytes left of {with_big}");
    engine.check_accounting().await.unwrap();

    let creates = store.stats().creates.load(Ordering::Relaxed);
    engine
        .store("next", &noise(2, 30 * (64 << 10)), Meta::file())
        .await
        .unwrap();
    engine.commit().await.unwrap();
    assert_eq!(store.stats().creates.load(Ordering::Relaxed), creates);
    drop(engine);
    let engine = open().await.unwrap();
    assert_eq!(
        engine.fetch("next").await.unwrap(),
        noise(2, 30 * (64 << 10))
    );
    engine.check_accounting().await.unwrap();
}

/// A file of more chunks than an index page holds keeps them in segments beside its page: 60,000
/// chunks (45,000 was the limit when a file's chunks had to fit its page) commit and read back
/// after a reopen, in a handful of pages. A change to one chunk rewrites that chunk's segment
/// alone, a change to another file of the same page and a rename rewrite none, and removing the
/// file frees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_chunks_keeps_them_in_segments() {
    use mutant_mount::index::Chunk;
    const CHUNKS: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = sim(dir.path());
    let open = || Engine::open(store.clone(), master.clone(), options(4096));
    let engine = open().await.unwrap();
    // Chunks with pads of their own, then thousands holding a few bytes inline.
    engine
        .store("big", &noise(1, 3 * 4096), Meta::file())
        .await
        .unwrap();
    let mut big = engine.entry("big").await.unwrap();
    for idx in 3..CHUNKS {
        big.chunks
            .insert(idx, Chunk::inline(idx.to_le_bytes().to_vec()));
    }
    big.size = CHUNKS * 4096;
    engine.install("big", big.clone()).await.unwrap();
    for n in 0..100 {
        engine
            .store(&format!("small{n}"), &noise(n, 3000), Meta::file())
            .await
            .unwrap();
    }
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();
    let io = PadIo::new(store.clone(), master.clone());
    let (root_bytes, _) = io.read_with_key(master.root_key(), None).await.unwrap();
    let root = Root::decode(&root_bytes).unwrap();
    assert!(root.pages.len() <= 2, "{} pages", root.pages.len());

    let cost = |before: Writes| writes(&store) - before;
    // One chunk changed: its segment, the page and the root.
    let before = writes(&store);
    big.chunks
        .insert(40_000, Chunk::inline(b"changed".to_vec()));
    engine.install("big", big.clone()).await.unwrap();
    engine.commit().await.unwrap();
    assert_eq!(cost(before).total(), 3, "{:?}", cost(before));
    // Another file of the same page changed, then the large file renamed: no segment.
    let before = writes(&store);
    engine.remove("small7").await.unwrap();
    engine.commit().await.unwrap();
    engine.rename("big", "moved").await.unwrap();
    engine.commit().await.unwrap();
    assert!(cost(before).total() <= 4, "{:?}", cost(before));
    engine.check_accounting().await.unwrap();

    drop(engine);
    let engine = open().await.unwrap();
    let read = engine.entry("moved").await.unwrap();
    assert_eq!(read.chunks, big.chunks);
    assert_eq!(read.size, CHUNKS * 4096);
    assert_eq!(
        engine.fetch_range("moved", 0, 3 * 4096).await.unwrap(),
        noise(1, 3 * 4096)
    );
    assert_eq!(
        engine.fetch_range("moved", 40_000 * 4096, 7).await.unwrap(),
        b"changed"
    );
    engine.check_accounting().await.unwrap();

    // Removed, the file gives back its pads and segments: the index is small again.
    let free = engine.stats().await.free_pads;
    engine.remove("moved").await.unwrap();
    engine.commit().await.unwrap();
    engine.check_accounting().await.unwrap();
    let freed = engine.stats().await.free_pads - free;
    assert!(freed >= 3 + CHUNKS as usize / 2048, "{freed} pads freed");
    drop(engine);
    let engine = open().await.unwrap();
    assert_eq!(engine.list_keys().await.len(), 99);
}

/// Rewrites every pad the committed index references (root, pages, data) in the format earlier
/// versions wrote: autonomi's `Scratchpad::new`, BLS-encrypted, same counter. This makes a store
/// as those versions left it, from one this version wrote.
async fn reseal_as_bls(dir: &Path, master: &MasterKey) {
    use mutant_mount::codec::HashKind;
    use mutant_mount::engine::pads::{BLS_DATA_ENCODING, BLS_INDEX_ENCODING};
    use mutant_mount::index::persist::decode_page;

    let store = LocalStore::open(dir).unwrap();
    let io = PadIo::new(Arc::new(store.clone()), master.clone());
    let reseal = |sk: autonomi::SecretKey, encoding: u64, data: Vec<u8>, counter: u64| {
        let store = store.clone();
        async move {
            std::fs::remove_file(store.pad_path(&sk.public_key())).unwrap();
            let pad = Scratchpad::new(&sk, encoding, &data.into(), counter);
            store.create(pad).await.unwrap();
        }
    };
    let (root_bytes, counter) = io.read_with_key(master.root_key(), None).await.unwrap();
    let root = Root::decode(&root_bytes).unwrap();
    for page in root.pages.iter().flatten() {
        let bytes = io
            .read(&page.pad, page.hash, HashKind::Sha256)
            .await
            .unwrap();
        let stored = decode_page(&bytes).unwrap();
        assert!(
            stored.segments.is_empty(),
            "earlier versions wrote no segments"
        );
        for entry in stored.entries.values() {
            for chunk in entry
                .chunks
                .iter()
                .map(|(_, c)| c)
                .filter(|c| c.pad.is_some())
            {
                let pad = chunk.pad.unwrap();
                let data = io.read(&pad, chunk.hash, chunk.hash_kind).await.unwrap();
                let sk = master.pad_key(&pad.seed);
                reseal(sk, BLS_DATA_ENCODING, data.to_vec(), pad.counter.unwrap()).await;
            }
        }
        let sk = master.pad_key(&page.pad.seed);
        reseal(
            sk,
            BLS_INDEX_ENCODING,
            bytes.to_vec(),
            page.pad.counter.unwrap(),
        )
        .await;
    }
    reseal(
        master.root_key(),
        BLS_INDEX_ENCODING,
        root_bytes.to_vec(),
        counter,
    )
    .await;
}

/// The `data_encoding` of each pad file in the store that holds a pad (a free pad's file is
/// cut to its header: its space is the disk's).
async fn encodings(dir: &Path) -> Vec<u64> {
    let store = LocalStore::open(dir).unwrap();
    let mut found = Vec::new();
    for path in pad_files(dir) {
        let owner = path.file_name().unwrap().to_string_lossy().to_string();
        let owner = autonomi::PublicKey::from_hex(&owner).unwrap();
        match store.get(&owner).await {
            Ok(pad) => found.push(pad.data_encoding()),
            Err(_) if std::fs::metadata(&path).unwrap().len() < 1024 => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_in_the_bls_format_reads_byte_identical_and_is_resealed_when_rewritten() {
    use mutant_mount::engine::pads::{BLS_DATA_ENCODING, BLS_INDEX_ENCODING, INDEX_ENCODING};

    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let chunk = 3 * mutant_mount::seal::SEGMENT as u32 + 100;
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}"), noise(40 + i, 1000 + i as usize * 150_000)))
        .collect();
    {
        let engine = open_local(dir.path(), &master, chunk).await.unwrap();
        for (key, data) in &files {
            engine.store(key, data, Meta::file()).await.unwrap();
        }
        engine.commit().await.unwrap();
    }
    reseal_as_bls(dir.path(), &master).await;
    let old = encodings(dir.path()).await;
    assert!(old.contains(&BLS_DATA_ENCODING) && old.contains(&BLS_INDEX_ENCODING));
    assert!(!old.contains(&DATA_ENCODING) && !old.contains(&INDEX_ENCODING));

    // Read whole and in parts (a part read of a BLS pad falls back to reading it whole).
    let engine = open_local(dir.path(), &master, chunk).await.unwrap();
    for (key, data) in &files {
        assert!(engine.fetch(key).await.unwrap() == *data, "{key}");
        let entry = engine.entry(key).await.unwrap();
        for c in entry.chunks.iter().map(|(_, c)| c).filter(|c| c.len > 5000) {
            assert_eq!(
                engine.read_chunk_part(c, 4000, 4100).await.unwrap(),
                engine.read_chunk(c).await.unwrap().slice(4000..4100)
            );
        }
    }
    engine.verify_all().await.unwrap();

    // Rewriting one file reseals its new pads, and the index's, as AEAD; the rest stay BLS
    // and read as before.
    let changed = noise(99, 200_000);
    engine.store("f1", &changed, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    drop(engine);
    let now = encodings(dir.path()).await;
    assert!(now.contains(&DATA_ENCODING) && now.contains(&INDEX_ENCODING));
    assert!(now.contains(&BLS_DATA_ENCODING));
    let engine = open_local(dir.path(), &master, chunk).await.unwrap();
    for (key, data) in &files {
        let want = if key == "f1" { &changed } else { data };
        assert!(engine.fetch(key).await.unwrap() == *want, "{key}");
    }
    engine.verify_all().await.unwrap();
}
