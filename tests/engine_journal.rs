//! The engine's local journal: a process killed between commits loses no change whose call had
//! returned, and changes a commit cannot write (someone else changed the index) are saved as
//! files rather than lost or forced over the other writer's index.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mutant_mount::engine::{Engine, EngineOptions, Error};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{LocalStore, PadStore, RetryPolicy, RetryingStore, SimConfig, SimStore};
use proptest::prelude::*;

mod engine_common;
use engine_common::{value, Model, Value, KEYS};

const CHUNK: u32 = 64;

#[derive(Clone, Debug)]
enum Op {
    Store { key: usize, value: Value, mode: u32 },
    Chmod { key: usize, mode: u32 },
    Rename { from: usize, to: usize },
    Remove { key: usize },
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        6 => (key.clone(), value(CHUNK as usize), 0u32..0o1000)
            .prop_map(|(key, value, mode)| Op::Store { key, value, mode }),
        2 => (key.clone(), 0u32..0o1000).prop_map(|(key, mode)| Op::Chmod { key, mode }),
        2 => (key.clone(), key.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => key.prop_map(|key| Op::Remove { key }),
        2 => Just(Op::Commit),
    ]
}

fn options(journal: &Path) -> EngineOptions {
    EngineOptions {
        scratchpad_size: CHUNK,
        cache_bytes: 0,
        parallelism: 4,
        journal_dir: Some(journal.to_path_buf()),
        ..Default::default()
    }
}

/// Options for opening the journal of an engine just dropped ("killed"): as a restarted mount
/// does, wait for it to be let go, since the dropped engine's commit or upload tasks hold it
/// until they end.
fn reopen_options(journal: &Path) -> EngineOptions {
    EngineOptions {
        lock_wait: std::time::Duration::from_secs(30),
        ..options(journal)
    }
}

fn local(dir: &Path) -> Arc<dyn PadStore> {
    Arc::new(LocalStore::open(dir).unwrap())
}

async fn contents(engine: &Engine) -> Model {
    let mut found = Model::new();
    for key in engine.list_keys().await {
        let data = engine.fetch(&key).await.expect("readable");
        let mode = engine.entry(&key).await.unwrap().meta.mode;
        found.insert(key, (data, mode));
    }
    found
}

/// Runs `ops` on a journaled engine whose store fails after `crash_after` writes (and now and
/// then before), then drops it without a last commit, as a killed process would. A fresh engine
/// on the bare store with the same journal must hold every change whose call returned Ok.
async fn run(ops: Vec<Op>, crash_after: u64, seed: u64) -> Result<(), TestCaseError> {
    let store_dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let faulty: Arc<dyn PadStore> = Arc::new(RetryingStore::new(
        SimStore::new(
            LocalStore::open(store_dir.path()).unwrap(),
            SimConfig {
                crash_after_writes: Some(crash_after),
                error_rate: 0.05,
                cut_rate: 0.05,
                seed,
                ..Default::default()
            },
        ),
        RetryPolicy {
            attempts: 1,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            attempt_limit: None,
        },
    ));
    let Ok(engine) = Engine::open(faulty, master.clone(), options(journal.path())).await else {
        return Ok(()); // the store died before the first index was written
    };
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Store { key, value, mode } => {
                let data = value.bytes(CHUNK as usize);
                let meta = Meta {
                    mode,
                    ..Meta::file()
                };
                if engine.store(KEYS[key], &data, meta).await.is_ok() {
                    model.insert(KEYS[key].to_string(), (data, mode));
                }
            }
            Op::Chmod { key, mode } => {
                let r = engine.update_meta(KEYS[key], |m| m.mode = mode).await;
                match model.get_mut(KEYS[key]) {
                    Some(v) => {
                        prop_assert!(r.is_ok(), "chmod: {r:?}");
                        v.1 = mode;
                    }
                    None => prop_assert!(matches!(r, Err(Error::NotFound(_)))),
                }
            }
            Op::Rename { from, to } => {
                let r = engine.rename(KEYS[from], KEYS[to]).await;
                if let Some(v) = model.remove(KEYS[from]) {
                    prop_assert!(r.is_ok(), "rename: {r:?}");
                    model.insert(KEYS[to].to_string(), v);
                }
            }
            Op::Remove { key } => {
                let r = engine.remove(KEYS[key]).await;
                prop_assert_eq!(r.is_ok(), model.remove(KEYS[key]).is_some());
            }
            // Whether it lands or not, the journal covers the changes.
            Op::Commit => drop(engine.commit().await),
        }
        let accounted = engine.check_accounting().await;
        prop_assert!(accounted.is_ok(), "accounting: {accounted:?}");
    }
    drop(engine);

    let reopened = Engine::open(
        local(store_dir.path()),
        master.clone(),
        reopen_options(journal.path()),
    )
    .await
    .expect("reopen with the journal");
    prop_assert_eq!(reopened.recovered_at(), None);
    prop_assert_eq!(&contents(&reopened).await, &model);
    let accounted = reopened.check_accounting().await;
    prop_assert!(accounted.is_ok(), "accounting after replay: {accounted:?}");
    reopened.commit().await.expect("commit after replay");
    prop_assert!(reopened.verify_all().await.is_ok());

    // gc after the crash returns only pads nothing uses: every file still reads whole, also
    // once a new write has reused the pads it freed.
    let leaked = reopened
        .find_leaked_pads()
        .await
        .expect("the local store answers");
    reopened.reclaim(&leaked).await.expect("gc commits");
    let accounted = reopened.check_accounting().await;
    prop_assert!(accounted.is_ok(), "accounting after gc: {accounted:?}");
    let again = reopened
        .find_leaked_pads()
        .await
        .expect("the local store answers");
    prop_assert!(again.pads.is_empty(), "found twice: {again:?}");
    let after = vec![7u8; CHUNK as usize * 8];
    reopened
        .store("after-gc", &after, Meta::file())
        .await
        .expect("a write after gc");
    model.insert("after-gc".to_string(), (after, Meta::file().mode));
    reopened.commit().await.expect("commit after gc");
    prop_assert_eq!(&contents(&reopened).await, &model);
    prop_assert!(reopened.verify_all().await.is_ok());
    drop(reopened);

    // Committed: the store alone (no journal) now holds it all.
    let bare_opts = EngineOptions {
        journal_dir: None,
        ..options(journal.path())
    };
    let bare = Engine::open(local(store_dir.path()), master, bare_opts)
        .await
        .unwrap();
    prop_assert_eq!(&contents(&bare).await, &model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_killed_engine_loses_no_acknowledged_change(
        ops in proptest::collection::vec(op(), 1..30),
        crash_after in 1u64..60,
        seed in any::<u64>(),
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops, crash_after, seed))?;
    }
}

/// Two engines on one store and key: A commits first; B's commit is refused, and B's changes
/// are recovered into the file system under `lost+found/`, on top of A's index, at once
/// (`save_uncommitted`) or by the next open of B's journal; the local disk gets no copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_keeps_the_changes_recoverable() {
    for killed in [false, true] {
        let store_dir = tempfile::tempdir().unwrap();
        let (journal_a, journal_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = MasterKey::generate();
        let store = local(store_dir.path());
        let a = Engine::open(store.clone(), master.clone(), options(journal_a.path()))
            .await
            .unwrap();
        a.store("shared", b"v1", Meta::file()).await.unwrap();
        a.store("dir/kept", b"A's", Meta::file()).await.unwrap();
        a.commit().await.unwrap();
        let b = Engine::open(store.clone(), master.clone(), options(journal_b.path()))
            .await
            .unwrap();

        a.store("from-a", b"written by A", Meta::file())
            .await
            .unwrap();
        a.commit().await.unwrap();

        let long: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        b.store("dir/from-b", &long, Meta::file()).await.unwrap();
        b.store("empty", b"", Meta::file()).await.unwrap();
        b.rename("shared", "renamed-by-b").await.unwrap();
        assert!(matches!(b.commit().await, Err(Error::Conflict)));
        assert!(b.in_conflict().await);
        // Refused at once from now on: nothing more is written over A's index.
        assert!(matches!(b.commit().await, Err(Error::Conflict)));

        let saved = if killed {
            drop(b);
            let b2 = Engine::open(
                store.clone(),
                master.clone(),
                reopen_options(journal_b.path()),
            )
            .await
            .unwrap();
            // B's journal does not apply to A's index: nothing of it is replayed...
            assert_eq!(b2.entry("dir/from-b").await, None);
            assert_eq!(b2.fetch("from-a").await.unwrap(), b"written by A");
            assert!(!b2.has_uncommitted().await);
            b2.recovered_at().expect("recovered at open").to_string()
        } else {
            let saved = b
                .save_uncommitted()
                .await
                .unwrap()
                .expect("changes to save");
            drop(b);
            // Saved once: the journal no longer holds them.
            let b2 = Engine::open(
                store.clone(),
                master.clone(),
                reopen_options(journal_b.path()),
            )
            .await
            .unwrap();
            assert_eq!(b2.recovered_at(), None);
            saved
        };
        assert!(saved.starts_with("lost+found/"), "{saved}");
        // ...but every change is in the recovered copy, committed on top of A's index.
        let c = Engine::open(
            store.clone(),
            master.clone(),
            EngineOptions {
                journal_dir: None,
                ..options(journal_b.path())
            },
        )
        .await
        .unwrap();
        assert_eq!(c.fetch(&format!("{saved}/dir/from-b")).await.unwrap(), long);
        assert_eq!(c.fetch(&format!("{saved}/empty")).await.unwrap(), b"");
        assert_eq!(c.fetch("from-a").await.unwrap(), b"written by A");
        assert_eq!(c.fetch("dir/kept").await.unwrap(), b"A's");
        assert_eq!(c.fetch("shared").await.unwrap(), b"v1");
        let changes =
            String::from_utf8(c.fetch(&format!("{saved}/CHANGES.txt")).await.unwrap()).unwrap();
        assert!(
            changes.contains("wrote dir/from-b (1000 bytes)"),
            "{changes}"
        );
        assert!(
            changes.contains("renamed shared -> renamed-by-b"),
            "{changes}"
        );
        c.check_accounting().await.unwrap();
        c.verify_all().await.unwrap();
        // Nothing of it on local disk: no recovered copies beside the journal.
        let local: Vec<_> = std::fs::read_dir(journal_b.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!local.iter().any(|n| n == "recovered"), "{local:?}");

        // A's journal is locked while A is open.
        let check = Engine::open(store, master, options(journal_a.path()))
            .await
            .err();
        assert!(
            matches!(&check, Some(Error::InUse(msg)) if msg.contains("another mutant-mount")),
            "A's journal is locked while A is open: {check:?}"
        );
        assert_eq!(a.fetch("shared").await.unwrap(), b"v1");
        assert_eq!(a.fetch("from-a").await.unwrap(), b"written by A");
    }
}

/// A journal record as format version 2 wrote it (the same records; entries listed every
/// chunk of a file, holes included).
mod v2 {
    use mutant_mount::index::{Meta, PadRef};
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Chunk {
        pub pad: Option<PadRef>,
        pub len: u32,
        pub hash: [u8; 32],
        pub hash_kind: mutant_mount::codec::HashKind,
        pub inline: Option<Vec<u8>>,
    }

    #[derive(Serialize)]
    pub struct Entry {
        pub chunks: Vec<Chunk>,
        pub size: u64,
        pub meta: Meta,
    }

    #[derive(Serialize)]
    #[allow(dead_code)] // the variants before the one written keep bincode's numbering
    pub enum Op {
        Install { key: String, entry: Entry },
    }

    #[derive(Serialize)]
    #[allow(dead_code)]
    pub enum Record {
        Base { root_hash: [u8; 32] },
        Op { seq: u64, op: Op },
    }
}

/// `truncate -s 500G` under format version 2 journaled an entry listing 119,000 hole chunks,
/// more than a pad holds: no commit could ever write it, and the file system did not mount
/// again. The journal such a mount left behind is replayed by today's program: the file keeps
/// its size, costs a few bytes of index, and the commit lands.
#[tokio::test]
async fn a_journal_that_bricked_format_version_2_replays_and_commits() {
    use mutant_mount::codec::{self, HashKind, Kind};
    use mutant_mount::engine::pads::PadIo;
    let store_dir = tempfile::tempdir().unwrap();
    let journal_dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let chunk = 4_190_208u32;
    let opts = || EngineOptions {
        journal_dir: Some(journal_dir.path().to_path_buf()),
        ..Default::default()
    };
    let engine = Engine::open(local(store_dir.path()), key.clone(), opts())
        .await
        .unwrap();
    engine.store("kept", b"hello", Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    drop(engine);

    // The journal as the old program left it, unsealed: a base record naming the stored
    // root, then the change no commit could write.
    let io = PadIo::new(local(store_dir.path()), key.clone());
    let (root, _) = io.read_with_key(key.root_key(), None).await.unwrap();
    let frame = |record: &v2::Record| {
        let mut bytes = codec::encode(Kind::JournalRecord, record).unwrap();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let mut out = (bytes.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&bytes);
        out
    };
    let path = journal_dir.path().join("journal");
    let mut journal = frame(&v2::Record::Base {
        root_hash: codec::sha256(&root),
    });
    let size = 500u64 << 30;
    let hole = || v2::Chunk {
        pad: None,
        len: chunk,
        hash: [0; 32],
        hash_kind: HashKind::Blake3,
        inline: None,
    };
    let record = v2::Record::Op {
        seq: 1,
        op: v2::Op::Install {
            key: "disk.img".into(),
            entry: v2::Entry {
                chunks: (0..size.div_ceil(chunk as u64)).map(|_| hole()).collect(),
                size,
                meta: Meta::file(),
            },
        },
    };
    let op = frame(&record);
    assert!(
        op.len() > 4 << 20,
        "the entry outgrew a pad: {} bytes",
        op.len()
    );
    journal.extend_from_slice(&op);
    std::fs::write(&path, journal).unwrap();

    let engine = Engine::open(local(store_dir.path()), key.clone(), opts())
        .await
        .expect("the store mounts again");
    engine.commit().await.expect("and commits");
    drop(engine);
    let engine = Engine::open(local(store_dir.path()), key, opts())
        .await
        .unwrap();
    let entry = engine.entry("disk.img").await.expect("the change was kept");
    assert_eq!((entry.size, entry.chunks.len()), (size, 0));
    assert_eq!(engine.fetch("kept").await.unwrap(), b"hello");
    assert_eq!(
        engine.fetch_range("disk.img", 1 << 30, 4).await.unwrap(),
        [0; 4]
    );
}

/// B journals `changes` against A's first index and is killed; A commits meanwhile. Returns the
/// store, the key and B's journal dir: B's journal is now foreign to the store's index.
async fn foreign_journal(
    changes: impl AsyncFnOnce(&Engine),
) -> (tempfile::TempDir, MasterKey, tempfile::TempDir) {
    let store_dir = tempfile::tempdir().unwrap();
    let journal_b = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let store = local(store_dir.path());
    let a = Engine::open(
        store.clone(),
        master.clone(),
        EngineOptions {
            journal_dir: None,
            ..options(journal_b.path())
        },
    )
    .await
    .unwrap();
    a.store("a-file", b"A", Meta::file()).await.unwrap();
    a.commit().await.unwrap();
    let b = Engine::open(store.clone(), master.clone(), options(journal_b.path()))
        .await
        .unwrap();
    changes(&b).await;
    drop(b);
    a.store("later", b"A again", Meta::file()).await.unwrap();
    a.commit().await.unwrap();
    (store_dir, master, journal_b)
}

fn journal_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("journal")).unwrap()
}

/// A crafted journal (sealed with the right key: the worst case) naming keys that climb out
/// of the recovery directory or are absolute: none of them is recovered anywhere, neither in
/// the file system nor on local disk, and the safe ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_keys_that_leave_its_directory() {
    use mutant_mount::at_rest::LocalKeys;
    use mutant_mount::engine::journal::{self, Journal, Op as JOp};
    use mutant_mount::index::{Chunk, ChunkMap, Entry};

    let store_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let journal_dir = data.path().join("deep/journal");
    let master = MasterKey::generate();
    let store = local(store_dir.path());
    let a = Engine::open(
        store.clone(),
        master.clone(),
        EngineOptions {
            journal_dir: None,
            ..options(&journal_dir)
        },
    )
    .await
    .unwrap();
    a.store("a-file", b"A", Meta::file()).await.unwrap();
    a.commit().await.unwrap();
    drop(a);

    let file = |bytes: &[u8]| Entry {
        chunks: ChunkMap::from_ordered([Chunk::inline(bytes.to_vec())]),
        size: bytes.len() as u64,
        ..Entry::empty(Meta::file())
    };
    let bad = [
        "../../escaped",
        "/tmp/absolute-escape",
        "ok/../../../x",
        ".",
        "a//b",
        "",
    ];
    let mut ops: Vec<JOp> = bad
        .iter()
        .map(|k| JOp::Install {
            key: k.to_string(),
            entry: file(b"evil"),
        })
        .collect();
    ops.push(JOp::Install {
        key: "ok/fine".into(),
        entry: file(b"fine"),
    });
    std::fs::create_dir_all(&journal_dir).unwrap();
    let path = journal_dir.join("journal");
    let lock = journal::lock(&path, Duration::ZERO, false).unwrap();
    // A base root the store never had: the journal is foreign, so it is recovered.
    drop(
        Journal::create(
            &path,
            lock,
            LocalKeys::derive(&master).journal,
            [7; 32],
            ops,
        )
        .unwrap(),
    );

    let b = Engine::open(store.clone(), master.clone(), options(&journal_dir))
        .await
        .unwrap();
    let saved = b.recovered_at().expect("recovered").to_string();
    assert_eq!(b.fetch(&format!("{saved}/ok/fine")).await.unwrap(), b"fine");
    let keys = b.list_keys().await;
    for key in &keys {
        assert!(
            key.split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".."),
            "{key:?} in the index"
        );
        if let Ok(bytes) = b.fetch(key).await {
            assert_ne!(bytes, b"evil", "{key:?} holds a refused file");
        }
    }
    let changes =
        String::from_utf8(b.fetch(&format!("{saved}/CHANGES.txt")).await.unwrap()).unwrap();
    assert!(
        changes.contains("../../escaped: NOT recovered"),
        "{changes}"
    );
    assert!(!std::path::Path::new("/tmp/absolute-escape").exists());
    // Nothing was written on local disk beside the journal.
    let mut found = Vec::new();
    let mut stack = vec![data.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    // The log of fresh pads is sealed and holds no name or content; the reserve is zeros.
    assert_eq!(
        found,
        ["fresh-pads", "journal", "journal.lock", "journal.reserve"]
    );
}

/// A journal with a damaged change in the middle is refused and left as it is: the changes
/// after the damage were acknowledged too. `discard_damaged_journal` then applies what can be
/// read, and never the damaged change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_middle_frame_refuses_the_open_and_keeps_the_journal() {
    let store_dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let e = Engine::open(
        local(store_dir.path()),
        master.clone(),
        options(journal.path()),
    )
    .await
    .unwrap();
    for key in ["one", "two", "three"] {
        e.store(key, key.as_bytes(), Meta::file()).await.unwrap();
    }
    drop(e); // killed: the three changes are in the journal only

    // Damage the second change (frame 2): frames are [header][base][one][two][three].
    let mut bytes = journal_bytes(journal.path());
    let mut at = 24;
    for _ in 0..2 {
        at += 4 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    bytes[at + 40] ^= 1;
    std::fs::write(journal.path().join("journal"), &bytes).unwrap();

    let refused = Engine::open(
        local(store_dir.path()),
        master.clone(),
        options(journal.path()),
    )
    .await
    .err()
    .expect("a damaged journal is refused");
    let msg = refused.to_string();
    assert!(matches!(refused, Error::JournalDamaged(_)), "{msg}");
    assert!(msg.contains("--discard-damaged-journal"), "{msg}");
    assert_eq!(
        journal_bytes(journal.path()),
        bytes,
        "the journal is left as it is"
    );

    let opts = EngineOptions {
        discard_damaged_journal: true,
        ..options(journal.path())
    };
    let e = Engine::open(local(store_dir.path()), master, opts)
        .await
        .unwrap();
    assert_eq!(e.fetch("one").await.unwrap(), b"one");
    assert_eq!(
        e.entry("two").await,
        None,
        "the damaged change is never applied"
    );
    assert_eq!(e.fetch("three").await.unwrap(), b"three");
    e.check_accounting().await.unwrap();
}

/// Recovery that fails half-way (the store dies while the copies are written) commits
/// nothing and keeps the journal as it was; the next open recovers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_failing_half_way_loses_nothing() {
    let long: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let data = long.clone();
    let (store_dir, master, journal_b) = foreign_journal(async move |b: &Engine| {
        b.store("big", &data, Meta::file()).await.unwrap();
        b.store("small", b"s", Meta::file()).await.unwrap();
    })
    .await;
    let before = journal_bytes(journal_b.path());
    for crash_after in [0, 3] {
        let dying: Arc<dyn PadStore> = Arc::new(RetryingStore::new(
            SimStore::new(
                LocalStore::open(store_dir.path()).unwrap(),
                SimConfig {
                    crash_after_writes: Some(crash_after),
                    seed: 1,
                    ..Default::default()
                },
            ),
            RetryPolicy {
                attempts: 1,
                first_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
                attempt_limit: None,
            },
        ));
        let failed = Engine::open(dying, master.clone(), options(journal_b.path())).await;
        assert!(failed.is_err(), "the store died during recovery");
        assert_eq!(
            journal_bytes(journal_b.path()),
            before,
            "the journal is kept"
        );
    }
    let b = Engine::open(
        local(store_dir.path()),
        master.clone(),
        options(journal_b.path()),
    )
    .await
    .unwrap();
    let saved = b.recovered_at().expect("recovered").to_string();
    assert_eq!(b.fetch(&format!("{saved}/big")).await.unwrap(), long);
    assert_eq!(b.fetch(&format!("{saved}/small")).await.unwrap(), b"s");
    assert_eq!(b.fetch("later").await.unwrap(), b"A again");
    b.check_accounting().await.unwrap();
    b.verify_all().await.unwrap();
}

/// A store that serves an older root than one this machine saw (a backup of it restored) is
/// refused; `accept_rollback` opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_root_is_refused() {
    use mutant_mount::engine::root_record::RootRecordPlace;
    let store_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let opts = |accept: bool| EngineOptions {
        root_record: Some(RootRecordPlace {
            dir: data.path().join("roots"),
            store_id: "local:test".into(),
        }),
        accept_rollback: accept,
        journal_dir: None,
        ..options(data.path())
    };
    let store = LocalStore::open(store_dir.path()).unwrap();
    let e = Engine::open(Arc::new(store.clone()), master.clone(), opts(false))
        .await
        .unwrap();
    e.store("a", b"A", Meta::file()).await.unwrap();
    e.commit().await.unwrap();
    // A backup of the whole store, restored after a later commit.
    let backup = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from.join("."))
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy(store_dir.path(), backup.path());
    e.store("b", b"B", Meta::file()).await.unwrap();
    e.commit().await.unwrap();
    drop(e);
    std::fs::remove_dir_all(store_dir.path().join("pads")).unwrap();
    copy(backup.path(), store_dir.path());

    let refused = Engine::open(local(store_dir.path()), master.clone(), opts(false))
        .await
        .err()
        .expect("an older root is refused");
    assert!(matches!(refused, Error::Rollback(_)), "{refused}");
    assert!(
        refused.to_string().contains("--accept-rollback"),
        "{refused}"
    );

    let e = Engine::open(local(store_dir.path()), master.clone(), opts(true))
        .await
        .unwrap();
    assert_eq!(e.entry("b").await, None, "the old index, as asked");
    drop(e);
    // Accepted once, it is the newest seen now.
    Engine::open(local(store_dir.path()), master, opts(false))
        .await
        .unwrap();
}

/// Pads a write made before the process died, never installed: the next run's gc finds
/// exactly those (not the pads of committed files), returns them to the free list, and new
/// writes reuse them instead of creating pads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_returns_the_pads_a_killed_write_left_and_nothing_else() {
    let store_dir = tempfile::tempdir().unwrap();
    let journal = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let open = || {
        Engine::open(
            local(store_dir.path()),
            master.clone(),
            options(journal.path()),
        )
    };
    let engine = open().await.unwrap();
    let kept = vec![1u8; CHUNK as usize * 3];
    engine.store("kept", &kept, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    // A file's five chunks are in pads, and the process dies before its close installs them.
    let pieces = (0..5u8)
        .map(|i| autonomi::Bytes::from(vec![i + 2; CHUNK as usize]))
        .collect();
    let orphans = engine.write_chunks(pieces, None).await.unwrap();
    drop(engine);

    let engine = open().await.unwrap();
    let leaked = engine.find_leaked_pads().await.unwrap();
    let mut found: Vec<_> = leaked.pads.iter().map(|p| p.seed).collect();
    let mut expected: Vec<_> = orphans.iter().map(|c| c.pad.unwrap().seed).collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
    let free_before = engine.stats().await.free_pads;
    engine.reclaim(&leaked).await.unwrap();
    engine.check_accounting().await.unwrap();
    assert_eq!(engine.stats().await.free_pads, free_before + 5);
    // The next file takes those pads: no pad is created for its chunks.
    let pads_before = pad_files(store_dir.path());
    let next = vec![9u8; CHUNK as usize * 5];
    engine.store("next", &next, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    assert_eq!(engine.fetch("kept").await.unwrap(), kept);
    assert_eq!(engine.fetch("next").await.unwrap(), next);
    // (The commit may add a page or two of index; five new data pads would show.)
    assert!(pad_files(store_dir.path()) < pads_before + 5);
    drop(engine);

    // The log is clean: a later gc finds nothing, and a fresh open reads everything.
    let engine = open().await.unwrap();
    assert!(engine.find_leaked_pads().await.unwrap().pads.is_empty());
    assert_eq!(engine.fetch("next").await.unwrap(), next);
}

fn pad_files(store: &Path) -> usize {
    std::fs::read_dir(store.join("pads"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum()
}
