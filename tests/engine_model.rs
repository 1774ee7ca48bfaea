//! Model test of the engine: random sequences of store / overwrite / fetch / fetch_range /
//! reads of parts of chunks / rename / remove / commit / reopen on a local store, checked step
//! by step against a `HashMap`, then reopened from the store alone and compared byte for byte.

use std::path::Path;
use std::sync::Arc;

use mutant_mount::engine::{Engine, EngineOptions, Error};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::seal::SEGMENT;
use mutant_mount::store::{LocalStore, PadStore};
use proptest::prelude::*;

mod engine_common;
use engine_common::{pad_files, slice, value, Model, Value, KEYS};

#[derive(Clone, Debug)]
enum Op {
    Store {
        key: usize,
        value: Value,
        mode: u32,
    },
    Fetch {
        key: usize,
    },
    FetchRange {
        key: usize,
        offset: u64,
        len: usize,
    },
    /// A range read chunk by chunk as a random reader does (`read_chunk_part`).
    ReadParts {
        key: usize,
        offset: u64,
        len: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Remove {
        key: usize,
    },
    Commit,
    /// Commit, then continue on an engine opened afresh from the store.
    Reopen,
}

fn op(chunk: usize) -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let max = 3 * chunk as u64 + 2;
    prop_oneof![
        8 => (key.clone(), value(chunk), 0u32..0o1000)
            .prop_map(|(key, value, mode)| Op::Store { key, value, mode }),
        3 => key.clone().prop_map(|key| Op::Fetch { key }),
        4 => (key.clone(), 0..=max, prop_oneof![0..=max as usize, Just(usize::MAX)])
            .prop_map(|(key, offset, len)| Op::FetchRange { key, offset, len }),
        4 => (key.clone(), 0..=max, 0..=chunk + 1)
            .prop_map(|(key, offset, len)| Op::ReadParts { key, offset, len }),
        2 => (key.clone(), key.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => key.prop_map(|key| Op::Remove { key }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn case() -> impl Strategy<Value = (u32, usize, Vec<Op>)> {
    (
        // Chunks of several segments too, which random readers read in part.
        prop_oneof![Just(64u32), 64u32..=4096, Just(3 * SEGMENT as u32 + 100)],
        prop_oneof![Just(0usize), Just(1 << 20)],
    )
        .prop_flat_map(|(chunk, cache)| {
            (
                Just(chunk),
                Just(cache),
                prop::collection::vec(op(chunk as usize), 1..40),
            )
        })
}

fn options(chunk: u32, cache: usize) -> EngineOptions {
    EngineOptions {
        scratchpad_size: chunk,
        cache_bytes: cache,
        parallelism: 4,
        ..Default::default()
    }
}

async fn open(dir: &Path, master: &MasterKey, opts: EngineOptions) -> Engine {
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir).unwrap());
    Engine::open(store, master.clone(), opts).await.unwrap()
}

/// Bytes `offset..offset + len` of `key`, each chunk's share read with `read_chunk_part`;
/// `None` if there is no such key.
async fn read_parts(engine: &Engine, key: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
    let entry = engine.entry(key).await?;
    let end = (offset + len as u64).min(entry.size);
    let cs = engine.chunk_size() as u64;
    // Holes and the rest of a short chunk read as zeros.
    let mut out = vec![0; end.saturating_sub(offset) as usize];
    for (idx, chunk) in entry.chunks.iter() {
        let start = idx * cs;
        let chunk_end = start + chunk.len as u64;
        if chunk_end > offset && start < end {
            let from = offset.saturating_sub(start) as usize;
            let to = (end.min(chunk_end) - start) as usize;
            let part = engine.read_chunk_part(chunk, from, to).await.unwrap();
            assert_eq!(part.len(), to - from, "a part is as long as asked");
            let at = (start + from as u64 - offset) as usize;
            out[at..at + part.len()].copy_from_slice(&part);
        }
    }
    Some(out)
}

/// Every key of the model, byte for byte and with its mode, and no other key.
async fn compare(engine: &Engine, model: &Model) -> Result<(), TestCaseError> {
    let mut keys: Vec<&String> = model.keys().collect();
    keys.sort();
    let listed = engine.list_keys().await;
    prop_assert_eq!(listed.iter().collect::<Vec<_>>(), keys);
    for (key, (data, mode)) in model {
        let got = engine.fetch(key).await;
        prop_assert!(got.is_ok(), "fetch {key}: {got:?}");
        prop_assert!(got.unwrap() == *data, "{key} differs");
        let entry = engine.entry(key).await.unwrap();
        prop_assert_eq!(entry.size, data.len() as u64);
        prop_assert_eq!(entry.meta.mode, *mode);
    }
    Ok(())
}

async fn run(chunk: u32, cache: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let mut engine = open(dir.path(), &master, options(chunk, cache)).await;
    let mut model = Model::new();

    for op in ops {
        let step = format!("{op:?}");
        match op {
            Op::Store { key, value, mode } => {
                let data = value.bytes(chunk as usize);
                let meta = Meta {
                    mode,
                    ..Meta::file()
                };
                engine.store(KEYS[key], &data, meta).await.unwrap();
                model.insert(KEYS[key].to_string(), (data, mode));
            }
            Op::Fetch { key } => match (engine.fetch(KEYS[key]).await, model.get(KEYS[key])) {
                (Ok(got), Some((data, _))) => prop_assert!(got == *data, "fetch {key}"),
                (Err(Error::NotFound(_)), None) => {}
                (got, want) => prop_assert!(false, "fetch {key}: {got:?}, model {want:?}"),
            },
            Op::FetchRange { key, offset, len } => {
                match (
                    engine.fetch_range(KEYS[key], offset, len).await,
                    model.get(KEYS[key]),
                ) {
                    (Ok(got), Some((data, _))) => prop_assert!(
                        got == slice(data, offset, len),
                        "fetch_range {key} {offset}+{len}: {} bytes, expected {}",
                        got.len(),
                        slice(data, offset, len).len()
                    ),
                    (Err(Error::NotFound(_)), None) => {}
                    (got, want) => prop_assert!(false, "fetch_range: {got:?}, model {want:?}"),
                }
            }
            Op::ReadParts { key, offset, len } => {
                let got = read_parts(&engine, KEYS[key], offset, len).await;
                match (got, model.get(KEYS[key])) {
                    (Some(got), Some((data, _))) => prop_assert!(
                        got == slice(data, offset, len),
                        "read_parts {key} {offset}+{len}"
                    ),
                    (None, None) => {}
                    (got, want) => prop_assert!(false, "read_parts: {got:?}, model {want:?}"),
                }
            }
            Op::Rename { from, to } => {
                let result = engine.rename(KEYS[from], KEYS[to]).await;
                match model.remove(KEYS[from]) {
                    Some(value) => {
                        prop_assert!(result.is_ok(), "rename: {result:?}");
                        model.insert(KEYS[to].to_string(), value);
                    }
                    None => prop_assert!(matches!(result, Err(Error::NotFound(_)))),
                }
            }
            Op::Remove { key } => {
                let result = engine.remove(KEYS[key]).await;
                match model.remove(KEYS[key]) {
                    Some(_) => prop_assert!(result.is_ok(), "remove: {result:?}"),
                    None => prop_assert!(matches!(result, Err(Error::NotFound(_)))),
                }
            }
            Op::Commit => {
                engine.commit().await.unwrap();
                prop_assert!(!engine.has_uncommitted().await);
            }
            Op::Reopen => {
                engine.commit().await.unwrap();
                drop(engine);
                engine = open(dir.path(), &master, options(chunk, cache)).await;
                compare(&engine, &model).await?;
            }
        }
        if let Err(e) = engine.check_accounting().await {
            prop_assert!(false, "accounting after {step}: {e}");
        }
        let stats = engine.stats().await;
        prop_assert_eq!(stats.keys, model.len());
    }

    engine.commit().await.unwrap();
    compare(&engine, &model).await?;
    drop(engine);

    // A fresh engine, knowing nothing but the master key and the store.
    let fresh = open(dir.path(), &master, options(4096, 0)).await;
    prop_assert_eq!(fresh.chunk_size(), chunk as usize);
    compare(&fresh, &model).await?;
    prop_assert!(fresh.verify_all().await.is_ok());
    let pads = fresh
        .check_accounting()
        .await
        .map_err(TestCaseError::fail)?;
    // No pad leaked: every pad file is the root or accounted for by the committed index.
    prop_assert_eq!(
        pad_files(dir.path()).len(),
        pads + 1,
        "pads leaked or missing"
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_a_hashmap_and_survives_reopening((chunk, cache, ops) in case()) {
        runtime().block_on(run(chunk, cache, ops))?;
    }
}

/// Many tasks store, overwrite, remove and commit at once; then the whole lot is committed and
/// read back from the store alone.
#[test]
fn concurrent_stores_commit_and_reopen() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let engine = open(dir.path(), &master, options(256, 1 << 20)).await;
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let mut mine = Model::new();
                    for i in 0..4u64 {
                        let key = format!("task{t}/file{i}");
                        let value = Value {
                            len: ((t * 7 + i * 131) % 900) as usize,
                            pattern: ((t + i) % 3) as u8,
                            seed: t << 8 | i,
                        };
                        let data = value.bytes(256);
                        engine.store(&key, &data, Meta::file()).await.unwrap();
                        mine.insert(key, (data, 0o644));
                        let shared = Value {
                            len: 300 + t as usize,
                            pattern: 1,
                            seed: t,
                        };
                        engine
                            .store("shared", &shared.bytes(256), Meta::file())
                            .await
                            .unwrap();
                        if (t + i).is_multiple_of(5) {
                            engine.commit().await.unwrap();
                        }
                    }
                    // Overwrite one, remove one, rename one.
                    let data = vec![t as u8 + 1; 700];
                    engine
                        .store(&format!("task{t}/file0"), &data, Meta::file())
                        .await
                        .unwrap();
                    mine.insert(format!("task{t}/file0"), (data, 0o644));
                    engine.remove(&format!("task{t}/file1")).await.unwrap();
                    mine.remove(&format!("task{t}/file1"));
                    engine
                        .rename(&format!("task{t}/file2"), &format!("moved/{t}"))
                        .await
                        .unwrap();
                    let moved = mine.remove(&format!("task{t}/file2")).unwrap();
                    mine.insert(format!("moved/{t}"), moved);
                    engine.check_accounting().await.unwrap();
                    mine
                })
            })
            .collect();
        let mut model = Model::new();
        for task in tasks {
            model.extend(task.await.unwrap());
        }
        engine.commit().await.unwrap();
        engine.check_accounting().await.unwrap();
        let shared = engine.fetch("shared").await.unwrap();
        let writer = (0..32u64)
            .find(|&t| {
                Value {
                    len: 300 + t as usize,
                    pattern: 1,
                    seed: t,
                }
                .bytes(256)
                    == shared
            })
            .expect("\"shared\" holds one task's value, whole");
        model.insert(
            "shared".into(),
            (
                Value {
                    len: 300 + writer as usize,
                    pattern: 1,
                    seed: writer,
                }
                .bytes(256),
                0o644,
            ),
        );
        compare(&engine, &model).await.unwrap();
        drop(engine);

        let fresh = open(dir.path(), &master, options(4096, 0)).await;
        compare(&fresh, &model).await.unwrap();
        fresh.verify_all().await.unwrap();
        // Many readers of the same pads at once (no cache: the reads meet in flight).
        let model = Arc::new(model);
        let readers: Vec<_> = (0..16)
            .map(|_| {
                let (fresh, model) = (fresh.clone(), model.clone());
                tokio::spawn(async move {
                    for (key, (data, _)) in model.iter() {
                        assert_eq!(&fresh.fetch(key).await.unwrap(), data, "{key}");
                        let range = fresh.fetch_range(key, 200, 300).await.unwrap();
                        let from = data.len().min(200);
                        assert_eq!(range, data[from..data.len().min(500)], "{key}");
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.await.unwrap();
        }
        let pads = fresh.check_accounting().await.unwrap();
        assert_eq!(
            pad_files(dir.path()).len(),
            pads + 1,
            "pads leaked or missing"
        );
    });
}
