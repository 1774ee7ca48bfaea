//! Paying for new pads together. An upload creates many pads at once; paid one by one, each
//! costs an EVM transaction of its own (plus a balance and an allowance read), and the wallet's
//! lock makes them wait in line. Here each create gathers its own quotes from the network
//! concurrently, then the quotes waiting are paid for in one transaction ([`GroupCommit`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use autonomi::client::payment::{receipt_from_store_quotes, Receipt};
use autonomi::client::quote::StoreQuote;
use autonomi::{Wallet, XorName};

use super::group_commit::GroupCommit;
use super::StoreError;

/// Pads paid for in one call: five quotes each, so that the call stays within the one
/// transaction (256 payments) that pays for all of them or for none.
const MAX_PADS_PER_PAYMENT: usize = 50;

pub struct Payer {
    wallet: Wallet,
    group: GroupCommit<StoreQuote>,
    /// Proofs of payment not yet used: a create takes its own; a create whose put failed puts
    /// it back, and one whose caller gave up leaves it, for the next create of that pad.
    receipts: Mutex<Receipt>,
    /// Payments made (EVM transactions).
    payments: AtomicU64,
}

impl Payer {
    pub fn new(wallet: Wallet) -> Self {
        Payer {
            wallet,
            group: GroupCommit::new(MAX_PADS_PER_PAYMENT),
            receipts: Mutex::new(Receipt::new()),
            payments: AtomicU64::new(0),
        }
    }

    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    /// How many payments (EVM transactions) were made.
    pub fn payments(&self) -> u64 {
        self.payments.load(Ordering::Relaxed)
    }

    fn receipts(&self) -> std::sync::MutexGuard<'_, Receipt> {
        self.receipts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The unused proof of payment for `address`, if one was made.
    pub fn take_receipt(&self, address: &XorName) -> Option<Receipt> {
        let (address, proof) = self.receipts().remove_entry(address)?;
        Some(Receipt::from([(address, proof)]))
    }

    /// Keeps a proof of payment that a failed put did not use, for the next try.
    pub fn keep_receipt(&self, receipt: Receipt) {
        self.receipts().extend(receipt);
    }

    /// Pays for `quotes` (one pad's), together with any others waiting. Once it returns
    /// `Ok`, the pad's proof is waiting in [`Payer::take_receipt`].
    pub async fn pay(&self, quotes: StoreQuote) -> Result<(), StoreError> {
        self.group.submit(quotes, |batch| self.pay_for(batch)).await
    }

    async fn pay_for(&self, batch: Vec<StoreQuote>) -> Result<(), StoreError> {
        let payments: Vec<_> = batch.iter().flat_map(StoreQuote::payments).collect();
        let outcome = self.wallet.pay_for_quotes(payments.iter().cloned()).await;
        self.payments.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pads = batch.len(),
            quotes = payments.len(),
            ok = outcome.is_ok(),
            "paid for new pads together"
        );
        // One transaction: it paid for every quote or for none.
        outcome.map_err(|e| super::network::map_wallet_error(e.0))?;
        let mut receipts = self.receipts();
        for quotes in batch {
            receipts.extend(receipt_from_store_quotes(quotes));
        }
        Ok(())
    }
}
