//! A wrapper that makes any store behave like a slower, less reliable one: latency per operation
//! and per byte, a concurrency limit, and injected faults (errors, timeouts, writes cut after they
//! landed, corrupted reads, a crash after N writes). Every decision is a hash of the seed, the
//! operation, the pad and how many operations that pad has seen, so a run is reproducible under a
//! seed whatever the interleaving. It also counts the operations that reach the store (`stats`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use autonomi::scratchpad::Scratchpad;
use autonomi::{Bytes, PublicKey};
use tokio::sync::Semaphore;

use super::{CountingStore, PadStore, StoreError, StoreStats};

const MIB: f64 = 1024.0 * 1024.0;

/// How often an operation held by a simulated outage looks whether it has ended.
const OUTAGE_POLL: Duration = Duration::from_millis(50);

/// Latency, bandwidth and fault settings. Parsed from `key=value,...`, e.g.
/// `get=20ms+200ms,put=60ms+700ms,concurrency=16,errors=0.01,seed=7` (the second time of a
/// pair is per MiB moved).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimConfig {
    pub get_latency: Duration,
    pub get_per_mib: Duration,
    pub put_latency: Duration,
    pub put_per_mib: Duration,
    /// Most operations in flight at once; 0 is unlimited.
    pub concurrency: usize,
    /// Probability an operation fails transiently before reaching the store.
    pub error_rate: f64,
    /// Probability an operation hangs for `timeout` and then reports a timeout.
    pub timeout_rate: f64,
    pub timeout: Duration,
    /// Probability a write lands but is reported as failed.
    pub cut_rate: f64,
    /// Probability a read returns a pad with one ciphertext byte flipped.
    pub corrupt_rate: f64,
    /// After this many writes, every operation fails (a simulated crash); the write at the
    /// crash point lands or not, by the seed.
    pub crash_after_writes: Option<u64>,
    /// While this file exists, every operation waits (a network that is gone without a word:
    /// tests create and remove it to start and end an outage).
    pub outage_while: Option<std::path::PathBuf>,
    pub seed: u64,
}

impl SimConfig {
    /// The local Autonomi network as measured (see docs/benchmarks.md).
    pub fn local_network() -> Self {
        SimConfig {
            get_latency: Duration::from_millis(20),
            get_per_mib: Duration::from_millis(50),
            put_latency: Duration::from_millis(60),
            put_per_mib: Duration::from_millis(175),
            concurrency: 32,
            ..Default::default()
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let value: f64 = num.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        _ => return Err(format!("bad duration unit in '{s}' (use us, ms or s)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_pair(s: &str) -> Result<(Duration, Duration), String> {
    match s.split_once('+') {
        Some((base, per_mib)) => Ok((parse_duration(base)?, parse_duration(per_mib)?)),
        None => Ok((parse_duration(s)?, Duration::ZERO)),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{s}' is not a probability between 0 and 1")),
    }
}

impl FromStr for SimConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut cfg = if s.split(',').any(|p| p.trim() == "local-network") {
            SimConfig::local_network()
        } else {
            SimConfig::default()
        };
        cfg.timeout = Duration::from_secs(1);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "local-network" {
                continue;
            }
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            match key {
                "get" => (cfg.get_latency, cfg.get_per_mib) = parse_pair(value)?,
                "put" => (cfg.put_latency, cfg.put_per_mib) = parse_pair(value)?,
                "concurrency" => {
                    cfg.concurrency = value
                        .parse()
                        .map_err(|_| format!("bad concurrency '{value}'"))?
                }
                "errors" => cfg.error_rate = parse_rate(value)?,
                "timeouts" => cfg.timeout_rate = parse_rate(value)?,
                "timeout" => cfg.timeout = parse_duration(value)?,
                "cuts" => cfg.cut_rate = parse_rate(value)?,
                "corrupt" => cfg.corrupt_rate = parse_rate(value)?,
                "crash-after" => {
                    cfg.crash_after_writes =
                        Some(value.parse().map_err(|_| format!("bad count '{value}'"))?)
                }
                "outage-while" => cfg.outage_while = Some(value.into()),
                "seed" => cfg.seed = value.parse().map_err(|_| format!("bad seed '{value}'"))?,
                _ => return Err(format!("unknown store simulation setting '{key}'")),
            }
        }
        Ok(cfg)
    }
}

pub struct SimStore<S> {
    /// The counters sit under the simulation: they count what reached the store.
    inner: CountingStore<S>,
    cfg: SimConfig,
    limit: Option<Semaphore>,
    per_pad_ops: Mutex<HashMap<[u8; 48], u64>>,
    writes: AtomicU64,
    pub stats: Arc<StoreStats>,
}

#[derive(Clone, Copy)]
enum Op {
    Create = 1,
    Update = 2,
    Get = 3,
    Exists = 4,
}

enum Fate {
    Proceed,
    Fail(StoreError),
    Hang,
    /// Do it, then report failure.
    Cut,
    Corrupt,
}

impl<S: PadStore> SimStore<S> {
    pub fn new(inner: S, cfg: SimConfig) -> Self {
        let limit = (cfg.concurrency > 0).then(|| Semaphore::new(cfg.concurrency));
        let inner = CountingStore::new(inner);
        SimStore {
            stats: inner.stats(),
            inner,
            cfg,
            limit,
            per_pad_ops: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        self.inner.inner()
    }

    /// A number in [0, 1) fixed by the seed, the operation, the pad and its operation count.
    fn draw(&self, op: Op, owner: &PublicKey, salt: u64) -> f64 {
        let key = owner.to_bytes();
        let nth = {
            let mut ops = self.per_pad_ops.lock().unwrap();
            let n = ops.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        let mut bytes = Vec::with_capacity(80);
        bytes.extend_from_slice(&self.cfg.seed.to_le_bytes());
        bytes.push(op as u8);
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&nth.to_le_bytes());
        bytes.extend_from_slice(&salt.to_le_bytes());
        let hash = crate::codec::sha256(&bytes);
        u64::from_le_bytes(hash[..8].try_into().unwrap()) as f64 / (u64::MAX as f64 + 1.0)
    }

    fn fate(&self, op: Op, owner: &PublicKey) -> Fate {
        let is_write = matches!(op, Op::Create | Op::Update);
        if is_write {
            let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(limit) = self.cfg.crash_after_writes {
                if n == limit {
                    return if self.draw(op, owner, 9) < 0.5 {
                        Fate::Cut
                    } else {
                        Fate::Fail(crashed())
                    };
                }
            }
        }
        if self.crashed() {
            return Fate::Fail(crashed());
        }
        let x = self.draw(op, owner, 0);
        let mut edge = self.cfg.error_rate;
        if x < edge {
            return Fate::Fail(StoreError::Transient("injected error".into()));
        }
        edge += self.cfg.timeout_rate;
        if x < edge {
            return Fate::Hang;
        }
        edge += if is_write {
            self.cfg.cut_rate
        } else {
            self.cfg.corrupt_rate
        };
        if x < edge {
            return if is_write { Fate::Cut } else { Fate::Corrupt };
        }
        Fate::Proceed
    }

    fn crashed(&self) -> bool {
        matches!(self.cfg.crash_after_writes, Some(limit) if self.writes.load(Ordering::SeqCst) >= limit)
    }

    /// Waits out a simulated outage.
    async fn outage(&self) {
        if let Some(marker) = &self.cfg.outage_while {
            while marker.exists() {
                tokio::time::sleep(OUTAGE_POLL).await;
            }
        }
    }

    async fn delay(&self, base: Duration, per_mib: Duration, bytes: usize) {
        let total = base + per_mib.mul_f64(bytes as f64 / MIB);
        if !total.is_zero() {
            tokio::time::sleep(total).await;
        }
    }

    async fn write(&self, op: Op, pad: Scratchpad) -> Result<(), StoreError> {
        self.outage().await;
        let _permit = match &self.limit {
            Some(s) => Some(s.acquire().await.expect("semaphore never closed")),
            None => None,
        };
        let size = pad.payload_size();
        let fate = self.fate(op, pad.owner());
        self.delay(self.cfg.put_latency, self.cfg.put_per_mib, size)
            .await;
        let apply = || async {
            match op {
                Op::Create => self.inner.create(pad).await,
                _ => self.inner.update(pad).await,
            }
        };
        match fate {
            Fate::Proceed | Fate::Corrupt => apply().await,
            Fate::Fail(e) => Err(e),
            Fate::Hang => {
                tokio::time::sleep(self.cfg.timeout).await;
                Err(StoreError::Timeout)
            }
            Fate::Cut => {
                apply().await?;
                Err(if self.crashed() {
                    crashed()
                } else {
                    StoreError::Transient("connection cut after the write".into())
                })
            }
        }
    }
}

fn crashed() -> StoreError {
    StoreError::Permanent("simulated crash".into())
}

/// The same pad with one ciphertext byte flipped and the signature kept.
fn corrupted(pad: &Scratchpad) -> Scratchpad {
    let mut data = pad.encrypted_data().to_vec();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    Scratchpad::new_with_signature(
        *pad.owner(),
        pad.data_encoding(),
        Bytes::from(data),
        pad.counter(),
        pad.signature().clone(),
    )
}

#[async_trait]
impl<S: PadStore> PadStore for SimStore<S> {
    async fn create(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.write(Op::Create, pad).await
    }

    async fn update(&self, pad: Scratchpad) -> Result<(), StoreError> {
        self.write(Op::Update, pad).await
    }

    async fn get(&self, owner: &PublicKey) -> Result<Scratchpad, StoreError> {
        self.outage().await;
        let _permit = match &self.limit {
            Some(s) => Some(s.acquire().await.expect("semaphore never closed")),
            None => None,
        };
        let fate = self.fate(Op::Get, owner);
        match fate {
            Fate::Fail(e) => return Err(e),
            Fate::Hang => {
                tokio::time::sleep(self.cfg.timeout).await;
                return Err(StoreError::Timeout);
            }
            _ => {}
        }
        let pad = self.inner.get(owner).await?;
        self.delay(
            self.cfg.get_latency,
            self.cfg.get_per_mib,
            pad.payload_size(),
        )
        .await;
        Ok(match fate {
            Fate::Corrupt => corrupted(&pad),
            _ => pad,
        })
    }

    /// Parts come from the inner store with the faults of a get, and never over a simulated
    /// network, which serves whole pads only.
    async fn get_part(
        &self,
        owner: &PublicKey,
        range: std::ops::Range<usize>,
    ) -> Result<Option<Bytes>, StoreError> {
        if self.is_remote() {
            return Ok(None);
        }
        self.outage().await;
        match self.fate(Op::Get, owner) {
            Fate::Fail(e) => Err(e),
            Fate::Hang => {
                tokio::time::sleep(self.cfg.timeout).await;
                Err(StoreError::Timeout)
            }
            Fate::Corrupt => Ok(self.inner.get_part(owner, range).await?.map(|part| {
                let mut part = part.to_vec();
                let mid = part.len() / 2;
                if let Some(byte) = part.get_mut(mid) {
                    *byte ^= 0x01;
                }
                Bytes::from(part)
            })),
            _ => self.inner.get_part(owner, range).await,
        }
    }

    async fn exists(&self, owner: &PublicKey) -> Result<bool, StoreError> {
        self.outage().await;
        if let Fate::Fail(e) = self.fate(Op::Exists, owner) {
            return Err(e);
        }
        self.delay(self.cfg.get_latency, Duration::ZERO, 0).await;
        self.inner.exists(owner).await
    }
    /// A simulated network is one, as far as the mount can tell.
    fn is_remote(&self) -> bool {
        self.inner.is_remote() || !self.cfg.get_latency.is_zero() || !self.cfg.get_per_mib.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles_and_refuses_nonsense() {
        let cfg: SimConfig = "get=20ms+200ms,put=60ms+0.7s,concurrency=8,errors=0.1,seed=3"
            .parse()
            .unwrap();
        assert_eq!(cfg.get_latency, Duration::from_millis(20));
        assert_eq!(cfg.get_per_mib, Duration::from_millis(200));
        assert_eq!(cfg.put_per_mib, Duration::from_millis(700));
        assert_eq!(cfg.concurrency, 8);
        assert_eq!(cfg.error_rate, 0.1);
        assert_eq!(cfg.seed, 3);
        assert!("errors=2".parse::<SimConfig>().is_err());
        assert!("bogus=1".parse::<SimConfig>().is_err());
        assert!("get=fast".parse::<SimConfig>().is_err());
        let net: SimConfig = "local-network,seed=1".parse().unwrap();
        assert_eq!(net.get_latency, Duration::from_millis(20));
        let out: SimConfig = "outage-while=/tmp/gone".parse().unwrap();
        assert_eq!(out.outage_while, Some("/tmp/gone".into()));
    }
}
