//! `mutant-mount MOUNTPOINT`: mount a folder whose files live encrypted in scratchpads; the
//! subcommands manage what is around a mount (see `cli/`).

mod cli;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cli::args::{Cli, Command, MountArgs, StoreArgs, UploadMode};
use mutant_mount::key_seal::{self, PassphraseSource};
use mutant_mount::mount::{default_data_dir, run, MountConfig, StoreChoice};
use mutant_mount::store::network::{
    take_env_wallet_key, NetworkConfig, NetworkKind, WalletKey, WalletSource, SECRET_KEY_ENV,
};
use mutant_mount::store::tier::TierOptions;
use zeroize::Zeroizing;

/// Set on the background mount process, whose parent writes the wallet key to its stdin (before
/// any passphrase): the key never travels in an environment, which other processes of the user
/// can read.
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

/// The network settings from the arguments and the environment.
fn network_config(
    args: &MountArgs,
    kind: NetworkKind,
    wallet: Option<WalletKey>,
) -> Result<NetworkConfig, String> {
    let mut net = NetworkConfig::new(kind);
    // The autonomi client reads ANT_PEERS itself; check it here for a clear message.
    if let Ok(peers) = std::env::var("ANT_PEERS") {
        NetworkConfig::parse_peers(&peers).map_err(|e| format!("ANT_PEERS: {e}"))?;
    }
    net.wallet = match &args.store.wallet_key_file {
        Some(file) => WalletSource::File(file.clone()),
        None if args.estimate.is_some() => WalletSource::None,
        None => match wallet {
            Some(key) => WalletSource::Key(key),
            None => WalletSource::Env(SECRET_KEY_ENV.to_string()),
        },
    };
    Ok(net)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The autonomi client's driver logs late answers to finished queries as errors: noise.
        // fuser's session warns "Failed to umount filesystem" after every unmount made from
        // outside (fusermount -u, umount): its check whether the mount is still there reads
        // the device's state backwards, and the second unmount it then tries fails. Its
        // errors still show.
        tracing_subscriber::EnvFilter::new(format!(
            "mutant_mount={level},warn,autonomi::networking::driver=off,fuser::session=error"
        ))
    });
    // The log may sit on the disk the store fills (a background mount logs into its data
    // dir): a line that cannot be written is dropped. By default the subscriber reports that
    // with `eprintln!`, which panics when stderr cannot be written either, and a panic in a
    // FUSE handler ends the mount.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn config(args: &MountArgs, wallet: Option<WalletKey>) -> Result<MountConfig, String> {
    let data_dir = args.store.data_dir.clone().unwrap_or_else(default_data_dir);
    let store = match args.store.network {
        None => StoreChoice::Local,
        Some(kind) => StoreChoice::Network(network_config(args, kind, wallet)?),
    };
    if args.timeout.is_zero() {
        return Err("--timeout must be more than zero (e.g. 30s)".into());
    }
    if args.upload.is_some() && args.store.network.is_none() && args.simulate.is_none() {
        return Err(
            "--upload is for a store over a network: give --network (or --simulate)".into(),
        );
    }
    let mut cfg = MountConfig {
        mountpoint: args.mountpoint().cloned().unwrap_or_default(),
        store,
        store_dir: args
            .store
            .store_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("store")),
        key_file: args
            .store
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("master.key")),
        passphrase: args.store.passphrase.source(),
        memory_bytes: usize::try_from(args.memory).unwrap_or(usize::MAX),
        cache_bytes: args.cache_size << 20,
        write_buffer_bytes: (args.write_buffer.max(1)) << 20,
        timeout: args.timeout,
        unmount_wait: args.unmount_wait,
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
        tier: TierOptions {
            staged: match args.upload {
                Some(mode) => mode == UploadMode::Staged,
                None => args.store.network.is_some(),
            },
            dir: args.store.cache_dir.clone(),
            max_bytes: args.cache_max_size,
        },
    };
    for opt in args.options.iter().map(|o| o.trim()) {
        match opt {
            "allow_root" => cfg.allow_root = true,
            "nonempty" => cfg.allow_non_empty = true,
            _ => {}
        }
    }
    Ok(cfg)
}

/// Creates the master key on the first mount, and says on the terminal, before the mount goes
/// to the background, where it is and that it must be backed up. Returns whether it was created.
fn create_key_if_missing(cfg: &MountConfig) -> Result<bool, String> {
    if cfg.key_file.exists() {
        return Ok(false);
    }
    mutant_mount::mount::check_new_key_allowed(cfg).map_err(|e| e.to_string())?;
    let (key, created) =
        mutant_mount::keys::MasterKey::load_or_create(&cfg.key_file).map_err(|e| e.to_string())?;
    if created {
        // Not `eprintln!`, which panics when stderr cannot be written (a full disk).
        let _ = writeln!(
            std::io::stderr(),
            "mutant-mount: created a new master key in {} (fingerprint {}).\n\
             It is the only way to your files: back it up now, e.g. print it with\n  \
             mutant-mount key export --key-file {}\n\
             and keep the copy somewhere safe and offline.",
            cfg.key_file.display(),
            mutant_mount::key_backup::fingerprint(&key),
            cfg.key_file.display()
        );
    }
    Ok(created)
}

/// For a sealed key file, the passphrase, asked for on the terminal and checked.
fn ask_passphrase_if_sealed(
    key_file: &std::path::Path,
) -> Result<Option<Zeroizing<String>>, String> {
    let Ok(text) = std::fs::read_to_string(key_file).map(Zeroizing::new) else {
        return Ok(None);
    };
    if !key_seal::is_sealed(&text) {
        return Ok(None);
    }
    let pass = PassphraseSource::Prompt.read(&format!("the key file {}", key_file.display()))?;
    key_seal::unseal(&text, pass.as_bytes()).map_err(|e| e.to_string())?;
    Ok(Some(pass))
}

/// Runs the mount as a child in the foreground, and returns once it is mounted (or has failed).
/// `args` are the arguments the child gets, before `--foreground`; `passphrase`, if any, is
/// written to its standard input, after the wallet key if there is one.
fn daemonize(
    args: &[String],
    cfg: &MountConfig,
    passphrase: Option<&str>,
    wallet: Option<&WalletKey>,
) -> Result<(), String> {
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
        .args(args)
        .arg("--foreground")
        .stdin(match passphrase.is_some() || wallet.is_some() {
            true => std::process::Stdio::piped(),
            false => std::process::Stdio::null(),
        })
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    if wallet.is_some() {
        command.env(WALLET_ON_STDIN, "1");
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the mount process: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        if let Some(key) = wallet {
            stdin
                .write_all(format!("{}\n", key.expose()).as_bytes())
                .map_err(|e| format!("cannot hand the wallet key to the mount process: {e}"))?;
        }
        if let Some(pass) = passphrase {
            stdin
                .write_all(format!("{pass}\n").as_bytes())
                .map_err(|e| format!("cannot hand the passphrase to the mount process: {e}"))?;
        }
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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Fsck {
            store,
            repair,
            log_level,
        }) => offline(store, &log_level, |cfg| cli::offline::fsck(cfg, repair)),
        Some(Command::Gc {
            store,
            free,
            log_level,
        }) => offline(store, &log_level, |cfg| cli::offline::gc(cfg, free)),
        Some(command) => cli::run(command),
        None => mount(cli.mount),
    }
}

/// `fsck` and `gc`: the store opened with the mount's own configuration (every mount option
/// at its default), so they see exactly what a mount would serve.
fn offline(
    store: StoreArgs,
    log_level: &str,
    command: impl FnOnce(&MountConfig) -> ExitCode,
) -> ExitCode {
    init_logging(log_level);
    let wallet = take_wallet_key();
    // Clap's defaults for every mount option; the mount point is not used.
    let mut args = Cli::parse_from(["mutant-mount", "unused"]).mount;
    args.paths.clear();
    args.store = store;
    match config(&args, wallet) {
        Ok(cfg) => command(&cfg),
        Err(e) => {
            eprintln!("mutant-mount: {e}");
            ExitCode::from(cli::offline::EXIT_CANNOT_CHECK)
        }
    }
}

fn mount(mut args: MountArgs) -> ExitCode {
    bound_allocator();
    // Everything this process creates (key, store, journal, caches, logs) is the user's alone,
    // whatever umask it was started with; files made through the mount get the modes their
    // requests carry.
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
    let raw: Vec<String> = std::env::args().collect();
    if let Err(e) = cli::mount_options::apply(&mut args) {
        eprintln!("mutant-mount: {e}");
        return ExitCode::from(2);
    }
    let wallet = take_wallet_key();
    let mut cfg = match config(&args, wallet.clone()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("mutant-mount: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(bytes) = args.estimate {
        init_logging(&args.log_level);
        let StoreChoice::Network(net) = cfg.store else {
            eprintln!("mutant-mount: an estimate needs a network (network=NETWORK)");
            return ExitCode::from(2);
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
    if let Err(e) = mutant_mount::mount::preflight(&cfg) {
        eprintln!("mutant-mount: {e}");
        return ExitCode::FAILURE;
    }
    let mut child_args = raw[1..].to_vec();
    match create_key_if_missing(&cfg) {
        Ok(false) => {}
        Ok(true) => {
            // A new key has no index anywhere yet: start an empty file system.
            cfg.create_index = true;
            child_args.push("--new-index".into());
        }
        Err(e) => {
            eprintln!("mutant-mount: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The background process has no terminal: a passphrase asked for here is handed to it.
    let mut handoff = None;
    if !args.foreground && matches!(cfg.passphrase, PassphraseSource::Prompt) {
        match ask_passphrase_if_sealed(&cfg.key_file) {
            Ok(None) => {}
            Ok(Some(pass)) => {
                child_args.push("--passphrase-stdin".into());
                handoff = Some(pass);
            }
            Err(e) => {
                eprintln!("mutant-mount: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.foreground {
        let passphrase = handoff.as_deref().map(|p| p.as_str());
        return match daemonize(&child_args, &cfg, passphrase, wallet.as_ref()) {
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
