//! The local tier in front of the network (`src/store/tier.rs`), over a fake network: a local
//! store that can be taken down (every operation fails transiently) and held at a gate (writes
//! wait for a permit), so a test can stop the uploader at any point and look at what the
//! "network" holds by itself.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey, SecretKey};
use mutant_mount::engine::{Engine, EngineOptions, Error};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{LocalStore, PadStore, StoreError, TierConfig, TieredStore};
use proptest::prelude::*;
use tokio::sync::Semaphore;

mod engine_common;
use engine_common::{pad_files, value, Model, Value, KEYS};

/// The fake network: a local store, down or up, with writes let through a gate.
struct FakeNetwork {
    store: LocalStore,
    down: AtomicBool,
    /// Writes wait here for a permit (tests add permits; `open` adds plenty).
    gate: Semaphore,
    /// Writes waiting at the gate now: a test lets exactly these through by waiting for them
    /// to arrive first (the gate serves its waiters in order).
    at_gate: AtomicU64,
    /// Writes that got through the gate and finished.
    writes_done: AtomicU64,
    /// Every write that landed: (owner, counter, was a create).
    log: Mutex<Vec<(PublicKey, u64, bool)>>,
    /// Pads `get` serves at an older version the next few times (nodes back from a while away
    /// form the majority); `get_newest`, which asks every holder, finds the newest.
    stale: Mutex<std::collections::HashMap<PublicKey, (Scratchpad, usize)>>,
    /// Calls of `get_newest`.
    newest_gets: AtomicU64,
}

impl FakeNetwork {
    fn new(dir: &Path) -> Arc<Self> {
        Arc::new(FakeNetwork {
            store: LocalStore::open(dir).unwrap(),
            down: AtomicBool::new(false),
            gate: Semaphore::new(Semaphore::MAX_PERMITS),
            at_gate: AtomicU64::new(0),
            writes_done: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            stale: Mutex::new(std::collections::HashMap::new()),
            newest_gets: AtomicU64::new(0),
        })
    }

    /// A network whose writes wait at the gate until `let_through` opens it.
    fn gated(dir: &Path) -> Arc<Self> {
        let net = Self::new(dir);
        net.gate.forget_permits(Semaphore::MAX_PERMITS);
        net
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Transient("the network is down".into()));
        }
        Ok(())
    }

    async fn write(&self, pad: Scratchpad, create: bool) -> Result<(), StoreError> {
        self.at_gate.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.unwrap().forget();
        self.at_gate.fetch_sub(1, Ordering::SeqCst);
        let result = match self.check_up() {
            Ok(()) => {
                let (owner, counter) = (*pad.owner(), pad.counter());
                let result = if create {
                    self.store.create(pad).await
                } else {
                    self.store.update(pad).await
                };
                if result.is_ok() {
                    self.log.lock().unwrap().push((owner, counter, create));
                }
                result
            }
            Err(e) => Err(e),
        };
        self.writes_done.fetch_add(1, Ordering::SeqCst);
        result
    }
}

#[async_trait]
impl PadStore for FakeNetwork {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.write(pad, true).await
    }
    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.write(pad, false).await
    }
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.check_up()?;
        if let Some((old, times)) = self.stale.lock().unwrap().get_mut(owner) {
            if *times > 0 {
                *times -= 1;
                return Ok(old.clone());
            }
        }
        self.store.get(owner).await
    }
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.check_up()?;
        self.newest_gets.fetch_add(1, Ordering::SeqCst);
        self.store.get(owner).await
    }
    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.check_up()?;
        self.store.exists(owner).await
    }
    fn is_remote(&self) -> bool {
        true
    }
}

fn config(dir: &Path) -> TierConfig {
    TierConfig {
        retry_first: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..TierConfig::new(dir)
    }
}

fn pad(sk: &SecretKey, data: &[u8], counter: u64) -> Scratchpad {
    Scratchpad::new(sk, 7, &Bytes::copy_from_slice(data), counter)
}

/// A tier over a fake network (down or up) for the index whose root `root` owns.
async fn tier_over_a_network(
    down: bool,
) -> (
    tempfile::TempDir,
    Arc<FakeNetwork>,
    SecretKey,
    Arc<TieredStore>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let net = FakeNetwork::new(&tmp.path().join("net"));
    net.down.store(down, Ordering::SeqCst);
    let root = SecretKey::random();
    let tier = TieredStore::open(
        net.clone(),
        root.public_key(),
        config(&tmp.path().join("tier")),
    )
    .await
    .unwrap();
    (tmp, net, root, tier)
}

/// Lets the `n` writes waiting at the gate through, once they are all there: a write that
/// arrives later (a root its epoch's last pad let start) waits for the next permits.
async fn let_through(net: &FakeNetwork, n: u64) {
    eventually("writes at the gate", || {
        net.at_gate.load(Ordering::SeqCst) >= n
    })
    .await;
    net.gate.add_permits(n as usize);
}

/// Waits (with a generous bound, never part of what a test asserts) for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_return_while_the_network_is_down_and_upload_once_it_is_back() {
    let (_tmp, net, root, tier) = tier_over_a_network(true).await;
    let a = SecretKey::random();
    tier.create(pad(&a, b"a0", 0)).await.unwrap();
    tier.update(pad(&a, b"a1", 1)).await.unwrap();
    tier.create(pad(&root, b"root0", 0)).await.unwrap();
    // The tier answers by the network's rules for the pads it holds.
    assert_eq!(
        tier.create(pad(&a, b"again", 0)).await.unwrap_err(),
        StoreError::AlreadyExists
    );
    assert!(matches!(
        tier.update(pad(&a, b"old", 1)).await,
        Err(StoreError::StaleCounter {
            stored: 1,
            offered: 1
        })
    ));
    // Reads come from the tier while the network is down.
    let got = tier.get(&a.public_key()).await.unwrap();
    assert_eq!(&got.decrypt_data(&a).unwrap()[..], b"a1");
    assert!(tier.exists(&root.public_key()).await.unwrap());
    let backlog = tier.backlog();
    assert_eq!(backlog.pads, 2, "{backlog:?}");
    assert!(net.log.lock().unwrap().is_empty());

    net.down.store(false, Ordering::SeqCst);
    tier.flush().await.unwrap();
    assert_eq!(tier.backlog().pads, 0);
    let uploaded = net.store.get(&a.public_key()).await.unwrap();
    assert_eq!(&uploaded.decrypt_data(&a).unwrap()[..], b"a1");
    // Created on the network (the paid operation), with the version written last in its
    // epoch, then the root.
    let log = net.log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![(a.public_key(), 1, true), (root.public_key(), 0, true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_uploading_and_ignores_torn_staging_files() {
    let tmp = tempfile::tempdir().unwrap();
    let net = FakeNetwork::new(&tmp.path().join("net"));
    net.down.store(true, Ordering::SeqCst);
    let root = SecretKey::random();
    let dir = tmp.path().join("tier");
    let a = SecretKey::random();
    {
        let tier = TieredStore::open(net.clone(), root.public_key(), config(&dir))
            .await
            .unwrap();
        tier.create(pad(&a, b"a0", 0)).await.unwrap();
        tier.create(pad(&root, b"root0", 0)).await.unwrap();
        tier.update(pad(&a, b"a1", 1)).await.unwrap();
        tier.update(pad(&root, b"root1", 1)).await.unwrap();
        assert_eq!(tier.backlog().pads, 4);
    }
    // Its uploads end once aborted, not at once: one that wakes to a network back up could
    // still land a pad (after the write, before the log) as the next tier starts.
    eventually("the first tier's uploads to end", || {
        Arc::strong_count(&net) == 1
    })
    .await;
    // A write cut short by a crash: its temp file, half written, in the open epoch.
    let torn = SecretKey::random();
    let shard = dir
        .join("staging/3/pads")
        .join(&torn.public_key().to_hex()[..2]);
    std::fs::create_dir_all(&shard).unwrap();
    let tmp_file = shard.join(format!(
        ".{}.tmp0123456789abcdef",
        torn.public_key().to_hex()
    ));
    std::fs::write(&tmp_file, b"half a pad").unwrap();

    net.down.store(false, Ordering::SeqCst);
    let tier = TieredStore::open(net.clone(), root.public_key(), config(&dir))
        .await
        .unwrap();
    assert!(!tmp_file.exists(), "the torn temp file is dropped");
    tier.flush().await.unwrap();
    let got = net.store.get(&root.public_key()).await.unwrap();
    assert_eq!(&got.decrypt_data(&root).unwrap()[..], b"root1");
    let got = net.store.get(&a.public_key()).await.unwrap();
    assert_eq!(&got.decrypt_data(&a).unwrap()[..], b"a1");
    assert!(!net.store.exists(&torn.public_key()).await.unwrap());
    // Epoch by epoch: a0 and root0 before a1 and root1.
    let log: Vec<(PublicKey, u64)> = net.log.lock().unwrap().iter().map(|w| (w.0, w.1)).collect();
    assert_eq!(
        log,
        vec![
            (a.public_key(), 0),
            (root.public_key(), 0),
            (a.public_key(), 1),
            (root.public_key(), 1)
        ]
    );
    assert!(!dir.join("staging/1").exists() && !dir.join("staging/2").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_drops_only_uploaded_pads() {
    let tmp = tempfile::tempdir().unwrap();
    let net = FakeNetwork::new(&tmp.path().join("net"));
    net.down.store(true, Ordering::SeqCst);
    let root = SecretKey::random();
    let tier_cfg = TierConfig {
        max_bytes: 1,
        ..config(&tmp.path().join("tier"))
    };
    let tier = TieredStore::open(net.clone(), root.public_key(), tier_cfg)
        .await
        .unwrap();
    let keys: Vec<SecretKey> = (0..5).map(|_| SecretKey::random()).collect();
    for (i, sk) in keys.iter().enumerate() {
        tier.create(pad(sk, &[i as u8; 3000], 0)).await.unwrap();
    }
    tier.create(pad(&root, b"root", 0)).await.unwrap();
    // Far over the bound, and all of it still readable with the network down.
    for (i, sk) in keys.iter().enumerate() {
        let got = tier.get(&sk.public_key()).await.unwrap();
        assert_eq!(got.decrypt_data(sk).unwrap()[..], [i as u8; 3000]);
    }
    net.down.store(false, Ordering::SeqCst);
    tier.flush().await.unwrap();
    let cache_files = pad_files(&tmp.path().join("tier/cache"));
    assert!(
        cache_files.len() <= 1,
        "uploaded pads stay cached over the bound: {cache_files:?}"
    );
    // Evicted pads come back from the network.
    for (i, sk) in keys.iter().enumerate() {
        let got = tier.get(&sk.public_key()).await.unwrap();
        assert_eq!(got.decrypt_data(sk).unwrap()[..], [i as u8; 3000]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_moved_by_another_machine_stops_the_uploads() {
    let (_tmp, net, root, tier) = tier_over_a_network(false).await;
    tier.create(pad(&root, b"mine 0", 0)).await.unwrap();
    tier.flush().await.unwrap();
    // Another machine commits over the root this one uploaded...
    net.store.update(pad(&root, b"theirs 1", 1)).await.unwrap();
    // ...and this one commits too, knowing nothing of it.
    let a = SecretKey::random();
    tier.create(pad(&a, b"a", 0)).await.unwrap();
    tier.update(pad(&root, b"mine 1", 1)).await.unwrap();
    let flushed = tier.flush().await;
    assert!(
        matches!(flushed, Err(StoreError::Permanent(_))),
        "{flushed:?}"
    );
    // The pad went up while its epoch was open; the root is what waits.
    let backlog = tier.backlog();
    assert!(
        backlog.stopped.is_some() && backlog.pads == 1,
        "{backlog:?}"
    );
    let got = net.store.get(&root.public_key()).await.unwrap();
    assert_eq!(&got.decrypt_data(&root).unwrap()[..], b"theirs 1");
    // What this machine wrote is kept, for the next mount (and the engine's conflict handling).
    let got = tier.get(&root.public_key()).await.unwrap();
    assert_eq!(&got.decrypt_data(&root).unwrap()[..], b"mine 1");
}

/// The oldest epoch uploads while it is still open (a long copy streams up before its commit);
/// a pad written again after its upload goes up again, and the root that ends the epoch last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_epoch_uploads_before_its_commit() {
    let (_tmp, net, root, tier) = tier_over_a_network(false).await;
    let (a, b) = (SecretKey::random(), SecretKey::random());
    tier.create(pad(&a, b"a0", 0)).await.unwrap();
    tier.create(pad(&b, b"b0", 0)).await.unwrap();
    eventually("the open epoch's pads to go up", || {
        tier.backlog().pads == 0
    })
    .await;
    assert!(net.store.exists(&a.public_key()).await.unwrap());
    assert!(net.store.exists(&b.public_key()).await.unwrap());
    assert!(!net.store.exists(&root.public_key()).await.unwrap());

    tier.update(pad(&a, b"a1", 1)).await.unwrap();
    tier.create(pad(&root, b"root0", 0)).await.unwrap();
    tier.flush().await.unwrap();
    let mut log = net.log.lock().unwrap().clone();
    let (early, late) = log.split_at_mut(2);
    early.sort_by_key(|(owner, _, _)| *owner != a.public_key());
    assert_eq!(
        early,
        [(a.public_key(), 0, true), (b.public_key(), 0, true)]
    );
    assert_eq!(
        late,
        [(a.public_key(), 1, false), (root.public_key(), 0, true)]
    );
    let got = net.store.get(&a.public_key()).await.unwrap();
    assert_eq!(&got.decrypt_data(&a).unwrap()[..], b"a1");
}

/// Network writes as a set: uploads that wait at the gate together go through in any order.
fn in_any_order(writes: &[(PublicKey, u64, bool)]) -> Vec<(String, u64, bool)> {
    let mut writes: Vec<_> = (writes.iter())
        .map(|(owner, counter, create)| (owner.to_hex(), *counter, *create))
        .collect();
    writes.sort();
    writes
}

/// A sealed epoch holds the next one's rewritten pads back until its root is up; a pad the
/// next epoch created goes up at once, since no root before that epoch's can name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_waits_for_the_root_before_it_but_new_pads_do_not() {
    let (_tmp, net, root, tier) = tier_over_a_network(false).await;
    let (a, b, c) = (
        SecretKey::random(),
        SecretKey::random(),
        SecretKey::random(),
    );
    tier.create(pad(&b, b"b0", 0)).await.unwrap();
    tier.create(pad(&root, b"root0", 0)).await.unwrap();
    tier.flush().await.unwrap();
    // The gate shuts: epoch 1 (a new pad and its root) is sealed; epoch 2 rewrites b (which
    // root 0 names) and creates c.
    net.gate.forget_permits(Semaphore::MAX_PERMITS);
    let before = net.writes_done.load(Ordering::SeqCst);
    tier.create(pad(&a, b"a0", 0)).await.unwrap();
    tier.update(pad(&root, b"root1", 1)).await.unwrap();
    tier.update(pad(&b, b"b1", 1)).await.unwrap();
    tier.create(pad(&c, b"c0", 0)).await.unwrap();
    // Two writes let through: epoch 1's pad and c, both waiting at the gate (in either
    // order); root 1 and b wait.
    let_through(&net, 2).await;
    eventually("two writes", || {
        net.writes_done.load(Ordering::SeqCst) >= before + 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = net.log.lock().unwrap().clone();
    let want = [(a.public_key(), 0, true), (c.public_key(), 0, true)];
    assert_eq!(in_any_order(&log[2..]), in_any_order(&want));
    assert_eq!(tier.backlog().pads, 2, "epoch 1's root and b wait");

    net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    eventually("everything to go up", || tier.backlog().pads == 0).await;
    let log = net.log.lock().unwrap().clone();
    assert_eq!(
        log[4..],
        [(root.public_key(), 1, false), (b.public_key(), 1, false)]
    );
}

/// A pad the engine freed with root 1 and writes again two epochs later goes up as soon as the
/// network holds root 1, ahead of epoch 2 and its root: no root from 1 on names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pad_freed_with_a_root_goes_up_once_that_root_is_up() {
    let (_tmp, net, root, tier) = tier_over_a_network(false).await;
    let (b, x) = (SecretKey::random(), SecretKey::random());
    tier.create(pad(&b, b"b0", 0)).await.unwrap();
    tier.create(pad(&x, b"x0", 0)).await.unwrap();
    tier.create(pad(&root, b"root0", 0)).await.unwrap();
    tier.flush().await.unwrap();
    net.gate.forget_permits(Semaphore::MAX_PERMITS);
    let before = net.writes_done.load(Ordering::SeqCst);
    // Epoch 1 is its root alone (it frees b); epoch 2 rewrites x, which root 1 still names;
    // epoch 3 rewrites b.
    tier.update(pad(&root, b"root1", 1)).await.unwrap();
    tier.update(pad(&x, b"x1", 1)).await.unwrap();
    tier.update(pad(&root, b"root2", 2)).await.unwrap();
    tier.update_freed(pad(&b, b"b1", 1), 1).await.unwrap();
    net.gate.add_permits(1);
    eventually("root 1", || net.writes_done.load(Ordering::SeqCst) > before).await;
    // Root 1 is up: x (epoch 2's) and b (epoch 3's) both start; root 2 waits for x.
    let_through(&net, 2).await;
    eventually("two more writes", || {
        net.writes_done.load(Ordering::SeqCst) >= before + 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = net.log.lock().unwrap().clone();
    assert_eq!(log[3], (root.public_key(), 1, false));
    let want = [(x.public_key(), 1, false), (b.public_key(), 1, false)];
    assert_eq!(in_any_order(&log[4..]), in_any_order(&want));
    assert_eq!(tier.backlog().pads, 1, "root 2 waits");

    // A pad freed with a root the network does not hold yet waits for it: x, written in
    // epoch 2 and freed by its root (a file written and deleted before that commit), written
    // again in epoch 4 does not go up while root 2 waits; d, born in epoch 4, goes at once.
    let d = SecretKey::random();
    tier.create(pad(&d, b"d0", 0)).await.unwrap();
    tier.update_freed(pad(&x, b"x2", 2), 2).await.unwrap();
    tier.update(pad(&root, b"root3", 3)).await.unwrap();
    eventually("d0's upload", || tier.backlog().uploading >= 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        tier.backlog().uploading,
        1,
        "only d0, born in epoch 4, goes"
    );
    net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    eventually("everything to go up", || tier.backlog().pads == 0).await;
    let log = net.log.lock().unwrap().clone();
    assert_eq!(log.len(), 10);
    let at = |owner: PublicKey, counter| log.iter().position(|w| (w.0, w.1) == (owner, counter));
    assert!(at(root.public_key(), 2) < at(x.public_key(), 2));
}

#[derive(Clone, Debug)]
enum Op {
    Store {
        key: usize,
        value: Value,
    },
    Remove {
        key: usize,
    },
    Commit,
    /// Let this many writes through to the network, wait for them, and check what it holds.
    Upload(u32),
}

const CHUNK: u32 = 256;

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        6 => (key.clone(), value(CHUNK as usize)).prop_map(|(key, value)| Op::Store { key, value }),
        2 => key.prop_map(|key| Op::Remove { key }),
        3 => Just(Op::Commit),
        3 => (1u32..12).prop_map(Op::Upload),
    ]
}

fn options() -> EngineOptions {
    EngineOptions {
        scratchpad_size: CHUNK,
        cache_bytes: 0,
        parallelism: 4,
        free_page_pads: 2,
        ..Default::default()
    }
}

/// An engine over a tier over a network whose writes wait at the gate.
async fn engine_over_a_gated_network(
    opts: EngineOptions,
) -> (
    tempfile::TempDir,
    Arc<FakeNetwork>,
    MasterKey,
    Arc<TieredStore>,
    Engine,
) {
    let tmp = tempfile::tempdir().unwrap();
    let net = FakeNetwork::gated(&tmp.path().join("net"));
    let master = MasterKey::generate();
    let (tier, engine) = engine_over(&net, &master, &tmp.path().join("tier"), opts).await;
    (tmp, net, master, tier, engine)
}

/// What `attempt` gives once `done` holds of it, tried for up to 5 s: the tier keeps what it
/// fetched in the background, so a read with the network gone finds it only after a moment.
/// ([`eventually`] waits on a condition checked without waiting.)
async fn once_kept<T, F: std::future::Future<Output = T>>(
    mut attempt: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    for _ in 0..500 {
        let got = attempt().await;
        if done(&got) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    attempt().await
}

/// Opens an engine on `store` and reads `key` with it.
async fn open_and_fetch(
    store: Arc<TieredStore>,
    master: &MasterKey,
    key: &str,
) -> Result<Vec<u8>, Error> {
    let engine = Engine::open(store, master.clone(), options()).await?;
    engine.fetch(key).await
}

/// An engine on a tier in `dir` in front of `net`: a machine of its own.
async fn engine_over(
    net: &Arc<FakeNetwork>,
    master: &MasterKey,
    dir: &Path,
    opts: EngineOptions,
) -> (Arc<TieredStore>, Engine) {
    let tier = TieredStore::open(net.clone(), master.root_key().public_key(), config(dir))
        .await
        .unwrap();
    let engine = Engine::open(tier.clone(), master.clone(), opts)
        .await
        .unwrap();
    (tier, engine)
}

/// What an engine opened on the network alone (no tier, no local state) reads; `None` if the
/// network holds no index yet.
async fn network_view(net: &Arc<FakeNetwork>, master: &MasterKey) -> Option<Model> {
    let store: Arc<dyn PadStore> = Arc::new(net.store.clone());
    let opts = EngineOptions {
        create_if_missing: false,
        ..options()
    };
    let engine = match Engine::open(store, master.clone(), opts).await {
        Ok(engine) => engine,
        Err(Error::NoIndex) => return None,
        Err(e) => panic!("the network's index does not open: {e}"),
    };
    let mut found = Model::new();
    for key in engine.list_keys().await {
        let data = engine.fetch(&key).await;
        let data = data.unwrap_or_else(|e| panic!("key {key} unreadable from the network: {e}"));
        found.insert(key, (data, 0));
    }
    Some(found)
}

/// Random engine operations over a tier whose uploads are let through a few writes at a time:
/// at every stop, an engine on the network alone reads exactly one committed state, never an
/// older one than at the last stop; once everything is let through, the last committed state.
fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (_tmp, net, master, tier, engine) = engine_over_a_gated_network(options()).await;
        let mut model = Model::new();
        // The states a root was written for, in order (the empty index first).
        let mut committed: Vec<Model> = vec![Model::new()];
        let mut seen = 0usize;
        let mut let_through = 0u64;
        for op in ops {
            match op {
                Op::Store { key, value } => {
                    let data = value.bytes(CHUNK as usize);
                    engine.store(KEYS[key], &data, Meta::file()).await.unwrap();
                    model.insert(KEYS[key].to_string(), (data, 0));
                }
                Op::Remove { key } => {
                    if model.remove(KEYS[key]).is_some() {
                        engine.remove(KEYS[key]).await.unwrap();
                    }
                }
                Op::Commit => {
                    if engine.has_uncommitted().await {
                        engine.commit().await.unwrap();
                        committed.push(model.clone());
                    }
                }
                Op::Upload(n) => {
                    let_through += u64::from(n);
                    net.gate.add_permits(n as usize);
                    // Stopped: every write let through is done, or nothing is left to upload.
                    eventually("the uploader to stop at the gate", || {
                        net.writes_done.load(Ordering::SeqCst) == let_through
                            || tier.backlog().committed_pads == 0
                    })
                    .await;
                    let view = network_view(&net, &master).await;
                    if let Some(view) = view {
                        let at = committed[seen..].iter().position(|m| *m == view);
                        prop_assert!(
                            at.is_some(),
                            "the network's index is no committed state from the last one seen on"
                        );
                        seen += at.unwrap();
                    }
                }
            }
        }
        if engine.has_uncommitted().await {
            engine.commit().await.unwrap();
            committed.push(model.clone());
        }
        net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        tier.flush().await.unwrap();
        let view = network_view(&net, &master).await;
        prop_assert!(view.as_ref() == committed.last(), "after the drain");
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn the_network_holds_a_whole_committed_index_at_every_stop(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run_ops(ops)?;
    }
}

/// The case the epochs are for: the pads a commit frees are written again in the next epoch;
/// with uploads let through one write at a time, the network never shows them early.
#[test]
fn a_freed_pad_reused_in_the_next_epoch_stays_behind_its_root() {
    let ops = vec![
        Op::Store {
            key: 0,
            value: Value {
                len: 3 * CHUNK as usize,
                pattern: 1,
                seed: 1,
            },
        },
        Op::Commit,
        Op::Remove { key: 0 },
        Op::Commit,
        Op::Store {
            key: 1,
            value: Value {
                len: 3 * CHUNK as usize,
                pattern: 1,
                seed: 2,
            },
        },
        Op::Commit,
    ];
    let mut with_stops = ops.clone();
    for _ in 0..30 {
        with_stops.push(Op::Upload(1));
    }
    run_ops(with_stops).unwrap();
}

/// `fsync(2)` calls `Engine::flush_store` after its commit: it returns once the commit is on the
/// network, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_until_the_commit_is_on_the_network() {
    let (_tmp, net, master, _tier, engine) = engine_over_a_gated_network(options()).await;
    let data = vec![7u8; 3 * CHUNK as usize];
    engine.store("f", &data, Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    let flush = tokio::spawn({
        let engine = engine.clone();
        async move { engine.flush_store().await }
    });
    // Nothing can reach the network: the flush waits (however long this takes to look).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!flush.is_finished(), "flush returned before the upload");
    assert_eq!(network_view(&net, &master).await, None);
    net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    flush.await.unwrap().unwrap();
    let view = network_view(&net, &master).await.unwrap();
    assert_eq!(view.get("f").map(|v| &v.0), Some(&data));
}

/// Behind a network that holds none of the roots that freed them, a long write takes fresh
/// pads rather than the freed ones (their uploads would wait for those roots, a pad's round
/// trip each); once the network holds those roots, freed pads are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_write_takes_no_freed_pad_whose_upload_would_wait() {
    const PAD: u32 = 1 << 20;
    let opts = EngineOptions {
        scratchpad_size: PAD,
        ..options()
    };
    let (_tmp, net, master, tier, engine) = engine_over_a_gated_network(opts).await;
    let data = |seed: u8| vec![seed; 2 * PAD as usize];
    let pads_of = |engine: Engine, key: &'static str| async move {
        let snapshot = engine.snapshot().await;
        let (_, entry) = snapshot.iter().find(|(k, _)| k == key).expect("stored");
        entry.own_pads().map(|p| p.seed).collect::<Vec<_>>()
    };
    engine.store("a", &data(1), Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    let of_a = pads_of(engine.clone(), "a").await;
    assert_eq!(of_a.len(), 2);
    engine.remove("a").await.unwrap();
    engine.commit().await.unwrap();

    // The network holds no root yet: "b" leaves a's pads free.
    engine.store("b", &data(2), Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    let of_b = pads_of(engine.clone(), "b").await;
    assert!(
        of_b.iter().all(|p| !of_a.contains(p)),
        "b took a pad a freed"
    );

    // Once everything is up, "c" takes free pads rather than create some.
    net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    tier.flush().await.unwrap();
    let logged = net.log.lock().unwrap().len();
    engine.store("c", &data(3), Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    tier.flush().await.unwrap();
    let created: Vec<PublicKey> = (net.log.lock().unwrap()[logged..].iter())
        .filter(|(_, _, create)| *create)
        .map(|(owner, _, _)| *owner)
        .collect();
    let of_c = pads_of(engine.clone(), "c").await;
    let new_for_c = (of_c.iter())
        .filter(|seed| created.contains(&master.pad_key(seed).public_key()))
        .count();
    assert_eq!(new_for_c, 0, "c created pads with pads free on the network");
    let view = network_view(&net, &master)
        .await
        .expect("an index on the network");
    let mut keys: Vec<&String> = view.keys().collect();
    keys.sort();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(view["c"].0, data(3));
}

/// Nodes back from a while away answer with a pad's version from before: a reader asks every
/// holder rather than fail, and the tier keeps the version the index names, not the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pad_served_at_an_older_version_is_asked_for_again_and_not_kept() {
    const PAD: u32 = 1 << 20;
    let opts = EngineOptions {
        scratchpad_size: PAD,
        ..options()
    };
    let (tmp, net, master, tier, engine) = engine_over_a_gated_network(opts.clone()).await;
    net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let data = |seed: u8| vec![seed; PAD as usize];
    let pad_of = |engine: Engine, key: &'static str| async move {
        let snapshot = engine.snapshot().await;
        let (_, entry) = snapshot.iter().find(|(k, _)| k == key).expect("stored");
        let seed = entry.own_pads().next().expect("a pad").seed;
        seed
    };
    engine.store("f", &data(1), Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    tier.flush().await.unwrap();
    let pad = pad_of(engine.clone(), "f").await;
    let owner = master.pad_key(&pad).public_key();
    let old = net.store.get(&owner).await.unwrap();
    engine.remove("f").await.unwrap();
    engine.commit().await.unwrap();
    tier.flush().await.unwrap();
    engine.store("g", &data(2), Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    tier.flush().await.unwrap();
    assert_eq!(
        pad_of(engine.clone(), "g").await,
        pad,
        "g did not reuse f's pad"
    );
    drop(engine);

    // A second machine: every majority get of the pad finds f's version.
    net.stale.lock().unwrap().insert(owner, (old, usize::MAX));
    let (tier2, reader) = engine_over(&net, &master, &tmp.path().join("tier2"), opts).await;
    assert_eq!(reader.fetch("g").await.unwrap(), data(2));
    assert_eq!(
        net.stale.lock().unwrap()[&owner].1,
        usize::MAX - 1,
        "the old version was not served"
    );
    // What the tier kept is g's version: it reads with the network down.
    net.down.store(true, Ordering::SeqCst);
    drop(reader);
    let read = || open_and_fetch(tier2.clone(), &master, "g");
    assert_eq!(once_kept(read, Result::is_ok).await.unwrap(), data(2));
}

/// A reader reads the index root from every node that may hold it: a majority of nodes back
/// from a while away would serve the root from before the last commit, and with it files that
/// are gone and pads that hold other content by now. The newer root replaces the old one the
/// reader's tier kept, so that it is what the reader sees with the network gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_takes_the_newest_root_not_the_one_a_majority_holds() {
    let (tmp, net, master, tier, engine) = engine_over_a_gated_network(options()).await;
    net.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let root = master.root_key().public_key();
    engine.store("a", b"first", Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    tier.flush().await.unwrap();
    let old_root = net.store.get(&root).await.unwrap();
    // The reader's tier keeps the root it read (on the side, so wait until it has).
    let reader_dir = tmp.path().join("tier2");
    let (tier2, reader) = engine_over(&net, &master, &reader_dir, options()).await;
    assert_eq!(reader.fetch("a").await.unwrap(), b"first");
    drop(reader);
    net.down.store(true, Ordering::SeqCst);
    let kept = once_kept(|| tier2.get(&root), Result::is_ok).await;
    assert_eq!(kept.unwrap(), old_root);
    drop(tier2);
    net.down.store(false, Ordering::SeqCst);
    engine.remove("a").await.unwrap();
    engine.store("b", b"second", Meta::file()).await.unwrap();
    engine.commit().await.unwrap();
    tier.flush().await.unwrap();
    drop(engine);

    net.stale
        .lock()
        .unwrap()
        .insert(root, (old_root.clone(), usize::MAX));
    let (tier2, reader) = engine_over(&net, &master, &reader_dir, options()).await;
    assert_eq!(reader.fetch("b").await.unwrap(), b"second");
    assert!(reader.fetch("a").await.is_err(), "the old root was read");
    assert!(net.newest_gets.load(Ordering::SeqCst) >= 1);

    drop(reader);
    net.down.store(true, Ordering::SeqCst);
    let counter_kept = || async { tier2.get(&root).await.ok().map(|pad| pad.counter()) };
    let kept = once_kept(counter_kept, |kept| *kept > Some(old_root.counter())).await;
    assert!(
        kept > Some(old_root.counter()),
        "the tier kept the old root"
    );
    let read = || open_and_fetch(tier2.clone(), &master, "b");
    assert_eq!(once_kept(read, Result::is_ok).await.unwrap(), b"second");
}
