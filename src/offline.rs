//! The commands that work on a store that is not mounted, `fsck` and `gc`: the store opened as
//! a mount opens it (the journal replayed and committed first), the work done by the engine
//! (`engine::check`, `engine::gc`).

use crate::engine::check::CheckReport;
use crate::engine::gc::Leaked;
use crate::engine::Engine;
use crate::keys::MasterKey;
use crate::mount::{open_engine, runtime, MountConfig, StartError};

/// What `fsck` found, and where damaged files went if it repaired.
pub struct FsckOutcome {
    pub report: CheckReport,
    pub set_aside: Option<String>,
}

/// Checks every pad the index in `cfg`'s store references. With `repair`, damaged files are
/// set aside under `lost+found/` and the change committed.
pub fn fsck(
    cfg: &MountConfig,
    repair: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<FsckOutcome, StartError> {
    with_engine(cfg, |engine| async move {
        let report = engine.check(progress).await;
        let set_aside =
            match repair && !report.damaged.is_empty() {
                true => Some(engine.set_aside(&report.damaged).await.map_err(|e| {
                    StartError(format!("could not set the damaged files aside: {e}"))
                })?),
                false => None,
            };
        Ok(FsckOutcome { report, set_aside })
    })
}

/// Finds the pads earlier runs created that nothing references; with `free`, returns them to
/// the free list (committed).
pub fn gc(cfg: &MountConfig, free: bool) -> Result<Leaked, StartError> {
    with_engine(cfg, |engine| async move {
        let leaked = engine
            .find_leaked_pads()
            .await
            .map_err(|e| StartError(format!("stopped: the store could not say: {e}")))?;
        if free {
            engine
                .reclaim(&leaked)
                .await
                .map_err(|e| StartError(format!("could not free the pads: {e}")))?;
        }
        Ok(leaked)
    })
}

/// Opens the engine on `cfg`'s store (refused while mounted: the mount holds the journal
/// lock; refused without a key), commits what its journal replayed, and runs `work`.
fn with_engine<T, F, Fut>(cfg: &MountConfig, work: F) -> Result<T, StartError>
where
    F: FnOnce(Engine) -> Fut,
    Fut: std::future::Future<Output = Result<T, StartError>>,
{
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
    if !cfg.key_file.exists() {
        return Err(StartError(format!(
            "no key file at {}: this command works on an existing store",
            cfg.key_file.display()
        )));
    }
    let key = MasterKey::load_with(&cfg.key_file, &cfg.passphrase)
        .map_err(|e| StartError(e.to_string()))?;
    let rt = runtime()?;
    let engine = open_engine(cfg, key, false, &rt)?.engine;
    rt.block_on(async {
        engine
            .commit()
            .await
            .map_err(|e| StartError(format!("cannot commit the replayed journal: {e}")))?;
        work(engine).await
    })
}
