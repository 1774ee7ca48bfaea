//! One memory budget for the write buffers of every open file, counted in whole chunks.
//!
//! A buffer of a changed chunk holds a unit of the budget from the moment it grows past
//! [`SMALL_BUFFER`] until its upload is done (a small file's few bytes are not worth a chunk of
//! the budget). A writer that needs a unit and finds none first turns its own buffers into
//! uploads and waits for those (see `FileData::make_room`), and only then queues here holding
//! no unit at all: nobody waits for the budget while holding some of it, so writers cannot
//! wait for each other in a circle. The queue is first come, first served (a tokio semaphore),
//! so no writer starves while others keep taking room.
//!
//! Uploads of changed chunks are limited mount-wide too ([`MemoryBudget::upload_slot`]):
//! each holds a sealed copy of its chunk while the store takes it, and one task per chunk of
//! every writer at once would hold as many copies as the budget holds chunks.
//!
//! Some growth cannot wait (a chunk read in to be cut at a truncation, or padded at a commit):
//! it is charged anyway, as a debt that the next units given back pay first.

use std::sync::Mutex;

use tokio::sync::Semaphore;

/// A chunk buffer at least this long holds a unit of the budget.
pub const SMALL_BUFFER: usize = 64 << 10;

pub struct MemoryBudget {
    units: Semaphore,
    uploads: Semaphore,
    total: usize,
    /// Units charged past the budget, paid back before any unit is free again.
    debt: Mutex<usize>,
}

impl MemoryBudget {
    /// A budget of `bytes`, in units of `chunk_size`; at least one unit, so that a single
    /// writer always gets a chunk. At most `uploads` chunks upload at once.
    pub fn new(bytes: usize, chunk_size: usize, uploads: usize) -> Self {
        let total = (bytes / chunk_size.max(1)).max(1);
        MemoryBudget {
            units: Semaphore::new(total),
            uploads: Semaphore::new(uploads.max(1)),
            total,
            debt: Mutex::new(0),
        }
    }

    /// Units in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Units taken now, debt included.
    pub fn in_use(&self) -> usize {
        self.total - self.units.available_permits() + *self.debt.lock().unwrap()
    }

    /// Waits for a turn to upload a chunk; the turn ends when the permit is dropped.
    pub async fn upload_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.uploads
            .acquire()
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Takes a unit if one is free.
    pub fn try_take(&self) -> bool {
        match self.units.try_acquire() {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for a free unit and takes it. Dropping the wait takes nothing.
    pub async fn take(&self) {
        self.units
            .acquire()
            .await
            .expect("the budget's semaphore is never closed")
            .forget();
    }

    /// Takes `n` units now, past the budget if need be.
    pub fn force(&self, n: usize) {
        let mut short = 0;
        for _ in 0..n {
            if !self.try_take() {
                short += 1;
            }
        }
        *self.debt.lock().unwrap() += short;
    }

    /// Gives `n` units back: first to the debt, the rest to the writers waiting.
    pub fn give_back(&self, n: usize) {
        let mut debt = self.debt.lock().unwrap();
        let paid = n.min(*debt);
        *debt -= paid;
        self.units.add_permits(n - paid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_the_unit_given_back_and_debt_is_paid_first() {
        let budget = std::sync::Arc::new(MemoryBudget::new(2 << 20, 1 << 20, 1));
        assert_eq!(budget.total(), 2);
        assert!(budget.try_take() && budget.try_take() && !budget.try_take());
        budget.force(1);
        assert_eq!(budget.in_use(), 3);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take().await }
        });
        tokio::task::yield_now().await;
        // The first unit back pays the debt; the waiter still waits.
        budget.give_back(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        budget.give_back(1);
        waiter.await.unwrap();
        assert_eq!(budget.in_use(), 2);
        budget.give_back(2);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_budget_smaller_than_a_chunk_still_holds_one() {
        assert_eq!(MemoryBudget::new(1000, 4 << 20, 1).total(), 1);
    }
}
