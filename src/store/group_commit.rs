//! Group commit: callers hand in items, and whichever caller gets the turn first does the work
//! for every item waiting by then, at most `max`. No caller waits for others to arrive; those
//! that arrive while the work is under way share the next run. Used to pay for many new pads
//! in one transaction (`payments.rs`).

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::StoreError;

pub struct GroupCommit<T> {
    waiting: Mutex<Vec<Waiting<T>>>,
    /// Held by the caller doing the work.
    turn: tokio::sync::Mutex<()>,
    max: usize,
}

struct Waiting<T> {
    item: T,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl<T> GroupCommit<T> {
    pub fn new(max: usize) -> Self {
        GroupCommit {
            waiting: Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(()),
            max: max.max(1),
        }
    }

    /// Runs `work` on a batch holding `item` (this caller's or another's run), returning that
    /// run's result. A caller that gives up before its turn leaves its item in the queue: the
    /// next run still does it.
    pub async fn submit<F, Fut>(&self, item: T, work: F) -> Result<(), StoreError>
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let (done, mut result) = oneshot::channel();
        self.lock_waiting().push(Waiting { item, done });
        loop {
            let turn = self.turn.lock().await;
            // A run while this caller waited for the turn may have taken its item.
            if let Some(outcome) = outcome_of(&mut result) {
                return outcome;
            }
            let batch: Vec<Waiting<T>> = {
                let mut waiting = self.lock_waiting();
                let n = waiting.len().min(self.max);
                waiting.drain(..n).collect()
            };
            let (items, dones): (Vec<T>, Vec<_>) =
                batch.into_iter().map(|w| (w.item, w.done)).unzip();
            let outcome = work(items).await;
            for done in dones {
                let _ = done.send(outcome.clone());
            }
            drop(turn);
            // Its own item was most likely in the run it just did: no need to queue again.
            if let Some(outcome) = outcome_of(&mut result) {
                return outcome;
            }
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<T>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The outcome of the run that took a caller's item, once there is one: that run's result, or
/// an error if it was cancelled (a caller that times out drops the run it was doing).
fn outcome_of(
    result: &mut oneshot::Receiver<Result<(), StoreError>>,
) -> Option<Result<(), StoreError>> {
    match result.try_recv() {
        Ok(outcome) => Some(outcome),
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::Transient(
            "the run that took this item was cancelled".into(),
        ))),
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Runs `callers` submits at once against work that takes a while and records its batches.
    async fn batches(callers: u32, max: usize, fail: bool) -> (Vec<Vec<u32>>, Vec<bool>) {
        let group = Arc::new(GroupCommit::new(max));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..callers {
            let (group, runs) = (group.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                group
                    .submit(n, |items: Vec<u32>| async {
                        runs.lock().unwrap().push(items);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        match fail {
                            true => Err(StoreError::Transient("no".into())),
                            false => Ok(()),
                        }
                    })
                    .await
            }));
            if n == 0 {
                // The first caller starts alone; the rest arrive while it works.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap().is_ok());
        }
        let runs = runs.lock().unwrap().clone();
        (runs, results)
    }

    #[tokio::test]
    async fn callers_arriving_during_a_run_share_the_next_one() {
        let (runs, results) = batches(10, 50, false).await;
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0], vec![0]);
        let mut second = runs[1].clone();
        second.sort();
        assert_eq!(second, (1..10).collect::<Vec<_>>());
        assert!(results.iter().all(|ok| *ok));
    }

    #[tokio::test]
    async fn a_run_takes_at_most_max_items_and_every_item_is_done_once() {
        let (runs, results) = batches(10, 4, false).await;
        assert!(runs.iter().all(|r| r.len() <= 4), "{runs:?}");
        let mut all: Vec<u32> = runs.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(results.iter().all(|ok| *ok));
    }

    #[tokio::test]
    async fn the_item_of_a_caller_that_gave_up_is_still_done() {
        let group = Arc::new(GroupCommit::new(50));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let submit = |n: u32| {
            let (group, runs) = (group.clone(), runs.clone());
            tokio::spawn(async move {
                group
                    .submit(n, |items: Vec<u32>| async {
                        runs.lock().unwrap().push(items);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(())
                    })
                    .await
            })
        };
        let first = submit(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = submit(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        second.abort();
        let third = submit(2);
        assert!(first.await.unwrap().is_ok() && third.await.unwrap().is_ok());
        assert_eq!(*runs.lock().unwrap(), vec![vec![0], vec![1, 2]]);
    }

    #[tokio::test]
    async fn a_run_cancelled_midway_fails_its_other_callers_rather_than_hang_them() {
        let group = Arc::new(GroupCommit::new(50));
        let slow = |group: Arc<GroupCommit<u32>>, n: u32, ms: u64| {
            tokio::spawn(async move {
                group
                    .submit(n, |_: Vec<u32>| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(())
                    })
                    .await
            })
        };
        // 0 runs alone; 1 and 2 wait; 1's run (taking 1 and 2) is cancelled midway.
        let first = slow(group.clone(), 0, 50);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = slow(group.clone(), 1, 1_000);
        let third = slow(group.clone(), 2, 1_000);
        assert!(first.await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        second.abort();
        let outcome = tokio::time::timeout(Duration::from_secs(5), third).await;
        let outcome = outcome.expect("the other caller hung").unwrap();
        assert!(
            outcome.as_ref().is_err_and(|e| e.is_transient()),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_run_fails_every_caller_in_it() {
        let (runs, results) = batches(5, 50, true).await;
        assert_eq!(runs.concat().len(), 5);
        assert!(results.iter().all(|ok| !ok));
    }
}
