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
        options(journal.path()),
    )
    .await
    .expect("reopen with the journal");
    prop_assert_eq!(reopened.recovered_dir(), None);
    prop_assert_eq!(&contents(&reopened).await, &model);
    let accounted = reopened.check_accounting().await;
    prop_assert!(accounted.is_ok(), "accounting after replay: {accounted:?}");
    reopened.commit().await.expect("commit after replay");
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
/// are saved as files, at once (`save_uncommitted`) or by the next open of B's journal.
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
            let b2 = Engine::open(store.clone(), master.clone(), options(journal_b.path()))
                .await
                .unwrap();
            // B's journal does not apply to A's index: nothing of it is replayed...
            assert_eq!(b2.entry("dir/from-b").await, None);
            assert_eq!(b2.fetch("from-a").await.unwrap(), b"written by A");
            assert!(!b2.has_uncommitted().await);
            b2.recovered_dir().expect("saved at open").to_path_buf()
        } else {
            let saved = b
                .save_uncommitted()
                .await
                .unwrap()
                .expect("changes to save");
            drop(b);
            // Saved once: the journal no longer holds them.
            let b2 = Engine::open(store.clone(), master.clone(), options(journal_b.path()))
                .await
                .unwrap();
            assert_eq!(b2.recovered_dir(), None);
            saved
        };
        // ...but every change is in the saved copy.
        assert_eq!(std::fs::read(saved.join("files/dir/from-b")).unwrap(), long);
        assert_eq!(std::fs::read(saved.join("files/empty")).unwrap(), b"");
        let changes = std::fs::read_to_string(saved.join("CHANGES.txt")).unwrap();
        assert!(
            changes.contains("wrote dir/from-b (1000 bytes)"),
            "{changes}"
        );
        assert!(
            changes.contains("renamed shared -> renamed-by-b"),
            "{changes}"
        );

        // A's index is intact.
        let check = Engine::open(store, master, options(journal_a.path()))
            .await
            .err();
        assert!(
            matches!(&check, Some(Error::Journal(msg)) if msg.contains("another mutant-mount")),
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

    // The journal as the old program left it: its base record (unchanged across versions),
    // then the change no commit could write.
    let path = journal_dir.path().join("journal");
    let old = std::fs::read(&path).unwrap();
    let base_len = u32::from_le_bytes(old[..4].try_into().unwrap()) as usize;
    let mut journal = old[..4 + base_len].to_vec();
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
    let mut bytes = codec::encode(Kind::JournalRecord, &record).unwrap();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    assert!(
        bytes.len() > 4 << 20,
        "the entry outgrew a pad: {} bytes",
        bytes.len()
    );
    journal.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    journal.extend_from_slice(&bytes);
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
