//! The local copy of the index speeds start-up but is never the only copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mutant_mount::engine::{Engine, EngineOptions};
use mutant_mount::index::Meta;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{LocalStore, PadStore, SimConfig, SimStore};

async fn open(
    store: &std::path::Path,
    copy: &std::path::Path,
    key: &MasterKey,
) -> (Engine, Arc<SimStore<LocalStore>>) {
    let sim = Arc::new(SimStore::new(
        LocalStore::open(store).unwrap(),
        SimConfig::default(),
    ));
    let opts = EngineOptions {
        index_cache_dir: Some(copy.to_path_buf()),
        ..Default::default()
    };
    let engine = Engine::open(sim.clone() as Arc<dyn PadStore>, key.clone(), opts)
        .await
        .unwrap();
    (engine, sim)
}

#[tokio::test]
async fn start_up_reads_pages_locally_and_falls_back_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, copy) = (dir.path().join("store"), dir.path().join("copy"));
    let key = MasterKey::generate();
    {
        let (engine, _) = open(&store, &copy, &key).await;
        for i in 0..5000 {
            engine
                .store(&format!("k{i}"), b"", Meta::file())
                .await
                .unwrap();
        }
        engine.commit().await.unwrap();
    }
    // With the local copy: only the root comes from the store.
    let (engine, sim) = open(&store, &copy, &key).await;
    assert_eq!(engine.list_keys().await.len(), 5000);
    assert_eq!(sim.stats.gets.load(Ordering::Relaxed), 1);
    drop(engine);

    // A damaged copy is ignored, a lost one too: the pages come from the store.
    let files: Vec<_> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 2);
    std::fs::write(&files[0], b"garbage").unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let (engine, sim) = open(&store, &copy, &key).await;
    assert_eq!(engine.list_keys().await.len(), 5000);
    assert_eq!(sim.stats.gets.load(Ordering::Relaxed), 3);
    drop(engine);
    std::fs::remove_dir_all(&copy).unwrap();
    let (engine, _) = open(&store, &copy, &key).await;
    assert_eq!(engine.list_keys().await.len(), 5000);
}
