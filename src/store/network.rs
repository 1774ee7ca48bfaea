//! The Autonomi network store: pads are `autonomi` scratchpads (autonomi 0.10.2).
//!
//! - `create` is `Client::scratchpad_put` with a proof of payment: the one paid operation. The
//!   quotes are gathered per pad and paid for with those of other creates under way, in one
//!   transaction (`payments.rs`). If the put fails after the payment went through, the receipt
//!   is kept and the next `create` of that pad reuses it, so a retried creation is paid once.
//! - `update` is `Client::scratchpad_put_update`: a pre-signed pad, no payment, no read.
//! - `get` is a DHT query that ends with the first node to return the pad; `get_newest` one
//!   that waits for the whole close group, taking the newest version of those that answer
//!   (some may be gone). With no answer, each of the closest nodes is asked directly.
//!   `exists` is `Client::scratchpad_check_existence`.
//!
//! Nodes keep a new version of a scratchpad only if its counter is strictly higher than theirs
//! (an identical copy is accepted as a no-op). A refusal comes back to the client as the string
//! `Outdated record rejected: with counter C, expected any above S` inside
//! `NetworkError::PutRecordTooManyPeerFailed`; it is parsed here into
//! [`StoreError::StaleCounter`] (or [`StoreError::AlreadyExists`] for a `create`). An update of a
//! pad no node holds is refused with `NoPayment`: [`StoreError::NotFound`].
//!
//! The client's own retries are turned down (see [`NetworkConfig`]): its default for scratchpad
//! gets sleeps 2 + 4 + 8 s before it reports a missing pad, and its put retries would repeat a
//! refused stale write for 30 s. Retry transient errors with [`super::RetryingStore`] instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use autonomi::client::payment::{PaymentOption, Receipt};
use autonomi::client::quote::DataTypes;
use autonomi::client::scratchpad::ScratchpadError;
use autonomi::client::PutError;
use autonomi::networking::{NetworkAddress, NetworkError, Quorum, Record, RetryStrategy};
use autonomi::scratchpad::{Scratchpad, ScratchpadAddress};
use autonomi::{
    AttoTokens, BootstrapConfig, Client, ClientConfig, ClientOperatingStrategy, Multiaddr,
    PublicKey, Wallet,
};
use futures::StreamExt;

use super::payments::Payer;
use super::{PadStore, StoreError};

/// The environment variable holding the EVM wallet's private key (hex), as the autonomi CLI
/// (`ant`) reads it.
pub const SECRET_KEY_ENV: &str = "SECRET_KEY";

/// Which Autonomi network to join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkKind {
    /// A local network (`antnode --local`): peers from `ANT_PEERS`, the configured peers or the
    /// local bootstrap cache; EVM from `EVM_NETWORK` / the custom-network variables, else the
    /// local anvil defaults (`http://localhost:61611`).
    Local,
    /// A non-local network reached through given peers (`ANT_PEERS` or the configured peers); the
    /// EVM network must come from the environment (`EVM_NETWORK=arbitrum-sepolia-test`, or
    /// `RPC_URL`, `PAYMENT_TOKEN_ADDRESS`, `DATA_PAYMENTS_ADDRESS`).
    Testnet,
    /// The public network, paying on Arbitrum One.
    Main,
}

impl std::str::FromStr for NetworkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(NetworkKind::Local),
            "testnet" => Ok(NetworkKind::Testnet),
            "main" | "mainnet" => Ok(NetworkKind::Main),
            other => Err(format!(
                "unknown network {other:?} (expected local, testnet or main)"
            )),
        }
    }
}

impl std::fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkKind::Local => "local",
            NetworkKind::Testnet => "testnet",
            NetworkKind::Main => "main",
        })
    }
}

/// Where the EVM wallet's private key comes from. Never from a command-line value: those are
/// visible to every user in `ps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalletSource {
    /// An environment variable (by default [`SECRET_KEY_ENV`]).
    Env(String),
    /// A file holding the hex key (surrounding white space ignored); it should be mode 0600.
    File(PathBuf),
    /// A key already read (from `SECRET_KEY`, see [`take_env_wallet_key`]).
    Key(WalletKey),
    /// No wallet: reads and free updates work, creating a pad fails with a permanent error.
    None,
}

/// An EVM wallet's private key held in memory: never printed (`Debug` shows no digits) and
/// wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct WalletKey(zeroize::Zeroizing<String>);

impl WalletKey {
    pub fn new(key: String) -> Self {
        WalletKey(zeroize::Zeroizing::new(key))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalletKey(hidden)")
    }
}

/// Takes the wallet key out of the [`SECRET_KEY_ENV`] variable: the variable is removed, so
/// no child process (the background mount, `fusermount3`) and no reader of
/// `/proc/PID/environ` finds it. Call it before any thread starts: the environment is not
/// safe to change while other threads may read it.
pub fn take_env_wallet_key() -> Option<WalletKey> {
    let key = std::env::var(SECRET_KEY_ENV).ok();
    // The variable's bytes stay where the kernel put them, which `/proc/PID/environ` shows
    // for the process's whole life: overwrite them before forgetting the variable.
    let name = std::ffi::CString::new(SECRET_KEY_ENV).expect("no NUL in the name");
    // SAFETY: getenv returns a pointer to the NUL-terminated value in the environment (or
    // null); no other thread runs yet, so nothing reads or changes it meanwhile, and the value
    // is overwritten within its own length.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if !value.is_null() {
            std::ptr::write_bytes(value, 0, libc::strlen(value));
        }
    }
    std::env::remove_var(SECRET_KEY_ENV);
    key.filter(|k| !k.trim().is_empty()).map(WalletKey::new)
}

impl Default for WalletSource {
    fn default() -> Self {
        WalletSource::Env(SECRET_KEY_ENV.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub network: NetworkKind,
    pub wallet: WalletSource,
    /// Peers to bootstrap from, besides `ANT_PEERS` (which the autonomi crate reads itself).
    pub peers: Vec<Multiaddr>,
    /// Where the bootstrap cache lives, if not the default
    /// (`$XDG_DATA_HOME/autonomi/bootstrap_cache`, else `~/.local/share/...`).
    pub bootstrap_cache_dir: Option<PathBuf>,
    /// The network id (1 is the main network, 2 the alpha network); `None` for the default.
    pub network_id: Option<u8>,
    /// Attempts of the client's DHT query in a scratchpad get (each after the first waits 2, 4,
    /// 8 s). After them the client still asks the 20 closest peers directly, so 1 is enough for
    /// a store; the client's default of 4 makes a get of a missing pad take about 13 s.
    pub get_attempts: usize,
    /// Attempts of the client's put of one scratchpad (each after the first waits 2, 4, 8 s).
    /// 1: a refused (stale) write is reported at once; transient failures are for the caller's
    /// retry layer, which can tell them apart.
    pub put_attempts: usize,
}

impl NetworkConfig {
    pub fn new(network: NetworkKind) -> Self {
        NetworkConfig {
            network,
            wallet: WalletSource::default(),
            peers: Vec::new(),
            bootstrap_cache_dir: None,
            network_id: None,
            get_attempts: 1,
            put_attempts: 1,
        }
    }

    /// Peers from a comma- or white-space-separated list of multiaddrs (the `ANT_PEERS` format).
    pub fn parse_peers(list: &str) -> Result<Vec<Multiaddr>, StoreError> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|e| StoreError::Permanent(format!("bad peer address {s:?}: {e}")))
            })
            .collect()
    }

    fn strategy(&self) -> ClientOperatingStrategy {
        let mut strategy = ClientOperatingStrategy::default();
        strategy.scratchpad.get_retry = RetryStrategy::N(self.get_attempts.max(1));
        strategy.scratchpad.put_retry = RetryStrategy::N(self.put_attempts.max(1));
        // This store never reads chunks.
        strategy.chunk_cache_enabled = false;
        strategy
    }
}

/// Counters of what the store did, for logs and `statfs`.
#[derive(Debug, Default)]
pub struct NetworkStats {
    /// Pads created (and paid for) by this store.
    pub pads_created: AtomicU64,
    /// Creations that found the address already paid for (an earlier attempt landed, or the
    /// receipt of a failed attempt was reused): no new payment.
    pub creates_without_payment: AtomicU64,
    pub updates: AtomicU64,
    pub gets: AtomicU64,
    /// What creation has cost, in atto tokens, saturating at `u64::MAX` (18.4 tokens); the exact
    /// sum is [`NetworkStore::total_cost`].
    pub cost_atto: AtomicU64,
}

pub struct NetworkStore {
    client: Client,
    network: NetworkKind,
    stats: NetworkStats,
    total_cost: Mutex<AttoTokens>,
    /// Pays for new pads, several at a time; `None` without a wallet.
    payer: Option<Payer>,
}

/// The newest version among the records nodes returned for the pad at `address`. Records that
/// are all the same need no signature check (the engine authenticates what it reads); when they
/// differ, only validly signed ones compete, so a node cannot win with a forged higher counter.
fn newest_of(records: Vec<Record>, address: &ScratchpadAddress) -> Option<Scratchpad> {
    let pads: Vec<Scratchpad> = records
        .iter()
        .filter_map(|r| ant_protocol::storage::try_deserialize_record::<Scratchpad>(r).ok())
        .filter(|p| p.address() == address)
        .collect();
    let first = pads.first()?;
    if pads.iter().all(|p| p == first) {
        return pads.into_iter().next();
    }
    pads.into_iter()
        .filter(crate::seal::signature_ok)
        .max_by_key(|p| p.counter())
}

/// How many of a pad's closest nodes [`NetworkStore::ask_closest`] asks (as autonomi's own
/// fallback does): the close group that stores it and the nodes replication may have reached.
const CLOSEST_ASKED: usize = 20;

/// How long the nodes asked directly for a pad have to answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the other nodes asked have to answer once one has returned the pad: a node that
/// is up answers within milliseconds, one that is gone never does.
const ASK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn permanent(what: impl std::fmt::Display) -> StoreError {
    StoreError::Permanent(what.to_string())
}

impl NetworkStore {
    /// The pad, found by one DHT query that ends once `quorum` nodes of its close group have
    /// returned the same version, or when the query does. Fewer than that (nodes of the group
    /// gone) is no failure here, where autonomi's own get would ask again and again and give
    /// up: the newest version the nodes that answered returned is taken. With no such node,
    /// each of the closest nodes is asked directly; then "not found", or "not found yet" if
    /// the network says the pad exists.
    async fn find(&self, owner: &PublicKey, quorum: Quorum) -> Result<Scratchpad, StoreError> {
        let address = ScratchpadAddress::new(*owner);
        let at = NetworkAddress::from(address);
        let records = match self.client.network().get_record(at, quorum).await {
            Ok(Some(record)) => vec![record],
            Err(NetworkError::GetRecordQuorumFailed { holders, .. }) => {
                tracing::debug!(
                    pad = %short(owner),
                    answered = holders.len(),
                    ?quorum,
                    "fewer nodes than asked for returned the pad: the newest they hold"
                );
                holders.into_values().collect()
            }
            Err(NetworkError::SplitRecord(versions)) => versions.into_values().collect(),
            _ => Vec::new(),
        };
        if let Some(pad) = newest_of(records, &address) {
            return Ok(pad);
        }
        let asked = self.ask_closest(&address).await;
        let result = asked.and_then(|r| newest_of(r, &address).ok_or(StoreError::NotFound));
        if result == Err(StoreError::NotFound) && self.exists(owner).await == Ok(true) {
            // A get answers "no record" when its query reached no node holding the pad (a young
            // network, a pad written moments ago, peers churning); the existence check asks the
            // closest nodes directly. A pad some node holds is there to be read on a retry.
            return Err(StoreError::Transient(
                "the pad exists but no node returned it yet".into(),
            ));
        }
        result
    }

    /// [`find`](Self::find), counted and logged.
    async fn counted_get(
        &self,
        owner: &PublicKey,
        quorum: Quorum,
    ) -> Result<Scratchpad, StoreError> {
        let started = Instant::now();
        let result = self.find(owner, quorum).await;
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(pad) => {
                tracing::trace!(pad = %short(owner), counter = pad.counter(), ?quorum, elapsed = ?started.elapsed(), "got pad")
            }
            Err(e) => {
                tracing::debug!(pad = %short(owner), error = %e, ?quorum, elapsed = ?started.elapsed(), "get failed")
            }
        }
        result
    }

    /// The versions the pad's closest nodes hold, each node asked directly (the fallback of
    /// autonomi's own get wants 20 nodes, more than a small or degraded network has). Nodes
    /// that are gone never answer: once one node has returned the pad, the others have
    /// [`ASK_GRACE`] more, and none more than [`ASK_TIMEOUT`] in all. An error if no node was
    /// found to ask: that says nothing of whether the pad exists.
    async fn ask_closest(&self, address: &ScratchpadAddress) -> Result<Vec<Record>, StoreError> {
        let started = Instant::now();
        let at = NetworkAddress::from(*address);
        let network = self.client.network();
        let peers = match network
            .get_closest_peers_kad_only(at.clone(), Some(CLOSEST_ASKED))
            .await
        {
            Ok(peers) | Err(NetworkError::InsufficientPeers { peers, .. }) => peers,
            Err(NetworkError::IncompatibleNetworkProtocol) => {
                return Err(permanent(NetworkError::IncompatibleNetworkProtocol))
            }
            Err(e) => return Err(StoreError::Transient(e.to_string())),
        };
        if peers.is_empty() {
            return Err(StoreError::Transient(
                "no node found to ask for the pad".into(),
            ));
        }
        let (asked, found_peers) = (peers.len(), started.elapsed());
        let mut asks: futures::stream::FuturesUnordered<_> = peers
            .into_iter()
            .map(|peer| network.get_record_from_peer(at.clone(), peer))
            .collect();
        let mut until = tokio::time::Instant::now() + ASK_TIMEOUT;
        let mut records = Vec::new();
        while let Ok(Some(answer)) = tokio::time::timeout_at(until, asks.next()).await {
            if let Ok(Some(record)) = answer {
                if records.is_empty() {
                    until = until.min(tokio::time::Instant::now() + ASK_GRACE);
                }
                records.push(record);
            }
        }
        tracing::debug!(
            pad = %short(address.owner()),
            asked,
            held = records.len(),
            ?found_peers,
            elapsed = ?started.elapsed(),
            "asked the closest nodes"
        );
        Ok(records)
    }

    /// Joins the network and loads the wallet.
    pub async fn connect(config: NetworkConfig) -> Result<Self, StoreError> {
        let started = Instant::now();
        let private_key = load_private_key(&config.wallet)?;

        let mut bootstrap = match config.network {
            NetworkKind::Local => BootstrapConfig::new(true),
            NetworkKind::Testnet | NetworkKind::Main => BootstrapConfig::new(false),
        };
        bootstrap.initial_peers = config.peers.clone();
        if let Some(dir) = &config.bootstrap_cache_dir {
            bootstrap.cache_dir = dir.clone();
        }
        if config.network == NetworkKind::Testnet
            && config.peers.is_empty()
            && std::env::var_os("ANT_PEERS").is_none()
        {
            return Err(permanent(
                "the testnet needs peers: set ANT_PEERS or configure them",
            ));
        }
        let evm_network = match config.network {
            NetworkKind::Local => autonomi::Network::new(true).map_err(permanent)?,
            NetworkKind::Testnet => autonomi::Network::new(false).map_err(|e| {
                permanent(format!(
                    "the testnet's EVM network must be set in the environment (EVM_NETWORK, or \
                     RPC_URL, PAYMENT_TOKEN_ADDRESS and DATA_PAYMENTS_ADDRESS): {e}"
                ))
            })?,
            NetworkKind::Main => autonomi::Network::ArbitrumOne,
        };
        let client_config = ClientConfig {
            bootstrap_config: bootstrap,
            evm_network: evm_network.clone(),
            network_id: config.network_id,
            strategy: config.strategy(),
        };
        let client = Client::init_with_config(client_config)
            .await
            .map_err(|e| StoreError::Transient(format!("cannot join the network: {e}")))?;

        let wallet = match private_key {
            Some(key) => Some(
                Wallet::new_from_private_key(evm_network, key.trim())
                    .map_err(|e| permanent(format!("invalid wallet key: {e}")))?,
            ),
            None => None,
        };
        tracing::info!(
            network = %config.network,
            evm = %client.evm_network(),
            wallet = ?wallet.as_ref().map(|w| w.address()),
            elapsed = ?started.elapsed(),
            "joined the Autonomi network"
        );
        Ok(NetworkStore {
            client,
            payer: wallet.map(Payer::new),
            network: config.network,
            stats: NetworkStats::default(),
            total_cost: Mutex::new(AttoTokens::zero()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn network(&self) -> NetworkKind {
        self.network
    }

    pub fn stats(&self) -> &NetworkStats {
        &self.stats
    }

    /// What creating pads has cost so far.
    pub fn total_cost(&self) -> AttoTokens {
        *self.total_cost.lock().unwrap()
    }

    /// The wallet's token balance (atto), for a start-up check and logs.
    pub async fn wallet_balance(&self) -> Result<AttoTokens, StoreError> {
        let wallet = self
            .payer
            .as_ref()
            .ok_or_else(|| permanent("no wallet"))?
            .wallet();
        let balance = wallet
            .balance_of_tokens()
            .await
            .map_err(|e| StoreError::Transient(format!("cannot read the wallet balance: {e}")))?;
        Ok(AttoTokens::from_atto(balance))
    }

    /// Quotes for storing `pad`, then payment with the other creates under way: the proof of
    /// payment to put it with, empty if the network says it is paid for already.
    async fn pay_for(&self, payer: &Payer, pad: &Scratchpad) -> Result<Receipt, StoreError> {
        let address = pad.address().xorname();
        let quotes = self
            .client
            .get_store_quotes(
                DataTypes::Scratchpad,
                std::iter::once((address, pad.size())),
            )
            .await
            .map_err(|e| StoreError::Transient(format!("cannot get quotes: {e}")))?;
        if quotes.is_empty() {
            return Ok(Receipt::new());
        }
        payer.pay(quotes).await?;
        payer
            .take_receipt(&address)
            .ok_or_else(|| StoreError::Transient("the payment left no proof".into()))
    }

    /// Payments made for new pads (EVM transactions): several pads created together share one.
    pub fn payments(&self) -> u64 {
        self.payer.as_ref().map_or(0, Payer::payments)
    }

    fn add_cost(&self, cost: AttoTokens) {
        let mut total = self.total_cost.lock().unwrap();
        *total = total.checked_add(cost).unwrap_or(*total);
        let atto = u64::try_from(cost.as_atto()).unwrap_or(u64::MAX);
        let _ = self
            .stats
            .cost_atto
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_add(atto))
            });
    }
}

fn load_private_key(source: &WalletSource) -> Result<Option<String>, StoreError> {
    match source {
        WalletSource::None => Ok(None),
        WalletSource::Key(key) => Ok(Some(key.expose().to_string())),
        WalletSource::Env(var) => match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(Some(key)),
            _ => Err(permanent(format!(
                "no wallet key: set the {var} environment variable to the EVM wallet's private key"
            ))),
        },
        WalletSource::File(path) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        tracing::warn!(
                            path = %path.display(),
                            "the wallet key file is readable by other users; chmod 600 it"
                        );
                    }
                }
            }
            let key = std::fs::read_to_string(path).map_err(|e| {
                permanent(format!(
                    "cannot read the wallet key file {}: {e}",
                    path.display()
                ))
            })?;
            if key.trim().is_empty() {
                return Err(permanent(format!(
                    "the wallet key file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(key))
        }
    }
}

/// What nodes said about a refused put.
#[derive(Debug, Default, PartialEq, Eq)]
struct Refusal {
    /// Highest stored counter reported by a node refusing an outdated counter.
    stale_stored: Option<u64>,
    /// Nodes that do not hold the pad and refused an unpaid write.
    unpaid: usize,
    other: usize,
    accepted: usize,
}

/// Reads the per-node errors the client folds into strings.
fn parse_refusal(ok: usize, errors: &[(impl std::fmt::Debug, String)]) -> Refusal {
    let mut refusal = Refusal {
        accepted: ok,
        ..Default::default()
    };
    for (_, error) in errors {
        if let Some(stored) = parse_outdated(error) {
            refusal.stale_stored = Some(refusal.stale_stored.map_or(stored, |s| s.max(stored)));
        } else if error.contains("NoPayment") {
            refusal.unpaid += 1;
        } else {
            refusal.other += 1;
        }
    }
    refusal
}

/// The stored counter from "Outdated record rejected: with counter C, expected any above S".
fn parse_outdated(error: &str) -> Option<u64> {
    let at = error.find("expected any above ")? + "expected any above ".len();
    let digits: String = error[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    Update,
}

/// Maps a failed put of `offered` (a counter) to a store error.
fn map_put_error(op: Op, offered: u64, network_error: &NetworkError) -> StoreError {
    let refusal = match network_error {
        NetworkError::OutdatedRecordRejected { expected, .. } => Refusal {
            stale_stored: Some(*expected),
            ..Default::default()
        },
        NetworkError::PutRecordTooManyPeerFailed(ok, errors) => parse_refusal(ok.len(), errors),
        NetworkError::IncompatibleNetworkProtocol => {
            return permanent(network_error);
        }
        other => return StoreError::Transient(other.to_string()),
    };
    match (op, refusal) {
        (
            Op::Create,
            Refusal {
                stale_stored: Some(_),
                ..
            },
        ) => StoreError::AlreadyExists,
        (
            Op::Update,
            Refusal {
                stale_stored: Some(stored),
                ..
            },
        ) => StoreError::StaleCounter { stored, offered },
        // Every node that answered said it holds no such pad.
        (
            Op::Update,
            Refusal {
                unpaid,
                other: 0,
                accepted: 0,
                ..
            },
        ) if unpaid > 0 => StoreError::NotFound,
        _ => StoreError::Transient(network_error.to_string()),
    }
}

fn map_error(op: Option<Op>, offered: u64, e: ScratchpadError) -> StoreError {
    match e {
        ScratchpadError::NotFound(_) | ScratchpadError::CannotUpdateNewScratchpad => {
            StoreError::NotFound
        }
        ScratchpadError::ScratchpadAlreadyExists(_) => StoreError::AlreadyExists,
        ScratchpadError::ScratchpadTooBig(size) => StoreError::TooBig(size),
        ScratchpadError::BadSignature => StoreError::Corrupt("bad signature".into()),
        ScratchpadError::Corrupt(_) => {
            StoreError::Corrupt("the network holds a record that is not a valid scratchpad".into())
        }
        // Several versions at the same highest counter (writers raced): no version can be
        // chosen here. Writing a higher counter heals it.
        ScratchpadError::Fork(versions) => StoreError::Corrupt(format!(
            "forked pad: {} different versions at counter {}",
            versions.len(),
            versions.iter().map(|p| p.counter()).max().unwrap_or(0)
        )),
        ScratchpadError::Serialization => permanent("cannot serialize the scratchpad"),
        ScratchpadError::GetError(e) => StoreError::Transient(e),
        ScratchpadError::PutError(PutError::Network { network_error, .. }) => {
            map_put_error(op.unwrap_or(Op::Update), offered, &network_error)
        }
        ScratchpadError::PutError(PutError::Wallet(e)) => permanent(format!("wallet: {e}")),
        ScratchpadError::PutError(e) => StoreError::Transient(e.to_string()),
        ScratchpadError::Pay(e) => map_pay_error(e),
    }
}

fn map_pay_error(e: autonomi::client::payment::PayError) -> StoreError {
    use autonomi::client::payment::PayError;
    match e {
        PayError::EvmWalletNetworkMismatch => permanent(e),
        PayError::EvmWalletError(e) => map_wallet_error(e),
        // Too few quotes and the like: worth another try.
        other => StoreError::Transient(format!("payment failed: {other}")),
    }
}

/// A failed payment: permanent when the wallet cannot pay, else (RPC failures, contract
/// calls) worth another try.
pub(super) fn map_wallet_error(e: evmlib::wallet::Error) -> StoreError {
    use evmlib::wallet::Error as WalletError;
    match e {
        WalletError::InsufficientTokensForQuotes(..) | WalletError::PrivateKeyInvalid => {
            permanent(format!("payment failed: {e}"))
        }
        other => StoreError::Transient(format!("payment failed: {other}")),
    }
}

fn short(owner: &PublicKey) -> String {
    owner.to_hex()[..12].to_string()
}

#[async_trait]
impl PadStore for NetworkStore {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        let pad = super::check_acceptable_off_thread(pad).await?;
        let Some(payer) = &self.payer else {
            return Err(permanent("cannot create pads without a wallet"));
        };
        let address = *pad.address();
        let counter = pad.counter();
        let started = Instant::now();
        let (receipt, reused) = match payer.take_receipt(&address.xorname()) {
            Some(receipt) => (receipt, true),
            None => (self.pay_for(payer, &pad).await?, false),
        };
        let paid = started.elapsed();
        match self
            .client
            .scratchpad_put(pad, PaymentOption::Receipt(receipt.clone()))
            .await
        {
            Ok((cost, _)) => {
                if reused || cost.is_zero() {
                    self.stats
                        .creates_without_payment
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    self.add_cost(cost);
                }
                let n = self.stats.pads_created.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(
                    pad = %short(address.owner()),
                    %cost,
                    reused_receipt = reused,
                    pads_created = n,
                    total_cost = %self.total_cost(),
                    ?paid,
                    elapsed = ?started.elapsed(),
                    "created pad"
                );
                Ok(())
            }
            Err(e) => {
                // Paid for and not stored: the next try of this pad uses the same payment.
                payer.keep_receipt(receipt);
                let mapped = map_error(Some(Op::Create), counter, e);
                tracing::debug!(pad = %short(address.owner()), error = %mapped, elapsed = ?started.elapsed(), "create failed");
                Err(mapped)
            }
        }
    }

    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        let pad = super::check_acceptable_off_thread(pad).await?;
        let owner = *pad.owner();
        let counter = pad.counter();
        let started = Instant::now();
        let result = self
            .client
            .scratchpad_put_update(pad)
            .await
            .map_err(|e| map_error(Some(Op::Update), counter, e));
        match &result {
            Ok(()) => {
                self.stats.updates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pad = %short(&owner), counter, elapsed = ?started.elapsed(), "updated pad");
            }
            Err(e) => {
                tracing::debug!(pad = %short(&owner), counter, error = %e, elapsed = ?started.elapsed(), "update failed")
            }
        }
        result
    }

    /// The first version a node returns: at once, however many of the pad's close group are
    /// gone. It may be older than the newest (a node that was away); readers that know the
    /// version to expect check it and ask [`get_newest`](PadStore::get_newest) when it is.
    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.counted_get(owner, Quorum::One).await
    }

    /// The newest version the whole close group holds (the nodes that answer, if some are
    /// gone).
    async fn get_newest(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.counted_get(owner, Quorum::All).await
    }

    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.client
            .scratchpad_check_existence(&ScratchpadAddress::new(*owner))
            .await
            .map_err(|e| map_error(None, 0, e))
    }
    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ant_protocol::storage::{try_serialize_record, DataTypes as RecordTypes, RecordKind};
    use autonomi::networking::PeerId;
    use autonomi::{Bytes, SecretKey};

    fn record_of(pad: &Scratchpad) -> Record {
        let kind = RecordKind::DataOnly(RecordTypes::Scratchpad);
        Record {
            key: NetworkAddress::from(*pad.address()).to_record_key(),
            value: try_serialize_record(pad, kind).unwrap().to_vec(),
            publisher: None,
            expires: None,
        }
    }

    #[test]
    fn the_newest_signed_version_the_answering_nodes_hold_is_read() {
        let sk = SecretKey::random();
        let address = ScratchpadAddress::new(sk.public_key());
        let v1 = Scratchpad::new(&sk, 7, &Bytes::from_static(b"one"), 1);
        let v2 = Scratchpad::new(&sk, 7, &Bytes::from_static(b"two"), 2);
        // A node answering with a higher counter it could not sign.
        let forged = Scratchpad::new_with_signature(
            sk.public_key(),
            7,
            Bytes::from_static(b"forged"),
            9,
            v2.signature().clone(),
        );
        let newest =
            |pads: &[&Scratchpad]| newest_of(pads.iter().map(|p| record_of(p)).collect(), &address);
        assert_eq!(newest(&[&v1, &v2, &v1]), Some(v2.clone()));
        assert_eq!(newest(&[&v1, &forged]), Some(v1.clone()));
        assert_eq!(newest(&[&v2, &v2]), Some(v2.clone()));
        // Another pad's record, and no record at all: nothing to read here.
        let other = Scratchpad::new(&SecretKey::random(), 7, &Bytes::from_static(b"x"), 5);
        assert_eq!(newest(&[&other]), None);
        assert_eq!(newest(&[]), None);
        let garbage = Record {
            value: vec![1, 2, 3],
            ..record_of(&v1)
        };
        assert_eq!(newest_of(vec![garbage], &address), None);
    }

    fn too_many(ok: usize, errors: &[&str]) -> NetworkError {
        NetworkError::PutRecordTooManyPeerFailed(
            (0..ok).map(|_| PeerId::random()).collect(),
            errors
                .iter()
                .map(|e| (PeerId::random(), e.to_string()))
                .collect(),
        )
    }

    const OUTDATED: &str = "Outdated record rejected: with counter 3, expected any above 7";
    const UNPAID: &str = "Put record rejected: Error handling record put: NoPayment(PrettyPrintRecordKey { key: Key(b\"..\") })";

    #[test]
    fn outdated_counter_is_parsed() {
        assert_eq!(parse_outdated(OUTDATED), Some(7));
        assert_eq!(parse_outdated("something else"), None);
    }

    #[test]
    fn refused_puts_are_classified() {
        assert_eq!(
            map_put_error(Op::Update, 3, &too_many(0, &[OUTDATED, UNPAID, OUTDATED])),
            StoreError::StaleCounter {
                stored: 7,
                offered: 3
            }
        );
        assert_eq!(
            map_put_error(Op::Create, 0, &too_many(1, &[OUTDATED])),
            StoreError::AlreadyExists
        );
        assert_eq!(
            map_put_error(Op::Update, 1, &too_many(0, &[UNPAID, UNPAID])),
            StoreError::NotFound
        );
        assert!(map_put_error(Op::Update, 1, &too_many(1, &[UNPAID])).is_transient());
        assert!(map_put_error(Op::Update, 1, &too_many(0, &[UNPAID, "timeout"])).is_transient());
        assert!(map_put_error(Op::Create, 0, &NetworkError::GetClosestPeersTimeout).is_transient());
        assert_eq!(
            map_put_error(
                Op::Update,
                2,
                &NetworkError::OutdatedRecordRejected {
                    counter: 2,
                    expected: 2
                }
            ),
            StoreError::StaleCounter {
                stored: 2,
                offered: 2
            }
        );
    }

    #[test]
    fn network_names_parse() {
        assert_eq!("local".parse::<NetworkKind>(), Ok(NetworkKind::Local));
        assert_eq!("testnet".parse::<NetworkKind>(), Ok(NetworkKind::Testnet));
        assert_eq!("main".parse::<NetworkKind>(), Ok(NetworkKind::Main));
        assert!("mars".parse::<NetworkKind>().is_err());
    }

    #[test]
    fn peers_parse() {
        let peers = NetworkConfig::parse_peers(
            "/ip4/127.0.0.1/udp/4000/quic-v1, /ip4/127.0.0.1/udp/4001/quic-v1",
        )
        .unwrap();
        assert_eq!(peers.len(), 2);
        assert!(NetworkConfig::parse_peers("not an address").is_err());
    }

    #[test]
    fn wallet_key_sources() {
        assert_eq!(load_private_key(&WalletSource::None), Ok(None));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "  0xabc\n").unwrap();
        assert_eq!(
            load_private_key(&WalletSource::File(path)),
            Ok(Some("  0xabc\n".to_string()))
        );
        assert!(load_private_key(&WalletSource::File(dir.path().join("missing"))).is_err());
        assert!(
            load_private_key(&WalletSource::Env("MUTANT_TEST_SURELY_UNSET_VAR".into())).is_err()
        );
    }
}
