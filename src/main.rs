//! `mutant-mount MOUNTPOINT`: mount a folder whose files live encrypted in scratchpads.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mutant_mount::mount::{default_data_dir, run, MountConfig, StoreChoice};
use mutant_mount::store::network::{
    take_env_wallet_key, NetworkConfig, NetworkKind, WalletKey, WalletSource, SECRET_KEY_ENV,
};
use mutant_mount::store::SimConfig;

/// Mount a folder whose files are stored encrypted in Autonomi scratchpads.
///
/// With no --network, pads live in a local store on this disk (the same encrypted, signed bytes
/// the network would hold). With --network, they live on the Autonomi network: creating a pad is
/// paid once from an EVM wallet, updates are free. The first run creates a master key: keep a
/// copy of it, it is the only way to your files.
#[derive(Parser, Debug)]
#[command(version, about, long_about, after_help = EXAMPLES)]
struct Args {
    /// Empty directory to mount on
    #[arg(required_unless_present = "estimate")]
    mountpoint: Option<PathBuf>,

    /// Store the pads on the Autonomi network instead of this disk: "local" (a network on this
    /// machine, e.g. scripts/local-network.sh), "testnet" or "main" (the public network, paying
    /// on Arbitrum One). Peers come from ANT_PEERS (comma-separated multiaddrs; needed for
    /// local and testnet), the EVM network from EVM_NETWORK (e.g. local,
    /// arbitrum-sepolia-test). Creating a pad costs tokens from the wallet (see
    /// --wallet-key-file); updates are free
    #[arg(long, value_name = "NETWORK")]
    network: Option<NetworkKind>,

    /// File holding the EVM wallet's private key (hex; keep it mode 0600) that pays for new pads
    /// on the network [default: the SECRET_KEY environment variable]. The key is never taken
    /// as a command-line value, which every user could see in ps
    #[arg(long, value_name = "FILE", requires = "network")]
    wallet_key_file: Option<PathBuf>,

    /// Print what storing BYTES of file data on the network would cost (e.g. 500M, 2G), then
    /// exit; nothing is mounted or paid and no wallet is needed. Needs --network
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, requires = "network")]
    estimate: Option<u64>,

    /// Directory for the key and the local store [default: $XDG_DATA_HOME/mutant]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Directory of the local pad store [default: DATA_DIR/store]
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,

    /// Master key file (hex BLS secret key; created with mode 0600 if missing) [default: DATA_DIR/master.key]
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,

    /// Memory for cached file chunks, in MiB
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    cache_size: usize,

    /// Memory one open file may use for unsaved changes, uploads in flight included, in MiB
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    write_buffer: usize,

    /// Stay in the foreground (logs go to stderr); otherwise run in the background once mounted
    #[arg(short, long)]
    foreground: bool,

    /// Mount read-only
    #[arg(long)]
    read_only: bool,

    /// Let other users access the mount (root may always do this; others need user_allow_other in /etc/fuse.conf)
    #[arg(long)]
    allow_other: bool,

    /// Mount options, mount(8) style: ro, rw, allow_other, allow_root, nonempty, default_permissions
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    options: Vec<String>,

    /// Start an empty file system when the store has no index for this key
    #[arg(long)]
    new_index: bool,

    /// Chunk size in bytes for a new file system (4096 up to 4190208, a multiple of 4096)
    #[arg(long, value_name = "BYTES", value_parser = parse_chunk_size)]
    chunk_size: Option<u32>,

    /// Make the store slow and unreliable, for tests and benchmarks, e.g.
    /// "get=20ms+200ms,put=60ms+700ms,concurrency=16,errors=0.01,seed=7" ("local-network" is a preset)
    #[arg(long, value_name = "PROFILE")]
    simulate: Option<SimConfig>,

    /// FUSE worker threads
    #[arg(long, default_value_t = 4)]
    threads: usize,

    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides)
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Replay what can be read of a journal that has a damaged change in the middle (the
    /// damaged part is dropped); without it such a journal is refused and left untouched
    #[arg(long)]
    discard_damaged_journal: bool,

    /// Mount even if the store serves an older index than this machine has seen (a restored
    /// or stale copy): newer changes are then lost for good at the next commit
    #[arg(long)]
    accept_rollback: bool,
}

/// Set on the background mount process, whose parent writes the wallet key to its stdin: the
/// key never travels in an environment, which other processes of the user can read.
const WALLET_ON_STDIN: &str = "MUTANT_MOUNT_WALLET_ON_STDIN";

/// The wallet key given in `SECRET_KEY` (or by the parent of a background mount), taken out of
/// the environment. Runs before any thread starts.
fn take_wallet_key() -> Option<WalletKey> {
    if std::env::var_os(WALLET_ON_STDIN).is_some() {
        std::env::remove_var(WALLET_ON_STDIN);
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok()?;
        let key = WalletKey::new(line.trim().to_string());
        zeroize::Zeroize::zeroize(&mut line);
        return Some(key);
    }
    take_env_wallet_key()
}

const EXAMPLES: &str = "Examples:
  mutant-mount ~/mnt                 mount in the background, local store
  mutant-mount -f ~/mnt              stay in the foreground (Ctrl-C unmounts)
  fusermount3 -u ~/mnt               unmount (pending changes are committed first)

  On the Autonomi network (the wallet pays for new pads; the log reports the cost at unmount):
  SECRET_KEY=0x... mutant-mount --network main ~/mnt
  mutant-mount --network main --estimate 2G       price of 2 GiB before paying anything
  On a local test network (scripts/local-network.sh start):
  . ~/.cache/mutant-mount/localnet/env && mutant-mount --network local \\
      --wallet-key-file ~/.cache/mutant-mount/localnet/wallet.key ~/mnt";

/// A byte count, with an optional binary suffix: 1048576, 512K, 500M, 2G, 1T.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'B' => 0,
                _ => return Err(format!("unknown unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("not a byte count: {s:?} (e.g. 1048576, 500M, 2G)"))
}

/// The network settings from the arguments and the environment.
fn network_config(
    args: &Args,
    kind: NetworkKind,
    wallet: Option<WalletKey>,
) -> Result<NetworkConfig, String> {
    let mut net = NetworkConfig::new(kind);
    // The autonomi client reads ANT_PEERS itself; check it here for a clear message.
    if let Ok(peers) = std::env::var("ANT_PEERS") {
        NetworkConfig::parse_peers(&peers).map_err(|e| format!("ANT_PEERS: {e}"))?;
    }
    net.wallet = match &args.wallet_key_file {
        Some(file) => WalletSource::File(file.clone()),
        None if args.estimate.is_some() => WalletSource::None,
        None => match wallet {
            Some(key) => WalletSource::Key(key),
            None => WalletSource::Env(SECRET_KEY_ENV.to_string()),
        },
    };
    Ok(net)
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let max = mutant_mount::engine::DEFAULT_SCRATCHPAD_SIZE;
    match s.parse::<u32>() {
        Ok(n) if (4096..=max).contains(&n) && n.is_multiple_of(4096) => Ok(n),
        _ => Err(format!("must be a multiple of 4096 between 4096 and {max}")),
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The autonomi client's driver logs late answers to finished queries as errors: noise.
        tracing_subscriber::EnvFilter::new(format!(
            "mutant_mount={level},warn,autonomi::networking::driver=off"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn config(args: &Args, wallet: Option<WalletKey>) -> Result<MountConfig, String> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let store = match args.network {
        None => StoreChoice::Local,
        Some(kind) => StoreChoice::Network(network_config(args, kind, wallet)?),
    };
    let mut cfg = MountConfig {
        mountpoint: args.mountpoint.clone().unwrap_or_default(),
        store,
        store_dir: args
            .store_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("store")),
        key_file: args
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("master.key")),
        cache_bytes: args.cache_size << 20,
        write_buffer_bytes: (args.write_buffer.max(1)) << 20,
        read_only: args.read_only,
        allow_other: args.allow_other,
        allow_root: false,
        allow_non_empty: false,
        simulate: args.simulate.clone(),
        threads: args.threads,
        create_index: args.new_index,
        chunk_size: args.chunk_size,
        discard_damaged_journal: args.discard_damaged_journal,
        accept_rollback: args.accept_rollback,
    };
    for opt in args
        .options
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        match opt {
            "ro" => cfg.read_only = true,
            "rw" => cfg.read_only = false,
            "allow_other" => cfg.allow_other = true,
            "allow_root" => cfg.allow_root = true,
            "nonempty" => cfg.allow_non_empty = true,
            "default_permissions" | "noatime" | "nosuid" | "nodev" => {}
            other => return Err(format!("unknown mount option '{other}' (see --help)")),
        }
    }
    Ok(cfg)
}

/// Runs the mount as a child in the foreground, and returns once it is mounted (or has failed).
fn daemonize(args: &[String], cfg: &MountConfig, wallet: Option<&WalletKey>) -> Result<(), String> {
    let log_path = cfg
        .key_file
        .parent()
        .map(|d| d.join("mutant-mount.log"))
        .unwrap_or_else(|| PathBuf::from("/tmp/mutant-mount.log"));
    if let Some(dir) = log_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command
        .args(&args[1..])
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    if wallet.is_some() {
        command
            .env(WALLET_ON_STDIN, "1")
            .stdin(std::process::Stdio::piped());
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the mount process: {e}"))?;
    if let (Some(key), Some(mut stdin)) = (wallet, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(format!("{}\n", key.expose()).as_bytes())
            .map_err(|e| format!("cannot hand the wallet key to the mount process: {e}"))?;
    }
    let mountpoint = std::fs::canonicalize(&cfg.mountpoint).map_err(|e| e.to_string())?;
    // Joining the network may take a while (the mount gives up after 120 s).
    let limit = match cfg.store {
        StoreChoice::Local => Duration::from_secs(60),
        StoreChoice::Network(_) => Duration::from_secs(180),
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if is_mounted(&mountpoint) {
            println!(
                "mounted on {} (log: {})",
                mountpoint.display(),
                log_path.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!("mount failed ({status}): {last}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "not mounted after {} s; see {}",
        limit.as_secs(),
        log_path.display()
    ))
}

fn is_mounted(path: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let target = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m.replace("\\040", " ") == target)
}

/// Chunk buffers are megabytes each; glibc's adaptive mmap threshold would otherwise move
/// them into per-thread arenas that never shrink, and a long write would keep its peak memory.
fn bound_allocator() {
    // SAFETY: mallopt only tunes the allocator; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() -> ExitCode {
    bound_allocator();
    let wallet = take_wallet_key();
    let raw: Vec<String> = std::env::args().collect();
    let args = Args::parse();
    let cfg = match config(&args, wallet.clone()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("mutant-mount: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(bytes) = args.estimate {
        init_logging(&args.log_level);
        let StoreChoice::Network(net) = cfg.store else {
            unreachable!("clap requires --network with --estimate")
        };
        let chunk = args
            .chunk_size
            .unwrap_or(mutant_mount::engine::DEFAULT_SCRATCHPAD_SIZE);
        return match mutant_mount::mount::estimate(net, bytes, chunk) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mutant-mount: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.foreground {
        if let Err(e) = mutant_mount::mount::preflight(&cfg) {
            eprintln!("mutant-mount: {e}");
            return ExitCode::FAILURE;
        }
        return match daemonize(&raw, &cfg, wallet.as_ref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mutant-mount: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&args.log_level);
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mutant-mount: {e}");
            ExitCode::FAILURE
        }
    }
}
