//! `mutant-mount fsck`: checks a store that is not mounted, as a mount would open it (the
//! journal replayed first), and optionally sets damaged files aside. The checking itself is
//! the engine's (`engine::check`); this is the part that needs a store and a key.

use crate::engine::check::CheckReport;
use crate::keys::MasterKey;
use crate::mount::{open_engine, MountConfig, StartError};

/// What `fsck` found, and where damaged files went if it repaired.
pub struct FsckOutcome {
    pub report: CheckReport,
    pub set_aside: Option<String>,
}

/// Checks every pad the index in `cfg`'s store references. With `repair`, damaged files are
/// set aside under `lost+found/` and the change committed. Fails if the store is mounted (its
/// journal lock is held), the key is missing or wrong, or the index cannot be read.
pub fn fsck(
    cfg: &MountConfig,
    repair: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<FsckOutcome, StartError> {
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
    if !cfg.key_file.exists() {
        return Err(StartError(format!(
            "no key file at {}: fsck checks an existing store",
            cfg.key_file.display()
        )));
    }
    let key = MasterKey::load_with(&cfg.key_file, &cfg.passphrase)
        .map_err(|e| StartError(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start the runtime: {e}")))?;
    let opened = open_engine(cfg, key, false, &rt)?;
    let engine = opened.engine;
    rt.block_on(async {
        // What the journal replayed must be in the store before its pads are checked.
        engine
            .commit()
            .await
            .map_err(|e| StartError(format!("cannot commit the replayed journal: {e}")))?;
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
