//! The CPU side of pads: sealing, signing and opening run on the blocking pool, at most one
//! task per core, first come first served, so pads finish in the order they were asked for (a
//! sequential reader's next chunk first) instead of all sharing the cores and finishing
//! together. A reader's own pad does not queue.

use std::sync::OnceLock;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::pads::Priority;

/// Runs `f` on the blocking pool once a core is free (at once for a reader's own pad).
pub async fn blocking<T: Send + 'static>(
    priority: Priority,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let _turn = core(priority).await;
    tokio::task::spawn_blocking(f)
        .await
        .expect("crypto task panicked")
}

/// A core's turn: held while a crypto task runs.
async fn core(priority: Priority) -> Option<SemaphorePermit<'static>> {
    static CORES: OnceLock<Semaphore> = OnceLock::new();
    let cores = CORES.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    match priority {
        Priority::Background => Some(cores.acquire().await.expect("never closed")),
        Priority::Reader => None,
    }
}
