//! Crash and fault tests of the engine. Random sequences of operations run on a local store seen
//! through a fault-injecting `SimStore` (a crash after N writes, transient errors, writes that
//! land but report failure, timeouts) behind a `RetryingStore`. Afterwards a fresh engine is
//! opened on the bare local store, with no local state: the index it finds must be exactly one
//! of the states the caller may believe committed, every pad it references intact.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mutant_mount::codec::HashKind;
use mutant_mount::engine::pads::PadIo;
use mutant_mount::engine::{Engine, EngineOptions, Error};
use mutant_mount::index::persist::{decode_free_page, Root};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{
    LocalStore, PadStore, RetryPolicy, RetryingStore, SimConfig, SimStore, StoreError,
};
use proptest::prelude::*;

mod engine_common;
use engine_common::{pad_files, slice, value, Model, Value, KEYS};

#[derive(Clone, Debug)]
enum Op {
    Store { key: usize, value: Value, mode: u32 },
    Fetch { key: usize },
    FetchRange { key: usize, offset: u64, len: usize },
    Rename { from: usize, to: usize },
    Remove { key: usize },
    Commit,
}

fn op(chunk: usize) -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let max = 3 * chunk as u64 + 2;
    prop_oneof![
        8 => (key.clone(), value(chunk), 0u32..0o1000)
            .prop_map(|(key, value, mode)| Op::Store { key, value, mode }),
        2 => key.clone().prop_map(|key| Op::Fetch { key }),
        2 => (key.clone(), 0..=max, 0..=max as usize)
            .prop_map(|(key, offset, len)| Op::FetchRange { key, offset, len }),
        2 => (key.clone(), key.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => key.prop_map(|key| Op::Remove { key }),
        4 => Just(Op::Commit),
    ]
}

#[derive(Clone, Debug)]
struct Faults {
    crash_after_writes: Option<u64>,
    error_rate: f64,
    cut_rate: f64,
    timeout_rate: f64,
    /// Store attempts per operation (1: no retries).
    attempts: u32,
    seed: u64,
}

fn options(chunk: u32) -> EngineOptions {
    EngineOptions {
        scratchpad_size: chunk,
        // No cache: every read goes to the store, so a pad overwritten while still referenced
        // shows up as a hash mismatch at once.
        cache_bytes: 0,
        parallelism: 4,
        // Tiny free-list pages, so that commits cut at random points write and drop them.
        free_page_pads: 2,
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn faulty_store(dir: &Path, faults: &Faults) -> Arc<dyn PadStore> {
    let sim = SimStore::new(
        LocalStore::open(dir).unwrap(),
        SimConfig {
            crash_after_writes: faults.crash_after_writes,
            error_rate: faults.error_rate,
            cut_rate: faults.cut_rate,
            timeout_rate: faults.timeout_rate,
            timeout: Duration::from_millis(1),
            seed: faults.seed,
            ..Default::default()
        },
    );
    let policy = RetryPolicy {
        attempts: faults.attempts,
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        attempt_limit: None,
    };
    Arc::new(RetryingStore::new(sim, policy))
}

async fn open_clean(dir: &Path, master: &MasterKey, chunk: u32) -> Engine {
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir).unwrap());
    Engine::open(store, master.clone(), options(chunk))
        .await
        .unwrap()
}

/// Everything an engine holds, read back through it.
async fn contents(engine: &Engine) -> Result<Model, TestCaseError> {
    let mut found = Model::new();
    for key in engine.list_keys().await {
        let data = engine.fetch(&key).await;
        prop_assert!(data.is_ok(), "committed key {key} unreadable: {data:?}");
        let mode = engine.entry(&key).await.unwrap().meta.mode;
        found.insert(key, (data.unwrap(), mode));
    }
    Ok(found)
}

/// Pad files in the store that the committed index neither references nor lists as free.
async fn orphans(dir: &Path, master: &MasterKey, engine: &Engine) -> Vec<PathBuf> {
    let local = LocalStore::open(dir).unwrap();
    let io = PadIo::new(Arc::new(local.clone()), master.clone());
    let (bytes, _) = io.read_with_key(master.root_key(), None).await.unwrap();
    let root = Root::decode(&bytes).unwrap();
    let mut seeds: Vec<_> = root.free_tail.iter().map(|p| p.seed).collect();
    seeds.extend(root.pages.iter().flatten().map(|p| p.pad.seed));
    for page in &root.free_pages {
        seeds.push(page.pad.seed);
        let bytes = io
            .read(&page.pad, page.hash, HashKind::Sha256)
            .await
            .unwrap();
        let pads = decode_free_page(&bytes, page.len).unwrap();
        seeds.extend(pads.iter().map(|p| p.seed));
    }
    for (_, entry) in engine.snapshot().await {
        seeds.extend(entry.pads().map(|p| p.seed));
    }
    let mut known: HashSet<PathBuf> = seeds
        .iter()
        .map(|seed| local.pad_path(&master.pad_key(seed).public_key()))
        .collect();
    known.insert(local.pad_path(&master.root_key().public_key()));
    pad_files(dir)
        .into_iter()
        .filter(|path| !known.contains(path))
        .collect()
}

fn no_corruption(what: &str, e: &Error) -> Result<(), TestCaseError> {
    prop_assert!(
        !e.is_corruption(),
        "{what} met bad data on a store that corrupts nothing: {e}"
    );
    Ok(())
}

/// Invariant 1 at this instant: the index in the store (read by a second engine, beside the
/// working one) is one the caller may believe committed, and every pad it references holds
/// exactly the bytes it claims.
async fn check_committed(
    dir: &Path,
    master: &MasterKey,
    chunk: u32,
    candidates: &[Model],
) -> Result<(), TestCaseError> {
    let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir).unwrap());
    let opts = EngineOptions {
        create_if_missing: false,
        ..options(chunk)
    };
    let reader = match Engine::open(store, master.clone(), opts).await {
        Ok(reader) => reader,
        Err(Error::NoIndex) => {
            prop_assert!(candidates.contains(&Model::new()));
            return Ok(());
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "committed index unreadable: {e}"
            )))
        }
    };
    let found = contents(&reader).await?;
    prop_assert!(
        candidates.contains(&found),
        "the store holds a state never committed"
    );
    let verified = reader.verify_all().await;
    prop_assert!(
        verified.is_ok(),
        "committed index references bad pads: {verified:?}"
    );
    Ok(())
}

/// Runs `ops` against the faulty store; returns the states that may be the committed one.
async fn run_ops(
    dir: &Path,
    master: &MasterKey,
    engine: &Engine,
    chunk: u32,
    ops: Vec<Op>,
    current: &mut Model,
    candidates: &mut Vec<Model>,
) -> Result<(), TestCaseError> {
    for op in ops {
        let step = format!("{op:?}");
        match op {
            Op::Store { key, value, mode } => {
                let data = value.bytes(chunk as usize);
                let meta = Meta {
                    mode,
                    ..Meta::file()
                };
                match engine.store(KEYS[key], &data, meta).await {
                    Ok(()) => {
                        current.insert(KEYS[key].to_string(), (data, mode));
                    }
                    Err(e) => no_corruption("store", &e)?,
                }
            }
            Op::Fetch { key } => match (engine.fetch(KEYS[key]).await, current.get(KEYS[key])) {
                (Ok(got), Some((data, _))) => prop_assert!(got == *data, "fetch {key}"),
                (Err(Error::NotFound(_)), None) => {}
                (Err(e), Some(_)) if !matches!(e, Error::NotFound(_)) => {
                    no_corruption("fetch", &e)?
                }
                (got, want) => prop_assert!(false, "fetch {key}: {got:?}, model {want:?}"),
            },
            Op::FetchRange { key, offset, len } => {
                match (
                    engine.fetch_range(KEYS[key], offset, len).await,
                    current.get(KEYS[key]),
                ) {
                    (Ok(got), Some((data, _))) => {
                        prop_assert!(got == slice(data, offset, len), "fetch_range {key}")
                    }
                    (Err(Error::NotFound(_)), None) => {}
                    (Err(e), Some(_)) if !matches!(e, Error::NotFound(_)) => {
                        no_corruption("fetch_range", &e)?
                    }
                    (got, want) => prop_assert!(false, "fetch_range: {got:?}, model {want:?}"),
                }
            }
            Op::Rename { from, to } => {
                let result = engine.rename(KEYS[from], KEYS[to]).await;
                match current.remove(KEYS[from]) {
                    Some(value) => {
                        prop_assert!(result.is_ok(), "rename: {result:?}");
                        current.insert(KEYS[to].to_string(), value);
                    }
                    None => prop_assert!(matches!(result, Err(Error::NotFound(_)))),
                }
            }
            Op::Remove { key } => {
                let result = engine.remove(KEYS[key]).await;
                match current.remove(KEYS[key]) {
                    Some(_) => prop_assert!(result.is_ok(), "remove: {result:?}"),
                    None => prop_assert!(matches!(result, Err(Error::NotFound(_)))),
                }
            }
            Op::Commit => match engine.commit().await {
                Ok(()) => *candidates = vec![current.clone()],
                Err(e) => {
                    no_corruption("commit", &e)?;
                    // It may or may not have landed.
                    candidates.push(current.clone());
                }
            },
        }
        if let Err(e) = engine.check_accounting().await {
            prop_assert!(false, "accounting after {step}: {e}");
        }
        check_committed(dir, master, chunk, candidates).await?;
    }
    Ok(())
}

/// Opens the store afresh and checks it holds one of `candidates`, whole and intact; then
/// checks the recovered engine goes on working (its free list really is free).
async fn check_recovery(
    dir: &Path,
    master: &MasterKey,
    chunk: u32,
    candidates: &[Model],
) -> Result<(), TestCaseError> {
    let fresh = open_clean(dir, master, chunk).await;
    let found = contents(&fresh).await?;
    prop_assert!(
        candidates.contains(&found),
        "the store holds a state never committed: keys {:?}; candidates' keys {:?}",
        {
            let mut k: Vec<_> = found.keys().collect();
            k.sort();
            k
        },
        candidates
            .iter()
            .map(|c| {
                let mut k: Vec<_> = c.keys().cloned().collect();
                k.sort();
                k
            })
            .collect::<Vec<_>>()
    );
    let verified = fresh.verify_all().await;
    prop_assert!(verified.is_ok(), "verify_all: {verified:?}");
    let accounted = fresh.check_accounting().await;
    prop_assert!(accounted.is_ok(), "accounting: {accounted:?}");

    // Life goes on: overwrite everything (recycling the recovered free pads), commit, reopen.
    let mut next = found.clone();
    for (i, key) in KEYS.iter().enumerate() {
        let data = Value {
            len: (i * 97 + 13) % (3 * chunk as usize),
            pattern: 1,
            seed: i as u64 + 7,
        }
        .bytes(chunk as usize);
        fresh.store(key, &data, Meta::file()).await.unwrap();
        next.insert(key.to_string(), (data, 0o644));
    }
    fresh.remove(KEYS[0]).await.unwrap();
    next.remove(KEYS[0]);
    fresh.commit().await.unwrap();
    drop(fresh);
    let again = open_clean(dir, master, chunk).await;
    prop_assert_eq!(contents(&again).await?, next);
    prop_assert!(again.verify_all().await.is_ok());
    prop_assert!(again.check_accounting().await.is_ok());
    Ok(())
}

async fn run(chunk: u32, faults: Faults, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let mut current = Model::new();
    // Opening a new store commits an empty index, which may itself fail.
    let mut candidates = vec![Model::new()];

    match Engine::open(
        faulty_store(dir.path(), &faults),
        master.clone(),
        options(chunk),
    )
    .await
    {
        Ok(engine) => {
            run_ops(
                dir.path(),
                &master,
                &engine,
                chunk,
                ops,
                &mut current,
                &mut candidates,
            )
            .await?;
            if faults.crash_after_writes.is_none() {
                // Without a crash, faults are passing: commits succeed in the end, after which
                // the committed state is exactly the current one and no pad is lost. A commit
                // writes index and free-list pages and the root, each of which may exhaust its
                // attempts at a high error rate: thirty tries fell short about one run in six.
                let mut last = Err(Error::NoIndex);
                for _ in 0..300 {
                    last = engine.commit().await;
                    if last.is_ok() {
                        break;
                    }
                }
                prop_assert!(
                    last.is_ok(),
                    "commit never succeeded on a store with passing faults: {last:?}"
                );
                candidates = vec![current.clone()];
                let lost = orphans(dir.path(), &master, &engine).await;
                prop_assert!(lost.is_empty(), "{} pads lost: {lost:?}", lost.len());
            }
        }
        Err(e) => no_corruption("open", &e)?,
    }
    check_recovery(dir.path(), &master, chunk, &candidates).await
}

fn chunk() -> impl Strategy<Value = u32> {
    prop_oneof![Just(64u32), 64u32..=2048]
}

fn ops(chunk: u32) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(chunk as usize), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The store dies after N writes (the N-th landing or not): what is left is the last commit
    /// that returned, or one that was attempted after it.
    #[test]
    fn a_crash_leaves_a_committed_state(
        (chunk, ops, crash, seed) in chunk().prop_flat_map(|c| (Just(c), ops(c), 1u64..120, any::<u64>()))
    ) {
        let faults = Faults {
            crash_after_writes: Some(crash),
            error_rate: 0.0,
            cut_rate: 0.0,
            timeout_rate: 0.0,
            attempts: 3,
            seed,
        };
        runtime().block_on(run(chunk, faults, ops))?;
    }

    /// Transient errors, timeouts and writes that land but report failure, with retries, and
    /// sometimes a crash on top.
    #[test]
    fn passing_faults_never_lose_or_mix_data(
        (chunk, ops, errors, cuts, timeouts, attempts, crash, seed) in chunk().prop_flat_map(|c| (
            Just(c),
            ops(c),
            0.0..0.4f64,
            0.0..0.3f64,
            0.0..0.05f64,
            1u32..=3,
            prop_oneof![3 => Just(None), 1 => (1u64..150).prop_map(Some)],
            any::<u64>(),
        ))
    ) {
        let faults = Faults {
            crash_after_writes: crash,
            error_rate: errors,
            cut_rate: cuts,
            timeout_rate: timeouts,
            attempts,
            seed,
        };
        runtime().block_on(run(chunk, faults, ops))?;
    }
}

/// A store that corrupts reads makes reads fail as corruption, never return wrong bytes; and
/// a corrupted read does not poison the cache.
#[test]
fn corrupted_reads_are_errors_never_data() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let chunk = 200u32;
        let mut model = Model::new();
        {
            let engine = open_clean(dir.path(), &master, chunk).await;
            for i in 0..12u64 {
                let data = Value {
                    len: (i as usize * 151) % 700 + 1,
                    pattern: (i % 3) as u8,
                    seed: i,
                }
                .bytes(chunk as usize);
                engine
                    .store(&format!("k{i}"), &data, Meta::file())
                    .await
                    .unwrap();
                model.insert(format!("k{i}"), (data, 0o644));
            }
            engine.commit().await.unwrap();
        }
        for cache in [0usize, 1 << 20] {
            let sim = Arc::new(SimStore::new(
                LocalStore::open(dir.path()).unwrap(),
                SimConfig {
                    corrupt_rate: 0.3,
                    seed: cache as u64 + 1,
                    ..Default::default()
                },
            ));
            let opts = EngineOptions {
                cache_bytes: cache,
                ..options(chunk)
            };
            let mut engine = None;
            let mut refused_open = 0;
            for _ in 0..50 {
                match Engine::open(sim.clone(), master.clone(), opts.clone()).await {
                    Ok(e) => {
                        engine = Some(e);
                        break;
                    }
                    Err(e) => {
                        assert!(e.is_corruption(), "open failed otherwise: {e}");
                        refused_open += 1;
                    }
                }
            }
            let engine = engine.expect("some open read no corrupted pad");
            let (mut good, mut bad, mut bad_checks) = (0, 0, 0);
            let model = Arc::new(model.clone());
            for _round in 0..10 {
                // Three readers at once, so reads of a pad also meet in flight.
                let readers: Vec<_> = (0..3)
                    .map(|_| {
                        let (engine, model) = (engine.clone(), model.clone());
                        tokio::spawn(async move {
                            let (mut good, mut bad) = (0, 0);
                            for (key, (data, _)) in model.iter() {
                                match engine.fetch(key).await {
                                    Ok(got) => {
                                        assert_eq!(&got, data, "{key}: wrong bytes returned");
                                        good += 1;
                                    }
                                    Err(e) => {
                                        assert!(e.is_corruption(), "{key}: {e}");
                                        bad += 1;
                                    }
                                }
                                match engine.fetch_range(key, 150, 100).await {
                                    Ok(got) => {
                                        assert_eq!(got, slice(data, 150, 100), "{key}: wrong range")
                                    }
                                    Err(e) => assert!(e.is_corruption(), "{key}: {e}"),
                                }
                            }
                            (good, bad)
                        })
                    })
                    .collect();
                for reader in readers {
                    let (g, b) = reader.await.unwrap();
                    good += g;
                    bad += b;
                }
                let verified = engine.verify_all().await;
                assert!(verified.as_ref().is_ok_or_corrupt(), "{verified:?}");
                bad_checks += usize::from(verified.is_err());
            }
            eprintln!(
                "cache {cache}: open refused {refused_open}x, {good} good reads, {bad} refused, \
                 {bad_checks} of 10 checks refused"
            );
            // With a cache, readers fetch each pad only until a good copy is cached, and may
            // meet no bad one (a few runs in a hundred); the checks read the store each round.
            assert!(bad + bad_checks > 0, "the store corrupted nothing?");
            if cache == 0 {
                assert!(bad > 0, "no reader met a corrupted pad");
            }
            assert!(good > 0);
        }
    });
}

trait OkOrCorrupt {
    fn is_ok_or_corrupt(&self) -> bool;
}

impl OkOrCorrupt for Result<&(), &Error> {
    fn is_ok_or_corrupt(&self) -> bool {
        match self {
            Ok(()) => true,
            Err(e) => e.is_corruption(),
        }
    }
}

/// How `Switch` treats writes at the moment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Pass,
    /// Every write fails before it reaches the store.
    FailWrites,
    /// The index root write fails before it reaches the store.
    FailRoot,
    /// The index root write lands, then reports failure.
    CutRoot,
    /// The index root write lands, then takes a while to say so.
    SlowRoot,
}

/// A store whose writes fail on command, for exact failure scenarios.
struct Switch {
    inner: LocalStore,
    root: autonomi::PublicKey,
    mode: std::sync::Mutex<Mode>,
}

#[async_trait::async_trait]
impl PadStore for Switch {
    async fn create(&self, pad: autonomi::scratchpad::Scratchpad) -> Result<(), StoreError> {
        self.write(pad, true).await
    }
    async fn update(&self, pad: autonomi::scratchpad::Scratchpad) -> Result<(), StoreError> {
        self.write(pad, false).await
    }
    async fn get(
        &self,
        owner: &autonomi::PublicKey,
    ) -> Result<autonomi::scratchpad::Scratchpad, StoreError> {
        self.inner.get(owner).await
    }
    async fn exists(&self, owner: &autonomi::PublicKey) -> Result<bool, StoreError> {
        self.inner.exists(owner).await
    }
}

impl Switch {
    async fn write(
        &self,
        pad: autonomi::scratchpad::Scratchpad,
        create: bool,
    ) -> Result<(), StoreError> {
        let mode = *self.mode.lock().unwrap();
        let is_root = *pad.owner() == self.root;
        let failure = || Err(StoreError::Transient("switched off".into()));
        match mode {
            Mode::FailWrites => return failure(),
            Mode::FailRoot if is_root => return failure(),
            _ => {}
        }
        if create {
            self.inner.create(pad).await?;
        } else {
            self.inner.update(pad).await?;
        }
        if mode == Mode::CutRoot && is_root {
            return failure();
        }
        if mode == Mode::SlowRoot && is_root {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        Ok(())
    }
}

/// A commit whose caller stops waiting (a timeout, or the background committer aborted at
/// unmount) goes on to its end: a root that landed is recorded, and the next commit is not
/// taken for another writer's (a conflict, which set the mount's last changes aside).
#[test]
fn a_commit_its_caller_stopped_waiting_for_still_ends() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let switch = Arc::new(Switch {
            inner: LocalStore::open(dir.path()).unwrap(),
            root: master.root_key().public_key(),
            mode: std::sync::Mutex::new(Mode::Pass),
        });
        let engine = Engine::open(switch.clone(), master.clone(), options(100))
            .await
            .unwrap();
        engine.store("a", b"first", Meta::file()).await.unwrap();
        *switch.mode.lock().unwrap() = Mode::SlowRoot;
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), engine.commit());
        assert!(
            waited.await.is_err(),
            "the commit did not outlast its caller"
        );
        *switch.mode.lock().unwrap() = Mode::Pass;

        engine.store("b", b"second", Meta::file()).await.unwrap();
        engine.commit().await.unwrap();
        drop(engine);
        let engine = Engine::open(switch.clone(), master.clone(), options(100))
            .await
            .unwrap();
        assert_eq!(engine.fetch("a").await.unwrap(), b"first");
        assert_eq!(engine.fetch("b").await.unwrap(), b"second");
    });
}

/// Invariant 2 when a commit fails: the pads a change released stay untouched until a commit
/// that no longer references them has landed, whether the failed commit died before its root
/// write, lost it, or landed it without knowing.
#[test]
fn pads_released_by_a_failed_commit_are_not_reused() {
    runtime().block_on(async {
        for mode in [Mode::FailWrites, Mode::FailRoot, Mode::CutRoot] {
            let dir = tempfile::tempdir().unwrap();
            let master = MasterKey::generate();
            let chunk = 100u32;
            let switch = Arc::new(Switch {
                inner: LocalStore::open(dir.path()).unwrap(),
                root: master.root_key().public_key(),
                mode: std::sync::Mutex::new(Mode::Pass),
            });
            let engine = Engine::open(switch.clone(), master.clone(), options(chunk))
                .await
                .unwrap();
            let data = |seed: u64, len: usize| {
                Value {
                    len,
                    pattern: 1,
                    seed,
                }
                .bytes(chunk as usize)
            };
            let v1 = data(1, 300);
            engine.store("k", &v1, Meta::file()).await.unwrap();
            engine
                .store("other", &data(2, 250), Meta::file())
                .await
                .unwrap();
            engine.commit().await.unwrap();
            let mut before = Model::new();
            before.insert("k".into(), (v1.clone(), 0o644));
            before.insert("other".into(), (data(2, 250), 0o644));

            // Replace k and remove other: their 6 pads are released by this change...
            let v2 = data(3, 300);
            engine.store("k", &v2, Meta::file()).await.unwrap();
            engine.remove("other").await.unwrap();
            let mut after = Model::new();
            after.insert("k".into(), (v2.clone(), 0o644));

            // ...whose commit fails.
            *switch.mode.lock().unwrap() = mode;
            assert!(engine.commit().await.is_err(), "{mode:?}");
            *switch.mode.lock().unwrap() = Mode::Pass;
            engine.check_accounting().await.unwrap();

            // New data must not go to the released pads while the store may still use them.
            engine
                .store("new", &data(4, 1000), Meta::file())
                .await
                .unwrap();
            let possible = if mode == Mode::CutRoot {
                vec![after.clone()]
            } else {
                vec![before.clone()]
            };
            check_committed(dir.path(), &master, chunk, &possible)
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));

            engine.commit().await.unwrap();
            after.insert("new".into(), (data(4, 1000), 0o644));
            check_committed(dir.path(), &master, chunk, &[after.clone()])
                .await
                .unwrap();
            // Now they are free, and used.
            let stats = engine.stats().await;
            engine
                .store("newer", &data(5, 600), Meta::file())
                .await
                .unwrap();
            assert!(engine.stats().await.free_pads < stats.free_pads);
            engine.commit().await.unwrap();
            after.insert("newer".into(), (data(5, 600), 0o644));
            check_committed(dir.path(), &master, chunk, &[after])
                .await
                .unwrap();
            let lost = orphans(dir.path(), &master, &engine).await;
            assert!(lost.is_empty(), "{mode:?}: {} pads lost", lost.len());
        }
    });
}
