//! The file-system core driven without FUSE, over a store that counts and fails on demand.

use std::sync::atomic::{AtomicBool, Ordering};

use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey};
use std::sync::Arc;

use mutant_mount::engine::{Engine, EngineOptions};
use mutant_mount::fs::namespace::ROOT_INO;
use mutant_mount::fs::{Caller, Errno, FsConfig, FsCore};
use mutant_mount::keys::MasterKey;
use mutant_mount::seal::SEGMENT;
use mutant_mount::store::{CountingStore, LocalStore, PadStore, SimConfig, SimStore, StoreError};

const ME: Caller = Caller { uid: 0, gid: 0 };
const CHUNK: usize = 4096;

async fn core_over(
    dir: &std::path::Path,
    key: &MasterKey,
    sim: SimConfig,
    cfg: FsConfig,
) -> (Arc<FsCore>, Arc<SimStore<LocalStore>>) {
    let opts = EngineOptions {
        scratchpad_size: CHUNK as u32,
        ..Default::default()
    };
    core_with(dir, key, sim, cfg, opts).await
}

async fn core_with(
    dir: &std::path::Path,
    key: &MasterKey,
    sim: SimConfig,
    cfg: FsConfig,
    opts: EngineOptions,
) -> (Arc<FsCore>, Arc<SimStore<LocalStore>>) {
    let store = Arc::new(SimStore::new(LocalStore::open(dir).unwrap(), sim));
    let engine = Engine::open(store.clone() as Arc<dyn PadStore>, key.clone(), opts)
        .await
        .unwrap();
    (FsCore::start(engine, cfg).await.unwrap(), store)
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

#[tokio::test]
async fn a_failed_upload_is_the_error_close_returns() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    // Opening writes the root (1), then the root directory's page and the root again (2, 3).
    let sim = SimConfig {
        crash_after_writes: Some(4),
        ..Default::default()
    };
    let (fs, _) = core_over(dir.path(), &key, sim, FsConfig::default()).await;
    let (attr, fh) = fs
        .create(ROOT_INO, "doc", 0o644, libc::O_WRONLY, ME)
        .await
        .unwrap();
    fs.write(fh, 0, &bytes(1, 10_000)).await.unwrap();
    assert_eq!(fs.flush(fh).await, Err(Errno(libc::EIO)));
    // Still failing at the last close: reported again, never silently dropped.
    assert_eq!(fs.release(fh).await, Err(Errno(libc::EIO)));
    assert_eq!(attr.size, 0);
}

/// Passes through to a local store, flipping a ciphertext byte of every pad read while `corrupt`
/// is set (signature kept, as a bit flip on the wire or disk would).
struct Tampering {
    inner: LocalStore,
    corrupt: AtomicBool,
}

#[async_trait::async_trait]
impl PadStore for Tampering {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.inner.create(pad).await
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.inner.update(pad).await
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let pad = self.inner.get(owner).await?;
        if !self.corrupt.load(Ordering::SeqCst) {
            return Ok(pad);
        }
        let mut data = pad.encrypted_data().to_vec();
        let mid = data.len() / 2;
        data[mid] ^= 0x80;
        Ok(Scratchpad::new_with_signature(
            *pad.owner(),
            pad.data_encoding(),
            Bytes::from(data),
            pad.counter(),
            pad.signature().clone(),
        ))
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.inner.exists(owner).await
    }
}

#[tokio::test]
async fn corrupt_pads_read_as_eio_never_as_content() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    {
        let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
        let (_, fh) = fs
            .create(ROOT_INO, "f", 0o644, libc::O_WRONLY, ME)
            .await
            .unwrap();
        fs.write(fh, 0, &bytes(2, 3 * CHUNK)).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    let store = Arc::new(Tampering {
        inner: LocalStore::open(dir.path()).unwrap(),
        corrupt: AtomicBool::new(false),
    });
    let engine = Engine::open(
        store.clone() as Arc<dyn PadStore>,
        key.clone(),
        EngineOptions::default(),
    )
    .await
    .unwrap();
    let fs = FsCore::start(engine, FsConfig::default()).await.unwrap();
    let fh = open_for_reading(&fs, "f").await;
    store.corrupt.store(true, Ordering::SeqCst);
    assert_eq!(fs.read(fh, 0, 100).await, Err(Errno(libc::EIO)));
    store.corrupt.store(false, Ordering::SeqCst);
    assert_eq!(
        fs.read(fh, 0, 100).await.unwrap(),
        bytes(2, 3 * CHUNK)[..100]
    );
    fs.release(fh).await.unwrap();

    // A corrupted index is refused outright, with a clear error, not shown as an empty tree.
    store.corrupt.store(true, Ordering::SeqCst);
    let err = Engine::open(store as Arc<dyn PadStore>, key, EngineOptions::default())
        .await
        .err()
        .expect("a corrupted index must not open");
    assert!(err.is_corruption(), "{err}");
}

#[tokio::test]
async fn big_writes_stream_full_chunks_before_close_and_reads_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let cfg = FsConfig {
        write_buffer_bytes: 2 * CHUNK,
        ..Default::default()
    };
    let (fs, store) = core_over(dir.path(), &key, SimConfig::default(), cfg).await;
    let (_, fh) = fs
        .create(ROOT_INO, "big", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    let data = bytes(3, 40 * CHUNK + 123);
    let before = store.stats.writes();
    for (i, piece) in data.chunks(1000).enumerate() {
        fs.write(fh, (i * 1000) as u64, piece).await.unwrap();
    }
    let streamed = store.stats.writes() - before;
    assert!(
        streamed >= 35,
        "full chunks upload while writing: {streamed} pad writes"
    );
    // The handle reads its own unsaved and uploaded bytes.
    assert_eq!(fs.read(fh, 0, data.len() as u32 + 10).await.unwrap(), data);
    fs.release(fh).await.unwrap();
    let fh = fs
        .open(
            fs.lookup(ROOT_INO, "big").await.unwrap().ino,
            libc::O_RDONLY,
        )
        .await
        .unwrap();
    assert_eq!(fs.read(fh, 5000, 20_000).await.unwrap(), data[5000..25_000]);
    fs.release(fh).await.unwrap();
    let accounted = fs.engine().check_accounting().await.unwrap();
    assert!(accounted >= 41);
}

#[tokio::test]
async fn random_writes_wait_for_close_and_write_each_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, store) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let mut model = bytes(5, 8 * CHUNK);
    let (attr, fh) = fs
        .create(ROOT_INO, "db", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    fs.write(fh, 0, &model).await.unwrap();
    fs.release(fh).await.unwrap();

    // A database-like writer: small writes all over the file, each chunk touched many times.
    let fh = fs.open(attr.ino, libc::O_RDWR).await.unwrap();
    let before = store.stats.writes();
    let mut x = 12345u64;
    for i in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (x >> 33) as usize % (model.len() - 100);
        let patch = bytes(i as u8, 100);
        model[offset..offset + 100].copy_from_slice(&patch);
        fs.write(fh, offset as u64, &patch).await.unwrap();
    }
    assert_eq!(
        store.stats.writes() - before,
        0,
        "a random writer within the write buffer uploads nothing before close"
    );
    fs.release(fh).await.unwrap();
    let written = store.stats.writes() - before;
    // Eight data pads, then the index commit (a page and the root).
    assert!(
        written <= 8 + 3,
        "{written} pad writes for 8 changed chunks"
    );
    let fh = fs.open(attr.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(fs.read(fh, 0, model.len() as u32).await.unwrap(), model);
    fs.release(fh).await.unwrap();
    fs.engine().check_accounting().await.unwrap();
}

#[tokio::test]
async fn renaming_a_directory_rewrites_no_data_pad() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, store) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let d = fs.mkdir(ROOT_INO, "photos", 0o755, ME).await.unwrap().ino;
    for i in 0..30 {
        let (_, fh) = fs
            .create(d, &format!("p{i}"), 0o644, libc::O_WRONLY, ME)
            .await
            .unwrap();
        fs.write(fh, 0, &bytes(i, 2 * CHUNK)).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    fs.sync_all().await.unwrap();
    let (creates, updates) = (
        store.stats.creates.load(Ordering::Relaxed),
        store.stats.updates.load(Ordering::Relaxed),
    );
    fs.rename(ROOT_INO, "photos", ROOT_INO, "pictures", 0)
        .await
        .unwrap();
    fs.sync_all().await.unwrap();
    let writes = store.stats.creates.load(Ordering::Relaxed) - creates
        + store.stats.updates.load(Ordering::Relaxed)
        - updates;
    // One index page and the root; none of the 60 data pads.
    assert!(writes <= 2, "{writes} pad writes for a rename");
    let moved = fs.lookup(ROOT_INO, "pictures").await.unwrap().ino;
    let f = fs.lookup(moved, "p7").await.unwrap().ino;
    let fh = fs.open(f, libc::O_RDONLY).await.unwrap();
    assert_eq!(
        fs.read(fh, 0, 3 * CHUNK as u32).await.unwrap(),
        bytes(7, 2 * CHUNK)
    );
    fs.release(fh).await.unwrap();
    assert_eq!(
        fs.lookup(ROOT_INO, "photos").await,
        Err(Errno(libc::ENOENT))
    );
}

#[tokio::test]
async fn namespace_errors_are_the_ones_posix_names() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let d = fs.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap().ino;
    fs.mknod(d, "f", libc::S_IFREG | 0o644, 0, ME)
        .await
        .unwrap();
    assert_eq!(
        fs.mkdir(ROOT_INO, "d", 0o755, ME).await,
        Err(Errno(libc::EEXIST))
    );
    assert_eq!(fs.rmdir(ROOT_INO, "d").await, Err(Errno(libc::ENOTEMPTY)));
    assert_eq!(fs.unlink(ROOT_INO, "d").await, Err(Errno(libc::EISDIR)));
    assert_eq!(fs.rmdir(d, "f").await, Err(Errno(libc::ENOTDIR)));
    assert_eq!(
        fs.rename(ROOT_INO, "d", d, "inside", 0).await,
        Err(Errno(libc::EINVAL))
    );
    assert_eq!(
        fs.mkdir(ROOT_INO, &"x".repeat(256), 0o755, ME).await,
        Err(Errno(libc::ENAMETOOLONG))
    );
    fs.mkdir(ROOT_INO, "e", 0o755, ME).await.unwrap();
    assert_eq!(
        fs.rename(ROOT_INO, "e", ROOT_INO, "d", 0).await,
        Err(Errno(libc::ENOTEMPTY))
    );
    assert_eq!(
        fs.rename(ROOT_INO, "e", ROOT_INO, "d", libc::RENAME_NOREPLACE)
            .await,
        Err(Errno(libc::EEXIST))
    );
    assert_eq!(
        fs.getxattr(d, b"user.none").await,
        Err(Errno(libc::ENODATA))
    );
    assert_eq!(
        fs.setxattr(d, b"system.posix_acl_access", b"x", 0).await,
        Err(Errno(libc::EOPNOTSUPP))
    );
    // A namespace Linux does not know, as ext4 answers it.
    assert_eq!(
        fs.setxattr(d, b"foo.bar", b"x", 0).await,
        Err(Errno(libc::EOPNOTSUPP))
    );
    fs.setxattr(d, b"trusted.x", b"x", 0).await.unwrap();
    assert_eq!(
        fs.link(d, ROOT_INO, "dir-link").await,
        Err(Errno(libc::EPERM))
    );
}

/// A directory listed in batches from any position, as the kernel does, shows each name once,
/// after `.` and `..`, with the attributes `getattr` gives (READDIRPLUS: what `ls -l`
/// reads instead of a lookup per name), a file still being written at its written size.
#[tokio::test]
async fn directory_listings_resume_anywhere_and_carry_each_entrys_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let d = fs.mkdir(ROOT_INO, "d", 0o750, ME).await.unwrap().ino;
    let mut names: Vec<String> = (0..150).map(|i| format!("f{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        let (_, fh) = fs
            .create(d, name, 0o600 + (i as u32 % 64), libc::O_WRONLY, ME)
            .await
            .unwrap();
        fs.write(fh, 0, &bytes(i as u8, i * 10)).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    fs.mkdir(d, "sub", 0o700, ME).await.unwrap();
    fs.symlink(d, "link", b"f001", ME).await.unwrap();
    let (_, open) = fs
        .create(d, "open", 0o644, libc::O_WRONLY, ME)
        .await
        .unwrap();
    fs.write(open, 0, &bytes(9, 7000)).await.unwrap();
    names.extend(["link", "open", "sub"].map(String::from));
    names.sort();

    for batch in [1, 7, 64, 1000] {
        let (mut listed, mut plus, mut offset) = (Vec::new(), Vec::new(), 0);
        loop {
            let entries = fs.readdir(d, offset, batch).await.unwrap();
            let with_attrs = fs.readdir_plus(d, offset, batch).await.unwrap();
            assert_eq!(entries.len(), with_attrs.len());
            let Some(&(next, _)) = entries.last() else {
                break;
            };
            assert!(entries.len() <= batch);
            listed.extend(entries);
            plus.extend(with_attrs);
            offset = next;
        }
        let mut listed_names: Vec<&str> = listed.iter().map(|(_, e)| e.name.as_str()).collect();
        assert_eq!(listed_names[..2], [".", ".."]);
        listed_names[2..].sort_unstable();
        let want: Vec<&str> = [".", ".."]
            .into_iter()
            .chain(names.iter().map(String::as_str))
            .collect();
        assert_eq!(listed_names, want, "batches of {batch}");
        assert_eq!((listed[0].1.ino, listed[1].1.ino), (d, ROOT_INO));
        for ((next, entry), (plus_next, name, attr)) in listed.iter().zip(&plus) {
            assert_eq!((next, &entry.name), (plus_next, name));
            assert_eq!((attr.ino, attr.kind), (entry.ino, entry.kind), "{name}");
            let got = fs.getattr(entry.ino).await.unwrap();
            assert_eq!(
                (attr.size, attr.perm, attr.nlink, attr.mtime),
                (got.size, got.perm, got.nlink, got.mtime),
                "{name}"
            );
        }
    }
    let attr_of = |name: &str, plus: &[(u64, String, mutant_mount::fs::Attr)]| {
        plus.iter().find(|(_, n, _)| n == name).unwrap().2.clone()
    };
    let plus = fs.readdir_plus(d, 0, 1000).await.unwrap();
    assert_eq!(attr_of("open", &plus).size, 7000);
    assert_eq!(attr_of("f149", &plus).size, 1490);
    assert_eq!(attr_of("f005", &plus).perm, 0o605);
    assert_eq!(attr_of(".", &plus).nlink, 3);
    assert_eq!(attr_of("link", &plus).size, 4);
    assert!(fs.readdir_plus(d, 1000, 10).await.unwrap().is_empty());
    let f = attr_of("f001", &plus).ino;
    assert_eq!(fs.readdir_plus(f, 0, 10).await, Err(Errno(libc::ENOTDIR)));
    assert_eq!(fs.readdir(999_999, 0, 10).await, Err(Errno(libc::ENOENT)));
    fs.release(open).await.unwrap();
}

/// A reader that removes each name as it lists it, in batches (a one-pass `rm -r`, a file
/// manager emptying a folder), removes every name: offsets are cookies, not positions that
/// shift under the reader. Names added meanwhile are seen at most once.
#[tokio::test]
async fn deleting_while_listing_removes_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let d = fs.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap().ino;
    for i in 0..5000 {
        fs.mknod(d, &format!("n{i:05}"), libc::S_IFIFO | 0o644, 0, ME)
            .await
            .unwrap();
    }
    let mut offset = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let batch = fs.readdir(d, offset, 97).await.unwrap();
        let Some(&(next, _)) = batch.last() else {
            break;
        };
        for (_, entry) in batch {
            if entry.name == "." || entry.name == ".." {
                continue;
            }
            assert!(
                seen.insert(entry.name.clone()),
                "{} listed twice",
                entry.name
            );
            fs.unlink(d, &entry.name).await.unwrap();
            // A name added during the listing may be listed or not, but never twice.
            if entry.name.ends_with('0') && !entry.name.starts_with("late-") {
                fs.mknod(
                    d,
                    &format!("late-{}", entry.name),
                    libc::S_IFIFO | 0o644,
                    0,
                    ME,
                )
                .await
                .unwrap();
            }
        }
        offset = next;
    }
    let left: Vec<String> = fs
        .readdir(d, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.name)
        .filter(|n| n != "." && n != "..")
        .collect();
    assert!(
        left.is_empty(),
        "{} names left, e.g. {:?}",
        left.len(),
        left.first()
    );
}

/// Small files live inline in the index (up to 1 KiB) or packed together (the rest), and with
/// a journal their closes share commits: many small files cost a handful of pad writes, not
/// one pad and one commit each, and read back whole from the store alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_cost_neither_a_pad_nor_a_commit_each() {
    const FILES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let store = Arc::new(SimStore::new(
        LocalStore::open(dir.path()).unwrap(),
        SimConfig::default(),
    ));
    let opts = EngineOptions {
        journal_dir: Some(journal.path().to_path_buf()),
        ..Default::default()
    };
    let engine = Engine::open(store.clone() as Arc<dyn PadStore>, key.clone(), opts)
        .await
        .unwrap();
    assert_eq!(engine.inline_limit(), mutant_mount::engine::INLINE_MAX);
    let fs = FsCore::start(engine, FsConfig::default()).await.unwrap();
    let before = store.stats.writes();
    let d = fs.mkdir(ROOT_INO, "small", 0o755, ME).await.unwrap().ino;
    for i in 0..FILES {
        let (_, fh) = fs
            .create(d, &format!("f{i}"), 0o644, libc::O_WRONLY, ME)
            .await
            .unwrap();
        fs.write(fh, 0, &bytes(i as u8, 1 + i * 4096 / FILES))
            .await
            .unwrap();
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    fs.sync_all().await.unwrap();
    let writes = store.stats.writes() - before;
    eprintln!("{FILES} small files: {writes} pad writes");
    // 2.4 MB of small files: a pack or two, index pages and a root or two.
    assert!(writes <= 16, "{writes} pad writes for {FILES} small files");
    drop(fs);

    // From the store alone: every byte is there.
    let bare: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let engine = Engine::open(bare, key, EngineOptions::default())
        .await
        .unwrap();
    for i in 0..FILES {
        let want = bytes(i as u8, 1 + i * 4096 / FILES);
        let got = engine.fetch(&format!("small/f{i}")).await.unwrap();
        assert!(got == want, "small/f{i} differs");
    }
    assert!(engine.check_accounting().await.is_ok());
}

/// A store in `dir` holding one committed file at the root, written by a core since gone.
async fn store_file(dir: &std::path::Path, key: &MasterKey, name: &str, data: &[u8]) {
    let (fs, _) = core_over(dir, key, SimConfig::default(), FsConfig::default()).await;
    write_file(&fs, name, data).await;
}

/// Opens `name` at the root read-only; its file handle.
async fn open_for_reading(fs: &FsCore, name: &str) -> u64 {
    let ino = fs.lookup(ROOT_INO, name).await.unwrap().ino;
    fs.open(ino, libc::O_RDONLY).await.unwrap()
}

/// Creates `name` at the root holding `data`, committed.
async fn write_file(fs: &FsCore, name: &str, data: &[u8]) {
    let (_, fh) = fs
        .create(ROOT_INO, name, 0o644, libc::O_WRONLY, ME)
        .await
        .unwrap();
    fs.write(fh, 0, data).await.unwrap();
    fs.release(fh).await.unwrap();
    fs.sync_all().await.unwrap();
}

/// Chunks of four segments, for reads of parts of pads.
const BLOCKY_CHUNK: usize = 4 * SEGMENT;

/// A core over the local store in `dir` with [`BLOCKY_CHUNK`] chunks and a chunk cache that
/// holds one of them.
async fn blocky_core(
    dir: &std::path::Path,
    key: &MasterKey,
) -> (Arc<FsCore>, Arc<SimStore<LocalStore>>) {
    let opts = EngineOptions {
        scratchpad_size: BLOCKY_CHUNK as u32,
        cache_bytes: BLOCKY_CHUNK,
        ..Default::default()
    };
    core_with(dir, key, SimConfig::default(), FsConfig::default(), opts).await
}

#[tokio::test]
async fn random_reads_fetch_only_their_chunks_and_sequential_reads_fetch_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(9, 40 * CHUNK);
    store_file(dir.path(), &key, "db", &data).await;
    // A fresh mount: nothing cached.
    let (fs, store) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let fh = open_for_reading(&fs, "db").await;
    let gets = || store.stats.gets.load(Ordering::Relaxed);

    let parts = || store.stats.parts.load(Ordering::Relaxed);
    let (before, parts_before) = (gets(), parts());
    // 38 lands within a chunk of where 37's read ended: chance, not yet a stream.
    for chunk in [30, 5, 20, 12, 37, 38] {
        let at = chunk * CHUNK + 100;
        assert_eq!(
            fs.read(fh, at as u64, 512).await.unwrap(),
            data[at..at + 512]
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        (gets() - before, parts() - parts_before),
        (0, 6),
        "one part of a pad per random read, none fetched ahead"
    );

    let before = gets();
    for chunk in 0..3 {
        let at = chunk * CHUNK;
        assert_eq!(
            fs.read(fh, at as u64, CHUNK as u32).await.unwrap(),
            data[at..at + CHUNK]
        );
    }
    // Read-ahead runs in the background: wait for it to show.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gets() - before <= 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        gets() - before > 3,
        "a sequential reader gets chunks ahead of it"
    );
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn random_reads_fetch_only_their_segments() {
    let chunk = BLOCKY_CHUNK;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(5, 5 * chunk);
    write_file(&blocky_core(dir.path(), &key).await.0, "db", &data).await;
    // A fresh mount: nothing known about any pad.
    let (fs, store) = blocky_core(dir.path(), &key).await;
    let fh = open_for_reading(&fs, "db").await;
    let counts = || {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        (n(&store.stats.gets), n(&store.stats.parts))
    };
    let read = |at: usize, len: usize| {
        let fs = fs.clone();
        async move { fs.read(fh, at as u64, len as u32).await }
    };

    // Even a pad never read before: only the segments a read lies in, one straddling two
    // segments reads both.
    let (gets, parts) = counts();
    let read_before = store.stats.bytes_read.load(Ordering::Relaxed);
    for at in [
        4 * chunk + 100,
        2 * chunk + 3 * SEGMENT + 10,
        7,
        4 * chunk + SEGMENT - 100,
    ] {
        assert_eq!(
            read(at, 4096).await.unwrap(),
            data[at..at + 4096],
            "at {at}"
        );
    }
    assert_eq!(counts(), (gets, parts + 4));
    let bytes_read = store.stats.bytes_read.load(Ordering::Relaxed) - read_before;
    assert!(
        bytes_read <= 5 * (SEGMENT + 16) as u64,
        "{bytes_read} bytes read"
    );

    // A damaged segment on disk is EIO, never content: it fails to authenticate in part, and
    // the whole pad then fails too. The pad's other segments authenticate on their own.
    damage_pad(dir.path(), &key, &fs, "db", 0, 2 * SEGMENT + 7).await;
    assert_eq!(read(2 * SEGMENT, 100).await, Err(Errno(libc::EIO)));
    assert_eq!(read(10, 100).await.unwrap(), data[10..110]);
    let entry = fs.engine().entry("db").await.unwrap();
    let first = entry.chunks.get(0).unwrap().clone();
    assert!(fs.engine().read_chunk(&first).await.is_err(), "read whole");
    // The other pads read on, in part.
    let at = 4 * chunk + 2 * SEGMENT;
    assert_eq!(read(at, 100).await.unwrap(), data[at..at + 100]);
    fs.release(fh).await.unwrap();
}

/// Flips a bit of the sealed byte of plaintext byte `at` of a stored file's chunk `index` in
/// its pad file (the sealed bytes end the file: a salt, then each segment and its tag).
async fn damage_pad(
    dir: &std::path::Path,
    key: &MasterKey,
    fs: &FsCore,
    name: &str,
    index: usize,
    at: usize,
) {
    let entry = fs.engine().entry(name).await.expect("the file's entry");
    let chunk = entry.chunks.get(index as u64).expect("a stored chunk");
    let pad = chunk.pad.expect("in a pad");
    let path = LocalStore::open(dir)
        .unwrap()
        .pad_path(&key.pad_key(&pad.seed).public_key());
    let mut file = std::fs::read(&path).unwrap();
    let sealed = file.len() - mutant_mount::seal::sealed_len(chunk.len as usize);
    let damaged = sealed + mutant_mount::seal::AEAD_HEADER + at + at / SEGMENT * 16;
    file[damaged] ^= 0x10;
    std::fs::write(&path, &file).unwrap();
}

#[tokio::test]
async fn damage_found_by_a_sequential_reader_is_eio() {
    let chunk = BLOCKY_CHUNK;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, store) = blocky_core(dir.path(), &key).await;
    let data = bytes(3, 4 * chunk + 1000);
    write_file(&fs, "f", &data).await;

    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (gets, parts) = (n(&store.stats.gets), n(&store.stats.parts));
    let fh = open_for_reading(&fs, "f").await;
    let mut read = Vec::new();
    while read.len() < data.len() {
        let got = fs.read(fh, read.len() as u64, 64 << 10).await.unwrap();
        read.extend_from_slice(&got);
    }
    assert!(read == data, "the file reads back as written");
    // The cache holds one chunk: the others were read whole from their pads.
    assert!(n(&store.stats.gets) >= gets + 3);
    assert_eq!(n(&store.stats.parts), parts);
    fs.release(fh).await.unwrap();

    // Damage is caught all the same: the damaged segment fails to authenticate.
    damage_pad(dir.path(), &key, &fs, "f", 1, SEGMENT + 1).await;
    drop(fs);
    let (fs, _) = blocky_core(dir.path(), &key).await;
    let fh = open_for_reading(&fs, "f").await;
    let mut at = 0;
    let failed = loop {
        match fs.read(fh, at, 64 << 10).await {
            Ok(got) if got.is_empty() => break None,
            Ok(got) => at += got.len() as u64,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(failed, Some(Errno(libc::EIO)), "read up to {at}");
    assert!(at <= (chunk + SEGMENT) as u64, "read up to {at}");
    fs.release(fh).await.unwrap();
}

/// A file read again after the kernel evicted some of its pages: the kernel asks only for the
/// holes, in order, with gaps between them. Fetching whole chunks for that "stream" would
/// decrypt everything the kernel still holds.
#[tokio::test]
async fn a_reread_with_holes_fetches_only_the_holes() {
    let chunk = BLOCKY_CHUNK;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, store) = blocky_core(dir.path(), &key).await;
    let data = bytes(8, 16 * chunk);
    write_file(&fs, "f", &data).await;

    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let read_before = n(&store.stats.bytes_read);
    let fh = open_for_reading(&fs, "f").await;
    // An 8 KiB hole every 40 KiB: a fifth of the file.
    let mut at = 4096;
    while at + 8192 <= data.len() {
        assert_eq!(
            fs.read(fh, at as u64, 8192).await.unwrap(),
            data[at..at + 8192],
            "at {at}"
        );
        at += 40 << 10;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let read = n(&store.stats.bytes_read) - read_before;
    // Each hole lies in at most two segments.
    assert!(
        read <= (data.len() / (40 << 10) + 1) as u64 * 2 * (SEGMENT + 16) as u64,
        "{read} bytes read from the store for {} bytes of holes",
        data.len() / 5
    );
    fs.release(fh).await.unwrap();
}

/// Passes through to a store, counting the gets in flight and the most there ever were.
struct GetsInFlight<S> {
    inner: S,
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl<S: PadStore> PadStore for GetsInFlight<S> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.inner.create(pad).await
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.inner.update(pad).await
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let pad = self.inner.get(owner).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        pad
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.inner.exists(owner).await
    }
}

/// A core over the local store in `dir`, each pad get taking `latency_ms`, with `parallelism`
/// gets in flight, counting them.
async fn core_counting_gets(
    dir: &std::path::Path,
    key: MasterKey,
    latency_ms: u64,
    parallelism: usize,
) -> (Arc<FsCore>, Arc<GetsInFlight<SimStore<LocalStore>>>) {
    let slow = SimConfig {
        get_latency: std::time::Duration::from_millis(latency_ms),
        ..Default::default()
    };
    let store = Arc::new(GetsInFlight {
        inner: SimStore::new(LocalStore::open(dir).unwrap(), slow),
        now: Default::default(),
        most: Default::default(),
    });
    let opts = EngineOptions {
        parallelism,
        ..Default::default()
    };
    let engine = Engine::open(store.clone() as Arc<dyn PadStore>, key, opts)
        .await
        .unwrap();
    (
        FsCore::start(engine, FsConfig::default()).await.unwrap(),
        store,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_keeps_pad_gets_within_the_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(4, 40 * CHUNK);
    store_file(dir.path(), &key, "movie", &data).await;
    // A slow store, so that read-ahead has many gets waiting at once if nothing bounds them.
    let (fs, store) = core_counting_gets(dir.path(), key, 30, 3).await;
    let fh = open_for_reading(&fs, "movie").await;
    store.most.store(0, Ordering::SeqCst);
    for chunk in 0..40 {
        let at = chunk * CHUNK;
        assert_eq!(
            fs.read(fh, at as u64, CHUNK as u32).await.unwrap(),
            data[at..at + CHUNK]
        );
    }
    let most = store.most.load(Ordering::SeqCst);
    // Read-ahead's three places, and the reader's own chunk, which never queues behind them.
    assert!(
        most <= 3 + 1,
        "{most} pad gets in flight with parallelism 3"
    );
    assert!(most > 1, "read-ahead fetched chunks side by side ({most})");
    fs.release(fh).await.unwrap();
}

/// The kernel reads a stream in many small requests, each of which asks for the same window
/// ahead: chunks already being fetched must cost nothing more (no task each, per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reads_start_each_chunk_of_read_ahead_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(2, 80 * CHUNK);
    store_file(dir.path(), &key, "log", &data).await;
    // Gets slow enough that the whole window is still in flight when the reads end.
    let (fs, _store) = core_counting_gets(dir.path(), key, 500, 2).await;
    let fh = open_for_reading(&fs, "log").await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    for at in (0..CHUNK).step_by(64) {
        assert_eq!(fs.read(fh, at as u64, 64).await.unwrap(), data[at..at + 64]);
    }
    let started = tasks() - before;
    // One task per chunk of the window (at most 32), not one per chunk per read (64 reads).
    assert!(started <= 40, "{started} tasks alive after 64 reads");
    fs.release(fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_waits_behind_its_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(7, 80 * CHUNK);
    store_file(dir.path(), &key, "video", &data).await;
    // One place for pad gets, and gets slow enough that read-ahead holds it for seconds.
    let (fs, store) = core_counting_gets(dir.path(), key, 100, 1).await;
    let fh = open_for_reading(&fs, "video").await;
    // Reading from the start queues read-ahead of the chunks after it.
    assert_eq!(fs.read(fh, 0, 100).await.unwrap(), data[..100]);
    store.most.store(0, Ordering::SeqCst);
    // A jump past the window: its chunk is fetched beside read-ahead's one get, not after it.
    let at = 70 * CHUNK;
    assert_eq!(
        fs.read(fh, at as u64, 100).await.unwrap(),
        data[at..at + 100]
    );
    let most = store.most.load(Ordering::SeqCst);
    assert_eq!(most, 2, "the reader's get ran beside read-ahead's");
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_read_from_the_start_fetches_ahead_wider_over_a_network() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(6, 40 * CHUNK);
    store_file(dir.path(), &key, "song", &data).await;
    let network = SimConfig {
        get_latency: std::time::Duration::from_millis(5),
        ..Default::default()
    };
    // Over a network, the whole window at once: the chunk read and the 32 after it.
    for (sim, least, most) in [(SimConfig::default(), 2, 5), (network, 33, 33)] {
        let (fs, store) = core_over(dir.path(), &key, sim, FsConfig::default()).await;
        let fh = open_for_reading(&fs, "song").await;
        let gets = || store.stats.gets.load(Ordering::Relaxed);
        let before = gets();
        assert_eq!(fs.read(fh, 0, 100).await.unwrap(), data[..100]);
        // Read-ahead runs in the background: wait for it to settle.
        let mut fetched = 0;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            fetched = gets() - before;
            if fetched >= most {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let fetched = fetched.max(gets() - before);
        assert!(
            (least..=most).contains(&fetched),
            "{fetched} pad gets after the first read, expected {least}..={most}"
        );
        fs.release(fh).await.unwrap();
    }
}

/// Over a network, a random reader of a file that fits in half the chunk cache has the whole
/// file fetched once, in the background, from its second read on: one round trip per chunk
/// missed would otherwise be every read's cost. A file too big for that is left alone.
#[tokio::test]
async fn a_random_reader_over_a_network_gets_a_small_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let data = bytes(12, 40 * CHUNK);
    store_file(dir.path(), &key, "db", &data).await;
    let network = SimConfig {
        get_latency: std::time::Duration::from_millis(5),
        ..Default::default()
    };
    // The default cache, and one whose half holds 8 chunks.
    for (cache_bytes, whole) in [(256 << 20, true), (16 * CHUNK, false)] {
        let opts = EngineOptions {
            scratchpad_size: CHUNK as u32,
            cache_bytes,
            ..Default::default()
        };
        let (fs, store) =
            core_with(dir.path(), &key, network.clone(), FsConfig::default(), opts).await;
        let fh = open_for_reading(&fs, "db").await;
        let gets = || store.stats.gets.load(Ordering::Relaxed);
        let before = gets();
        let read = |chunk: usize| {
            let fs = fs.clone();
            let at = chunk * CHUNK + 100;
            let want = data[at..at + 512].to_vec();
            async move { assert_eq!(fs.read(fh, at as u64, 512).await.unwrap(), want) }
        };
        read(30).await;
        read(5).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while whole && gets() - before < 40 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let fetched = gets() - before;
        if whole {
            assert_eq!(fetched, 40, "each chunk of the file fetched once");
            for chunk in [20, 12, 37, 1] {
                read(chunk).await;
            }
            assert_eq!(gets() - before, 40, "later random reads are cache hits");
        } else {
            assert_eq!(fetched, 2, "only the chunks read");
        }
        fs.release(fh).await.unwrap();
    }
}

/// What a program does to one open file, for the model test below.
#[derive(Clone, Debug)]
enum FileOp {
    Write {
        at: usize,
        len: usize,
        seed: u8,
    },
    Truncate(usize),
    /// `fallocate(2)` with one of the modes the core supports.
    Fallocate {
        at: usize,
        len: usize,
        mode: i32,
    },
    Read {
        at: usize,
        len: usize,
    },
    /// Close, commit and open again.
    Reopen,
    /// Close, and start a new core on the same store.
    Remount,
}

fn file_op() -> impl proptest::strategy::Strategy<Value = FileOp> {
    use proptest::prelude::*;
    let span = 5 * CHUNK;
    prop_oneof![
        6 => (0..span, 0..2 * CHUNK, any::<u8>())
            .prop_map(|(at, len, seed)| FileOp::Write { at, len, seed }),
        2 => (0..span).prop_map(FileOp::Truncate),
        2 => (0..span, 1..2 * CHUNK, proptest::sample::select(FALLOCATE_MODES.to_vec()))
            .prop_map(|(at, len, mode)| FileOp::Fallocate { at, len, mode }),
        3 => (0..span + CHUNK, 0..2 * CHUNK).prop_map(|(at, len)| FileOp::Read { at, len }),
        1 => Just(FileOp::Reopen),
        1 => Just(FileOp::Remount),
    ]
}

const FALLOCATE_MODES: [i32; 5] = [
    0,
    libc::FALLOC_FL_KEEP_SIZE,
    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    libc::FALLOC_FL_ZERO_RANGE,
    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
];

/// What `fallocate(2)` in `mode` does to a file's bytes, as on ext4 (space is not reserved).
fn fallocate_model(model: &mut Vec<u8>, at: usize, len: usize, mode: i32) {
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let zeroes = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
    let end = at + len;
    if zeroes && at < model.len() {
        let zero_end = end.min(model.len());
        model[at..zero_end].fill(0);
    }
    if !keep_size && model.len() < end {
        model.resize(end, 0);
    }
}

/// Runs `ops` on one file (a write buffer of two chunks, so uploads start while it is open)
/// and checks every read, and the file after the last op, against a plain byte vector.
async fn run_file_ops(ops: Vec<FileOp>) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::{prop_assert, prop_assert_eq};
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let cfg = FsConfig {
        write_buffer_bytes: 2 * CHUNK,
        ..FsConfig::default()
    };
    let start = || core_over(dir.path(), &key, SimConfig::default(), cfg.clone());
    let (mut fs, _) = start().await;
    let (attr, mut fh) = fs
        .create(ROOT_INO, "f", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    let ino = attr.ino;
    let mut model: Vec<u8> = Vec::new();
    for op in ops {
        match op {
            FileOp::Write { at, len, seed } => {
                let data = bytes(seed, len);
                assert_eq!(fs.write(fh, at as u64, &data).await.unwrap() as usize, len);
                if !data.is_empty() {
                    if model.len() < at + len {
                        model.resize(at + len, 0);
                    }
                    model[at..at + len].copy_from_slice(&data);
                }
            }
            FileOp::Truncate(size) => {
                let set = mutant_mount::fs::SetAttr {
                    size: Some(size as u64),
                    ..Default::default()
                };
                fs.setattr(ino, set).await.unwrap();
                model.resize(size, 0);
            }
            FileOp::Fallocate { at, len, mode } => {
                fs.fallocate(fh, at as u64, len as u64, mode).await.unwrap();
                fallocate_model(&mut model, at, len, mode);
            }
            FileOp::Read { at, len } => {
                let got = fs.read(fh, at as u64, len as u32).await.unwrap();
                let want = &model[at.min(model.len())..(at + len).min(model.len())];
                prop_assert_eq!(&got[..], want, "read of {} at {}", len, at);
            }
            FileOp::Reopen => {
                fs.release(fh).await.unwrap();
                fs.sync_all().await.unwrap();
                fh = fs.open(ino, libc::O_RDWR).await.unwrap();
            }
            FileOp::Remount => {
                fs.release(fh).await.unwrap();
                fs.sync_all().await.unwrap();
                drop(fs);
                fs = start().await.0;
                let found = fs.lookup(ROOT_INO, "f").await.unwrap();
                prop_assert_eq!(found.size, model.len() as u64);
                fh = fs.open(found.ino, libc::O_RDWR).await.unwrap();
            }
        }
        prop_assert_eq!(fs.getattr(ino).await.unwrap().size, model.len() as u64);
    }
    fs.release(fh).await.unwrap();
    fs.sync_all().await.unwrap();
    let fh = open_for_reading(&fs, "f").await;
    let got = fs.read(fh, 0, (model.len() + 1) as u32).await.unwrap();
    prop_assert_eq!(got.len(), model.len());
    prop_assert!(got[..] == model[..], "contents after the last op");
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    #[test]
    fn a_file_reads_back_what_a_model_of_its_writes_truncations_and_fallocates_holds(
        ops in proptest::collection::vec(file_op(), 1..40),
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_file_ops(ops))?;
    }
}

/// Sparse files up to the largest size: a size costs nothing in the index, so a 1 TiB or
/// 16 TiB file commits (in format version 2 its hole list outgrew a pad and the file system
/// could no longer commit nor mount). Bytes written around 2^32, chunk boundaries and the very
/// end read back after a remount, holes read as zeros, and past the largest size is EFBIG.
#[tokio::test]
async fn huge_sparse_files_commit_and_read_back_after_a_remount() {
    use mutant_mount::index::MAX_FILE_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let start = || core_over(dir.path(), &key, SimConfig::default(), FsConfig::default());
    let (fs, store) = start().await;
    let (attr, fh) = fs
        .create(ROOT_INO, "disk.img", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    let truncate = |size: u64| mutant_mount::fs::SetAttr {
        size: Some(size),
        ..Default::default()
    };
    fs.setattr(attr.ino, truncate(1 << 40)).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.sync_all().await.unwrap();
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (0, bytes(1, 10)),
        ((1 << 32) - 3, bytes(2, 7)),
        (CHUNK as u64 * 1000 - 2, bytes(3, CHUNK + 5)),
        ((1 << 40) - 5, bytes(4, 5)),
    ];
    for (at, data) in &writes {
        fs.write(fh, *at, data).await.unwrap();
    }
    fs.flush(fh).await.unwrap();
    let before = store.stats.writes();
    fs.setattr(attr.ino, truncate(MAX_FILE_SIZE)).await.unwrap();
    fs.write(fh, MAX_FILE_SIZE - 4, b"last").await.unwrap();
    assert_eq!(
        fs.write(fh, MAX_FILE_SIZE - 2, b"over").await,
        Err(Errno(libc::EFBIG))
    );
    assert_eq!(
        fs.setattr(attr.ino, truncate(MAX_FILE_SIZE + 1)).await,
        Err(Errno(libc::EFBIG))
    );
    fs.release(fh).await.unwrap();
    fs.sync_all().await.unwrap();
    // Growing a file to 16 TiB rewrote an index page and a root, not pads by the terabyte.
    assert!(store.stats.writes() - before <= 8);
    drop(fs);

    let (fs, _) = start().await;
    let found = fs.lookup(ROOT_INO, "disk.img").await.unwrap();
    assert_eq!(found.size, MAX_FILE_SIZE);
    let fh = fs.open(found.ino, libc::O_RDONLY).await.unwrap();
    for (at, data) in writes
        .iter()
        .chain([&(MAX_FILE_SIZE - 4, b"last".to_vec())])
    {
        let (lo, end) = (at.saturating_sub(3), at + data.len() as u64);
        let hi = (end + 3).min(MAX_FILE_SIZE);
        let got = fs.read(fh, lo, (hi - lo) as u32).await.unwrap();
        let mut want = vec![0; (at - lo) as usize];
        want.extend_from_slice(data);
        want.resize((hi - lo) as usize, 0);
        assert!(got[..] == want[..], "bytes around {at}");
    }
    let hole = fs.read(fh, 1 << 43, 1 << 20).await.unwrap();
    assert!(hole.len() == 1 << 20 && hole.iter().all(|&b| b == 0));
    fs.release(fh).await.unwrap();
}

/// A file of more chunks of data than its index page can list (45,000 was the limit) is
/// written, committed and read back after a remount: 50,000 chunks here, each holding a few
/// bytes. A file may spread its data over at most `MAX_WINDOWS` windows of chunks (only
/// chunks under 2 MiB, as here, can reach that): the write that would open one more is EFBIG
/// and the file keeps everything before it.
#[tokio::test]
async fn files_of_more_chunks_than_a_page_holds_read_back_after_a_remount() {
    use mutant_mount::index::segments::{MAX_WINDOWS, WINDOW_CHUNKS};
    const CHUNKS: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let start = || core_over(dir.path(), &key, SimConfig::default(), FsConfig::default());
    let (fs, _) = start().await;
    let cs = CHUNK as u64;
    let mark = |idx: u64| (idx * 7 + 1).to_le_bytes();
    let (attr, fh) = fs
        .create(ROOT_INO, "many", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    for idx in 0..CHUNKS {
        fs.write(fh, idx * cs + 100, &mark(idx)).await.unwrap();
    }
    fs.release(fh).await.unwrap();

    // Spread: one byte in each window until there are as many windows as may be.
    let window = WINDOW_CHUNKS * cs;
    let (spread, fh) = fs
        .create(ROOT_INO, "spread", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    for w in 0..MAX_WINDOWS as u64 {
        fs.write(fh, w * window, b"w").await.unwrap();
    }
    assert_eq!(
        fs.write(fh, MAX_WINDOWS as u64 * window, b"w").await,
        Err(Errno(libc::EFBIG))
    );
    // More data in a window already used is fine.
    fs.write(fh, 5 * window + 1, b"x").await.unwrap();
    fs.release(fh).await.unwrap();
    fs.sync_all().await.unwrap();
    drop(fs);

    let (fs, _) = start().await;
    let found = fs.lookup(ROOT_INO, "many").await.unwrap();
    assert_eq!(found.ino, attr.ino);
    assert_eq!(found.size, (CHUNKS - 1) * cs + 108);
    // Each chunk stores the bytes up to its last write, not a whole chunk of zeros.
    assert!(
        found.stored <= CHUNKS * 108,
        "{} bytes stored",
        found.stored
    );
    let fh = fs.open(found.ino, libc::O_RDONLY).await.unwrap();
    for idx in (0..CHUNKS).step_by(997).chain([CHUNKS - 1]) {
        let got = fs.read(fh, idx * cs + 98, 12).await.unwrap();
        let mut want = vec![0, 0];
        want.extend_from_slice(&mark(idx));
        if idx < CHUNKS - 1 {
            want.extend_from_slice(&[0, 0]);
        }
        assert_eq!(got[..], want[..], "chunk {idx}");
    }
    fs.release(fh).await.unwrap();
    let found = fs.lookup(ROOT_INO, "spread").await.unwrap();
    assert_eq!(found.ino, spread.ino);
    assert_eq!(found.size, (MAX_WINDOWS as u64 - 1) * window + 1);
    let fh = fs.open(found.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(fh, 5 * window, 3).await.unwrap()[..], b"wx\0");
    let last = (MAX_WINDOWS as u64 - 1) * window;
    assert_eq!(&fs.read(fh, last, 4).await.unwrap()[..], b"w");
    fs.release(fh).await.unwrap();
}

/// Reads a whole file through a fresh handle.
async fn read_whole(fs: &FsCore, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY).await.unwrap();
    let size = fs.getattr(ino).await.unwrap().size;
    let got = fs.read(fh, 0, size as u32 + 1).await.unwrap().to_vec();
    fs.release(fh).await.unwrap();
    got
}

/// Hard links: every name is the same inode with the same bytes and a shared link count; a
/// write through one name shows through the others; unlinking or renaming one name keeps the
/// others; renaming a directory carries the names inside it; all of it from the store after
/// a remount; and the data is freed with the last name, or at the last close if it was open.
#[tokio::test]
async fn hard_links_share_one_file_across_names_and_remounts() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let start = || core_over(dir.path(), &key, SimConfig::default(), FsConfig::default());
    let (fs, _) = start().await;
    let data = bytes(5, 3 * CHUNK + 17);
    write_file(&fs, "a", &data).await;
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    let d = fs.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap().ino;
    let linked = fs.link(a.ino, d, "b").await.unwrap();
    assert_eq!(
        (linked.ino, linked.nlink, linked.size),
        (a.ino, 2, data.len() as u64)
    );
    assert_eq!(fs.lookup(d, "b").await.unwrap().ino, a.ino);
    assert_eq!(fs.link(a.ino, d, "b").await, Err(Errno(libc::EEXIST)));

    // A write through one name is the other name's content.
    let fh = fs.open(a.ino, libc::O_WRONLY).await.unwrap();
    fs.write(fh, 1, b"XYZ").await.unwrap();
    fs.release(fh).await.unwrap();
    let mut want = data.clone();
    want[1..4].copy_from_slice(b"XYZ");
    assert_eq!(
        read_whole(&fs, fs.lookup(d, "b").await.unwrap().ino).await,
        want
    );

    // Unlink the first name; rename the second over a third file; link it again.
    fs.unlink(ROOT_INO, "a").await.unwrap();
    assert_eq!(fs.getattr(a.ino).await.unwrap().nlink, 1);
    write_file(&fs, "c", b"replaced").await;
    fs.rename(d, "b", ROOT_INO, "c", 0).await.unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "c").await.unwrap().ino, a.ino);
    fs.link(a.ino, d, "e").await.unwrap();
    fs.link(a.ino, ROOT_INO, "f").await.unwrap();
    fs.rename(ROOT_INO, "d", ROOT_INO, "moved", 0)
        .await
        .unwrap();
    fs.sync_all().await.unwrap();
    drop(fs);

    let (fs, _) = start().await;
    let c = fs.lookup(ROOT_INO, "c").await.unwrap();
    let moved = fs.lookup(ROOT_INO, "moved").await.unwrap().ino;
    let e = fs.lookup(moved, "e").await.unwrap();
    let f = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((c.ino, c.nlink), (e.ino, 3));
    assert_eq!(f.ino, c.ino);
    assert_eq!(read_whole(&fs, e.ino).await, want);
    assert!(fs.lookup(ROOT_INO, "a").await.is_err());
    fs.engine().check_accounting().await.unwrap();

    // The last name goes while the file is open: readable until the last close.
    let pads_in_use = fs.engine().stats().await.pads_in_use;
    let fh = fs.open(c.ino, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, "c").await.unwrap();
    fs.unlink(moved, "e").await.unwrap();
    fs.unlink(ROOT_INO, "f").await.unwrap();
    assert_eq!(fs.getattr(c.ino).await.unwrap().nlink, 0);
    assert_eq!(&fs.read(fh, 0, 4).await.unwrap()[..], &want[..4]);
    fs.release(fh).await.unwrap();
    fs.sync_all().await.unwrap();
    assert_eq!(fs.engine().stats().await.pads_in_use, pads_in_use - 3);
    fs.engine().check_accounting().await.unwrap();
}

/// A file whose names all went while it was open, when the mount then died: the next mount
/// drops its data rather than keeping a file no name reaches.
#[tokio::test]
async fn a_linked_file_left_without_names_by_a_crash_is_dropped_at_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let start = || core_over(dir.path(), &key, SimConfig::default(), FsConfig::default());
    let (fs, _) = start().await;
    write_file(&fs, "a", &bytes(1, 2 * CHUNK)).await;
    let a = fs.lookup(ROOT_INO, "a").await.unwrap().ino;
    fs.link(a, ROOT_INO, "b").await.unwrap();
    let _fh = fs.open(a, libc::O_RDONLY).await.unwrap();
    fs.unlink(ROOT_INO, "a").await.unwrap();
    fs.unlink(ROOT_INO, "b").await.unwrap();
    fs.engine().commit().await.unwrap();
    drop(fs); // the handle is never released: a crash

    let (fs, _) = start().await;
    assert_eq!(fs.engine().stats().await.pads_in_use, 0);
    assert_eq!(fs.engine().list_keys().await, vec![String::new()]);
    fs.engine().check_accounting().await.unwrap();
}

/// Passes through to a local store, with its writes under control: while `refusal` is set,
/// every write fails with it; while `holding`, each write waits for a permit, and `arrived`
/// counts the writes that came to wait, as a slow network holds an upload.
struct Controlled {
    inner: LocalStore,
    refusal: std::sync::Mutex<Option<StoreError>>,
    holding: AtomicBool,
    permits: tokio::sync::Semaphore,
    arrived: std::sync::atomic::AtomicUsize,
}

impl Controlled {
    fn new(dir: &std::path::Path) -> Self {
        Controlled {
            inner: LocalStore::open(dir).unwrap(),
            refusal: Default::default(),
            holding: AtomicBool::new(false),
            permits: tokio::sync::Semaphore::new(0),
            arrived: Default::default(),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.holding.load(Ordering::SeqCst) {
            self.arrived.fetch_add(1, Ordering::SeqCst);
            self.permits.acquire().await.unwrap().forget();
        }
        match self.refusal.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Until `n` writes in all have come to wait.
    async fn until_arrived(&self, n: usize) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while self.arrived.load(Ordering::SeqCst) < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        waited.await.expect("no write reached the store");
    }
}

#[async_trait::async_trait]
impl PadStore for Controlled {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.check().await?;
        self.inner.create(pad).await
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.check().await?;
        self.inner.update(pad).await
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.inner.get(owner).await
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.inner.exists(owner).await
    }
}

/// A store that refuses a write for a cause the user can act on (a full disk, a quota, a
/// read-only disk, a timeout) reaches `close` as that cause, not EIO; the failed upload gives
/// its pads back, and once the store takes writes again the file system carries on.
#[tokio::test]
async fn a_refused_upload_reaches_close_as_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let store = Arc::new(Controlled::new(dir.path()));
    let opts = EngineOptions {
        scratchpad_size: CHUNK as u32,
        ..Default::default()
    };
    let engine = Engine::open(
        store.clone() as Arc<dyn PadStore>,
        key.clone(),
        opts.clone(),
    )
    .await
    .unwrap();
    let fs = FsCore::start(engine, FsConfig::default()).await.unwrap();
    let os = |code| StoreError::io("pads/x", std::io::Error::from_raw_os_error(code));
    let causes = [
        (os(libc::ENOSPC), libc::ENOSPC),
        (os(libc::EDQUOT), libc::EDQUOT),
        (os(libc::EROFS), libc::EROFS),
        (StoreError::Timeout, libc::ETIMEDOUT),
        (os(libc::EACCES), libc::EIO),
    ];
    for (n, (cause, errno)) in causes.into_iter().enumerate() {
        let (_, fh) = fs
            .create(ROOT_INO, &format!("big{n}"), 0o644, libc::O_WRONLY, ME)
            .await
            .unwrap();
        *store.refusal.lock().unwrap() = Some(cause);
        let _ = fs.write(fh, 0, &bytes(1, 10 * CHUNK)).await;
        assert_eq!(fs.flush(fh).await, Err(Errno(errno)), "case {n}");
        *store.refusal.lock().unwrap() = None;
        let _ = fs.release(fh).await;
        fs.unlink(ROOT_INO, &format!("big{n}")).await.unwrap();

        let (_, fh) = fs
            .create(ROOT_INO, &format!("ok{n}"), 0o644, libc::O_WRONLY, ME)
            .await
            .unwrap();
        fs.write(fh, 0, &bytes(2, 3 * CHUNK)).await.unwrap();
        fs.flush(fh).await.unwrap();
        fs.fsync(fh).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    drop(fs);

    // Everything that succeeded is there after a restart, and nothing else.
    let engine = Engine::open(store.clone() as Arc<dyn PadStore>, key, opts)
        .await
        .unwrap();
    engine.check_accounting().await.unwrap();
    let mut keys = engine.list_keys().await;
    keys.retain(|k| !k.is_empty());
    assert_eq!(keys, ["ok0", "ok1", "ok2", "ok3", "ok4"]);
    for key in keys {
        assert_eq!(engine.fetch(&key).await.unwrap(), bytes(2, 3 * CHUNK));
    }
}

/// A commit packing small files into the store holds back the closes that bring more pieces
/// to pack, but nothing else: `stat`, `ls` and creating files answer while the store is held,
/// as they would on a network that takes its time. (The whole namespace used to wait.)
#[tokio::test]
async fn a_commit_writing_packs_blocks_no_other_operation() {
    let dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let store = Arc::new(Controlled::new(dir.path()));
    let opts = EngineOptions {
        journal_dir: Some(journal.path().to_path_buf()),
        ..Default::default()
    };
    let key = MasterKey::generate();
    let engine = Engine::open(store.clone() as Arc<dyn PadStore>, key.clone(), opts)
        .await
        .unwrap();
    let fs = FsCore::start(engine, FsConfig::default()).await.unwrap();
    // Pieces for a pack: larger than the index keeps inline, far smaller than a pad.
    let small = |seed| bytes(seed, 3000);
    let close_small = |name: &'static str, seed: u8| {
        let fs = fs.clone();
        async move {
            let (_, fh) = fs
                .create(ROOT_INO, name, 0o644, libc::O_WRONLY, ME)
                .await
                .unwrap();
            fs.write(fh, 0, &small(seed)).await.unwrap();
            fs.release(fh).await
        }
    };
    close_small("a", 1).await.unwrap();

    // The commit's first packing pass packs `a` and waits at the store.
    store.holding.store(true, Ordering::SeqCst);
    let commit = tokio::spawn({
        let fs = fs.clone();
        async move { fs.sync_all().await }
    });
    store.until_arrived(1).await;
    // `b` arrives meanwhile; the last pass, which holds installs of pieces back, packs it.
    close_small("b", 2).await.unwrap();
    store.permits.add_permits(1);
    store.until_arrived(2).await;

    // `c` must wait for that pass; everything else must not.
    let c = tokio::spawn(close_small("c", 3));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answers = async {
        fs.getattr(ROOT_INO).await.unwrap();
        assert_eq!(fs.lookup(ROOT_INO, "a").await.unwrap().size, 3000);
        let names = fs.readdir(ROOT_INO, 0, 100).await.unwrap();
        assert!(names.len() >= 4, "listing: {names:?}");
        let (_, fh) = (fs.create(ROOT_INO, "d", 0o644, libc::O_WRONLY, ME).await).unwrap();
        fs.release(fh).await.unwrap();
        fs.mkdir(ROOT_INO, "e", 0o755, ME).await.unwrap();
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), answers)
        .await
        .expect("an operation waited for the store while a commit wrote packs");
    assert!(
        !c.is_finished(),
        "c's install did not wait for the packing pass"
    );

    store.holding.store(false, Ordering::SeqCst);
    store.permits.add_permits(1000);
    commit.await.unwrap().unwrap();
    c.await.unwrap().unwrap();
    fs.sync_all().await.unwrap();
    drop(fs);

    let bare: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let engine = Engine::open(bare, key, EngineOptions::default())
        .await
        .unwrap();
    for (name, seed) in [("a", 1), ("b", 2), ("c", 3)] {
        assert!(engine.fetch(name).await.unwrap() == small(seed), "{name}");
    }
    assert_eq!(engine.fetch("d").await.unwrap(), b"");
}

/// On the local store `fsync` makes a change durable by syncing the journal beside it, not by a
/// commit (one disk flush, not a page, a root and their directories): the change is not yet in
/// the committed index after it, and a mount that never commits again (killed) replays it.
#[tokio::test]
async fn fsync_on_the_local_store_syncs_the_journal_and_a_crash_keeps_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let opts = EngineOptions {
        journal_dir: Some(journal.path().to_path_buf()),
        scratchpad_size: CHUNK as u32,
        ..Default::default()
    };
    let store = Arc::new(CountingStore::new(LocalStore::open(dir.path()).unwrap()));
    let stats = store.stats();
    let engine = Engine::open(store as Arc<dyn PadStore>, key.clone(), opts.clone())
        .await
        .unwrap();
    let fs = FsCore::start(engine, FsConfig::default()).await.unwrap();
    let (_, fh) = fs
        .create(ROOT_INO, "db", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    fs.write(fh, 0, &bytes(7, 3 * CHUNK + 10)).await.unwrap();
    let roots_before = stats.writes();
    fs.fsync(fh).await.unwrap();
    assert!(fs.engine().has_uncommitted().await, "fsync committed");
    // Only the file's own pads were written (three chunks; the tail is inline): no index
    // page, no root.
    assert_eq!(stats.writes() - roots_before, 3);
    // The machine stops here: what is on disk now is all there is.
    let crashed = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &str| {
        let to = crashed.path().join(to);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&to)
            .status()
            .unwrap();
        assert!(status.success());
        to
    };
    let (store_dir, journal_dir) = (copy(dir.path(), "store"), copy(journal.path(), "journal"));
    drop(fs);

    let bare: Arc<dyn PadStore> = Arc::new(LocalStore::open(&store_dir).unwrap());
    let committed = Engine::open(bare, key.clone(), EngineOptions::default())
        .await
        .unwrap();
    assert!(
        committed.fetch("db").await.is_err(),
        "no commit after the fsync"
    );
    drop(committed);
    let opts = EngineOptions {
        journal_dir: Some(journal_dir),
        ..opts
    };
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(&store_dir).unwrap());
    let replayed = Engine::open(store, key, opts).await.unwrap();
    assert_eq!(
        replayed.fetch("db").await.unwrap(),
        bytes(7, 3 * CHUNK + 10)
    );
}

/// `RENAME_EXCHANGE` swaps two names, a file and a directory with what is under it, as one
/// change that a remount keeps; it refuses to put a directory inside itself and needs both
/// names.
#[tokio::test]
async fn rename_exchange_swaps_two_names_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    write_file(&fs, "a", &bytes(1, 2 * CHUNK)).await;
    let d = fs.mkdir(ROOT_INO, "b", 0o755, ME).await.unwrap().ino;
    let inner = fs.mkdir(d, "inner", 0o755, ME).await.unwrap().ino;
    let (_, fh) = fs.create(d, "c", 0o644, libc::O_WRONLY, ME).await.unwrap();
    fs.write(fh, 0, b"under b").await.unwrap();
    fs.release(fh).await.unwrap();

    let exchange = libc::RENAME_EXCHANGE;
    assert_eq!(
        fs.rename(ROOT_INO, "b", d, "inner", exchange).await,
        Err(Errno(libc::EINVAL)),
        "a directory swapped into itself"
    );
    assert_eq!(
        fs.rename(ROOT_INO, "a", ROOT_INO, "missing", exchange)
            .await,
        Err(Errno(libc::ENOENT))
    );
    fs.rename(ROOT_INO, "a", ROOT_INO, "b", exchange)
        .await
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "a").await.unwrap().ino, d);
    assert_eq!(fs.lookup(d, "inner").await.unwrap().ino, inner);
    fs.sync_all().await.unwrap();
    drop(fs);

    let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    assert_eq!(
        fs.lookup(ROOT_INO, "b").await.unwrap().size,
        2 * CHUNK as u64
    );
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(a.kind, mutant_mount::index::FileKind::Dir);
    let c = fs.lookup(a.ino, "c").await.unwrap().ino;
    let fh = fs.open(c, libc::O_RDONLY).await.unwrap();
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"under b");
    let b = fs.lookup(ROOT_INO, "b").await.unwrap().ino;
    let fh = fs.open(b, libc::O_RDONLY).await.unwrap();
    let got = fs.read(fh, 0, 2 * CHUNK as u32).await.unwrap();
    assert!(got[..] == bytes(1, 2 * CHUNK)[..]);
}

/// `fallocate(2)`: punching chunks out of a committed file gives their pads back to the free
/// list and the bytes back to `st_blocks` and `df`; the modes the core has no meaning for, an
/// empty range and a range past the largest file are refused as ext4 refuses them.
#[tokio::test]
async fn punched_chunks_free_their_pads_and_unsupported_modes_are_refused() {
    use mutant_mount::index::MAX_FILE_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (fs, _) = core_over(dir.path(), &key, SimConfig::default(), FsConfig::default()).await;
    let (attr, fh) = fs
        .create(ROOT_INO, "f", 0o644, libc::O_RDWR, ME)
        .await
        .unwrap();
    let data = bytes(7, 6 * CHUNK);
    fs.write(fh, 0, &data).await.unwrap();
    fs.fsync(fh).await.unwrap();
    let stored_before = fs.getattr(attr.ino).await.unwrap().stored;
    let used_before = fs.statfs().await.unwrap().blocks - fs.statfs().await.unwrap().bfree;
    let free_before = fs.engine().stats().await.free_pads;

    // Chunks 1 to 4 whole, and the last 10 bytes of chunk 0.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let from = CHUNK as u64 - 10;
    fs.fallocate(fh, from, 4 * CHUNK as u64 + 10, punch)
        .await
        .unwrap();
    fs.fsync(fh).await.unwrap();
    let after = fs.getattr(attr.ino).await.unwrap();
    assert_eq!(after.size, data.len() as u64, "KEEP_SIZE keeps the size");
    assert!(
        after.stored <= stored_before - 4 * CHUNK as u64,
        "{} stored bytes, {stored_before} before",
        after.stored
    );
    let used_after = fs.statfs().await.unwrap().blocks - fs.statfs().await.unwrap().bfree;
    assert!(
        used_after < used_before,
        "df used {used_after} >= {used_before}"
    );
    assert!(
        fs.engine().stats().await.free_pads >= free_before + 4,
        "the four punched chunks' pads are free again"
    );
    let got = fs.read(fh, 0, data.len() as u32).await.unwrap();
    let mut want = data.clone();
    want[from as usize..5 * CHUNK].fill(0);
    assert!(got[..] == want[..]);

    for mode in [
        libc::FALLOC_FL_COLLAPSE_RANGE,
        libc::FALLOC_FL_INSERT_RANGE,
        libc::FALLOC_FL_PUNCH_HOLE,
        libc::FALLOC_FL_UNSHARE_RANGE,
    ] {
        assert_eq!(
            fs.fallocate(fh, 0, CHUNK as u64, mode).await,
            Err(Errno(libc::EOPNOTSUPP)),
            "mode {mode:#x}"
        );
    }
    assert_eq!(fs.fallocate(fh, 0, 0, 0).await, Err(Errno(libc::EINVAL)));
    assert_eq!(
        fs.fallocate(fh, MAX_FILE_SIZE - 1, 2, 0).await,
        Err(Errno(libc::EFBIG))
    );
    assert_eq!(fs.fallocate(9999, 0, 1, 0).await, Err(Errno(libc::EBADF)));
    // Preallocating to the largest size is allowed, and stores nothing.
    fs.fallocate(fh, MAX_FILE_SIZE - 1, 1, 0).await.unwrap();
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, MAX_FILE_SIZE);
    fs.release(fh).await.unwrap();
}
