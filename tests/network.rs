//! Tests against a real local Autonomi network (anvil + antnode 0.4.17 on 127.0.0.1).
//!
//! ```text
//! scripts/local-network.sh start
//! cargo test --test network -- --ignored --nocapture
//! scripts/local-network.sh stop
//! ```
//!
//! The tests are `#[ignore]`d, so a plain `cargo test` reports them as ignored, never as passed;
//! `-- --ignored` runs them, and without a network they fail. Peers come from
//! ANT_PEERS or the script's state dir (MUTANT_LOCALNET_DIR, default
//! ~/.cache/mutant-mount/localnet); the wallet from SECRET_KEY or the state dir's wallet.key (the
//! funded anvil account). The tests run one at a time: they pay from the same EVM account, and
//! concurrent transactions from one account race for nonces.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, SecretKey};
use mutant_mount::engine::{Engine, EngineOptions, Error as EngineError};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::network::{NetworkConfig, NetworkKind, NetworkStore, WalletSource};
use mutant_mount::store::{PadStore, RetryPolicy, RetryingStore, StoreError, MAX_PAD_PLAINTEXT};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ENCODING: u64 = 42;

/// Logs to the test's output.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mutant_mount=info")),
        )
        .with_test_writer()
        .try_init();
}

fn state_dir() -> PathBuf {
    match std::env::var_os("MUTANT_LOCALNET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/mutant-mount/localnet"),
    }
}

fn config() -> NetworkConfig {
    let state = state_dir();
    let mut config = NetworkConfig::new(NetworkKind::Local);
    if std::env::var_os("ANT_PEERS").is_none() {
        let peers = std::fs::read_to_string(state.join("peers")).unwrap_or_else(|e| {
            panic!(
                "no ANT_PEERS and no {}: is the local network up? ({e})",
                state.join("peers").display()
            )
        });
        config.peers = NetworkConfig::parse_peers(&peers).unwrap();
    }
    // The network's own bootstrap cache, not the user's.
    config.bootstrap_cache_dir = Some(state.join("home/.local/share/autonomi/bootstrap_cache"));
    if std::env::var_os("SECRET_KEY").is_none() {
        config.wallet = WalletSource::File(state.join("wallet.key"));
    }
    config
}

/// The network store as a mount uses it: under the retry layer with the network's policy.
async fn connect() -> RetryingStore<NetworkStore> {
    let t = Instant::now();
    let store = NetworkStore::connect(config()).await.expect("connect");
    let store = RetryingStore::new(store, RetryPolicy::network());
    eprintln!("  connect: {:?}", t.elapsed());
    store
}

fn pad(sk: &SecretKey, data: &[u8], counter: u64) -> Scratchpad {
    Scratchpad::new(sk, ENCODING, &Bytes::copy_from_slice(data), counter)
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let out = f.await;
    let elapsed = t.elapsed();
    eprintln!("  {what}: {elapsed:?}");
    (out, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
async fn pad_store_round_trip() {
    init_logs();
    let _one = ONE_AT_A_TIME.lock().await;
    let store = connect().await;
    let sk = SecretKey::random();
    let pk = sk.public_key();

    // A pad that does not exist: quick answers, not the client's 13 s of retries.
    let (r, _) = timed("exists (missing)", store.exists(&pk)).await;
    assert_eq!(r, Ok(false));
    let (r, took) = timed("get (missing)", store.get(&pk)).await;
    assert_eq!(r.unwrap_err(), StoreError::NotFound);
    assert!(took < Duration::from_secs(5), "a missing get took {took:?}");
    let (r, took) = timed("get newest (missing)", store.get_newest(&pk)).await;
    assert_eq!(r.unwrap_err(), StoreError::NotFound);
    assert!(took < Duration::from_secs(5), "a missing get took {took:?}");
    let (r, _) = timed("update (missing)", store.update(pad(&sk, b"x", 1))).await;
    assert_eq!(r, Err(StoreError::NotFound));

    // Create: paid once.
    let (r, _) = timed("create (small, paid)", store.create(pad(&sk, b"hello", 0))).await;
    r.unwrap();
    assert_eq!(
        store.inner().stats().pads_created.load(Ordering::Relaxed),
        1
    );
    assert!(!store.inner().total_cost().is_zero());
    eprintln!(
        "  cost of one pad: {} atto",
        store.inner().total_cost().as_atto()
    );
    let (r, _) = timed("exists", store.exists(&pk)).await;
    assert_eq!(r, Ok(true));
    let (got, _) = timed("get (small)", store.get(&pk)).await;
    let got = got.unwrap();
    assert_eq!(got.counter(), 0);
    assert_eq!(got.decrypt_data(&sk).unwrap(), Bytes::from_static(b"hello"));

    // A second create of the same pad is refused, whatever its content.
    let (r, _) = timed("create (exists)", store.create(pad(&sk, b"other", 0))).await;
    assert_eq!(r, Err(StoreError::AlreadyExists));

    // Update: free, higher counter wins.
    let v1 = pad(&sk, b"version 1", 1);
    let (r, _) = timed("update (small)", store.update(v1.clone())).await;
    r.unwrap();
    // `get` takes the first node's answer, which may still be version 0 (an update returns
    // once a majority holds it); `get_newest` waits for the close group.
    let got = store.get(&pk).await.unwrap();
    assert!(got.counter() <= 1);
    let got = store.get_newest(&pk).await.unwrap();
    assert_eq!(got.counter(), 1);
    assert_eq!(
        got.decrypt_data(&sk).unwrap(),
        Bytes::from_static(b"version 1")
    );
    // The same pad again is a no-op the nodes accept.
    store.update(v1).await.unwrap();

    // Stale counters are refused by the nodes and reported as such, at once.
    let (r, took) = timed(
        "update (same counter, other content)",
        store.update(pad(&sk, b"rival", 1)),
    )
    .await;
    assert_eq!(
        r,
        Err(StoreError::StaleCounter {
            stored: 1,
            offered: 1
        })
    );
    assert!(
        took < Duration::from_secs(5),
        "a stale update took {took:?}"
    );
    let (r, _) = timed("update (lower counter)", store.update(pad(&sk, b"old", 0))).await;
    assert_eq!(
        r,
        Err(StoreError::StaleCounter {
            stored: 1,
            offered: 0
        })
    );
    assert_eq!(
        store
            .get_newest(&pk)
            .await
            .unwrap()
            .decrypt_data(&sk)
            .unwrap(),
        Bytes::from_static(b"version 1")
    );

    // Too big: refused before it leaves the machine.
    let big = pad(&sk, &vec![7u8; MAX_PAD_PLAINTEXT + 1], 2);
    assert!(matches!(
        store.update(big.clone()).await,
        Err(StoreError::TooBig(_))
    ));
    let other = SecretKey::random();
    assert!(matches!(
        store
            .create(pad(&other, &vec![7u8; MAX_PAD_PLAINTEXT + 1], 0))
            .await,
        Err(StoreError::TooBig(_))
    ));

    // A bad signature never leaves the machine either.
    let forged = pad(&other, b"x", 0);
    let forged = Scratchpad::new_with_signature(
        *forged.owner(),
        ENCODING,
        forged.encrypted_data().clone(),
        5,
        forged.signature().clone(),
    );
    assert!(matches!(
        store.create(forged).await,
        Err(StoreError::Corrupt(_))
    ));

    // The largest pad there is: created, updated, read back.
    let full: Vec<u8> = (0..MAX_PAD_PLAINTEXT).map(|i| (i % 251) as u8).collect();
    let full_pad = {
        let (sk, full) = (other.clone(), full.clone());
        tokio::task::spawn_blocking(move || pad(&sk, &full, 0))
            .await
            .unwrap()
    };
    let (r, _) = timed("create (4 MiB, paid)", store.create(full_pad)).await;
    r.unwrap();
    let mut full2 = full.clone();
    full2[0] ^= 1;
    let full_pad2 = {
        let (sk, full2) = (other.clone(), full2.clone());
        tokio::task::spawn_blocking(move || pad(&sk, &full2, 1))
            .await
            .unwrap()
    };
    let (r, _) = timed("update (4 MiB)", store.update(full_pad2)).await;
    r.unwrap();
    let (got, _) = timed("get newest (4 MiB)", store.get_newest(&other.public_key())).await;
    let got = got.unwrap();
    assert_eq!(got.counter(), 1);
    let sk2 = other.clone();
    let plain = tokio::task::spawn_blocking(move || got.decrypt_data(&sk2).unwrap())
        .await
        .unwrap();
    assert_eq!(plain.as_ref(), &full2[..]);

    assert_eq!(
        store.inner().stats().pads_created.load(Ordering::Relaxed),
        2
    );
    eprintln!(
        "  pads created: 2, total cost {} atto",
        store.inner().total_cost().as_atto()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
async fn engine_round_trip() {
    init_logs();
    let _one = ONE_AT_A_TIME.lock().await;
    let master = MasterKey::generate();
    let store = Arc::new(connect().await);

    let (engine, _) = timed(
        "Engine::open (fresh: commits an empty index)",
        Engine::open(store.clone(), master.clone(), EngineOptions::default()),
    )
    .await;
    let engine = engine.unwrap();
    let small = b"a small file".to_vec();
    let big: Vec<u8> = (0..5 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let mut meta = Meta::file();
    meta.mode = 0o600;
    meta.uid = 1000;

    let (r, _) = timed("store small", engine.store("dir/a", &small, meta.clone())).await;
    r.unwrap();
    let (r, _) = timed(
        "store 5 MiB (2 pads)",
        engine.store("big", &big, Meta::file()),
    )
    .await;
    r.unwrap();
    let (r, _) = timed("commit", engine.commit()).await;
    r.unwrap();
    assert_eq!(engine.fetch("dir/a").await.unwrap(), small);
    assert_eq!(engine.fetch("big").await.unwrap(), big);

    let small2 = b"the small file, overwritten".to_vec();
    let (r, _) = timed(
        "overwrite small",
        engine.store("dir/a", &small2, meta.clone()),
    )
    .await;
    r.unwrap();
    engine.remove("big").await.unwrap();
    engine.rename("dir/a", "dir/b").await.unwrap();
    let (r, _) = timed("commit (overwrite, remove, rename)", engine.commit()).await;
    r.unwrap();
    engine.check_accounting().await.unwrap();
    let created = store.inner().stats().pads_created.load(Ordering::Relaxed);
    eprintln!(
        "  pads created: {created}, updates {}, cost {} atto",
        store.inner().stats().updates.load(Ordering::Relaxed),
        store.inner().total_cost().as_atto()
    );

    // Another machine: only the master key in common.
    let store2 = Arc::new(connect().await);
    let (engine2, _) = timed(
        "Engine::open (existing index)",
        Engine::open(store2.clone(), master.clone(), EngineOptions::default()),
    )
    .await;
    let engine2 = engine2.unwrap();
    assert_eq!(engine2.list_keys().await, vec!["dir/b".to_string()]);
    let (data, _) = timed("fetch (from the network)", engine2.fetch("dir/b")).await;
    assert_eq!(data.unwrap(), small2);
    let entry = engine2.entry("dir/b").await.unwrap();
    assert_eq!(entry.meta, meta);
    assert!(engine2.fetch("big").await.is_err());
    engine2.verify_all().await.unwrap();
    // The removed file's pads are free for reuse, once the removal was committed.
    let stats = engine2.stats().await;
    assert!(stats.free_pads >= 2, "free pads: {}", stats.free_pads);

    // Reuse: a new file goes to free pads, no payment.
    let before = store2.inner().stats().pads_created.load(Ordering::Relaxed);
    let (r, _) = timed(
        "store small (recycled pad)",
        engine2.store("c", b"recycled", Meta::file()),
    )
    .await;
    r.unwrap();
    let (r, _) = timed("commit", engine2.commit()).await;
    r.unwrap();
    assert_eq!(
        store2.inner().stats().pads_created.load(Ordering::Relaxed),
        before,
        "a free pad should have been reused"
    );
    engine2.check_accounting().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
async fn two_engines_same_key_conflict() {
    init_logs();
    let _one = ONE_AT_A_TIME.lock().await;
    let master = MasterKey::generate();
    let store_a = Arc::new(connect().await);
    let store_b = Arc::new(connect().await);
    let a = Engine::open(store_a, master.clone(), EngineOptions::default())
        .await
        .unwrap();
    // B journals its changes, as a mount does: they must survive the refusal.
    let journal_b = tempfile::tempdir().unwrap();
    let b_opts = || EngineOptions {
        journal_dir: Some(journal_b.path().to_path_buf()),
        ..EngineOptions::default()
    };
    let b = Engine::open(store_b.clone(), master.clone(), b_opts())
        .await
        .unwrap();

    a.store("from-a", b"A", Meta::file()).await.unwrap();
    a.commit().await.unwrap();

    b.store("from-b", b"B", Meta::file()).await.unwrap();
    let (r, took) = timed("commit of the stale engine", b.commit()).await;
    assert!(
        matches!(r, Err(EngineError::Conflict)),
        "expected a conflict, got {r:?}"
    );
    assert!(took < Duration::from_secs(10), "the conflict took {took:?}");
    // B kept its change locally, and wrote nothing over A's index.
    assert_eq!(b.fetch("from-b").await.unwrap(), b"B");
    b.check_accounting().await.unwrap();
    // B dies before saving anything: its next open finds the journal does not fit the
    // network's index and recovers B's change under lost+found/ instead of applying it.
    drop(b);
    let b2 = Engine::open(store_b.clone(), master.clone(), b_opts())
        .await
        .unwrap();
    let saved = b2.recovered_at().expect("B's change saved").to_string();
    assert_eq!(b2.fetch(&format!("{saved}/from-b")).await.unwrap(), b"B");
    assert_eq!(b2.entry("from-b").await, None);
    drop(b2);

    let c = Engine::open(store_b, master, EngineOptions::default())
        .await
        .unwrap();
    assert_eq!(c.fetch("from-a").await.unwrap(), b"A");
    assert_eq!(c.fetch(&format!("{saved}/from-b")).await.unwrap(), b"B");
}
