//! The command line: `mutant-mount [OPTIONS] MOUNTPOINT` mounts (as it always has), and
//! subcommands manage what is around a mount.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mutant_mount::store::network::NetworkKind;
use mutant_mount::store::SimConfig;

/// Mount a folder whose files are stored encrypted in Autonomi scratchpads.
///
/// With no --network, pads live in a local store on this disk (the same encrypted, signed bytes
/// the network would hold). With --network, they live on the Autonomi network: creating a pad is
/// paid once from an EVM wallet, updates are free. The first run creates a master key: keep a
/// copy of it (`mutant-mount key export`), it is the only way to your files.
#[derive(Parser, Debug)]
#[command(
    name = "mutant-mount",
    version,
    about,
    long_about,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub mount: MountArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Back up, restore or identify the master key
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show what running mounts are doing: uncommitted changes, uploads, last commit, pads and
    /// tokens this session, cache, store errors (all mounts of yours without MOUNTPOINT)
    Status {
        mountpoint: Option<PathBuf>,
        /// Print JSON, for scripts and monitoring
        #[arg(long)]
        json: bool,
        /// Refresh every two seconds until interrupted
        #[arg(long)]
        watch: bool,
    },
    /// Commit everything pending on a mount now and wait for it; exits non-zero if that fails
    Sync { mountpoint: PathBuf },
    /// Print shell completions for bash, zsh, fish, elvish or powershell
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on standard output
    Man,
    /// Check a file system that is not mounted: read back every pad its index references and
    /// check its signature, owner, version and content, and list the files whose data is
    /// damaged. Exit status: 0 no damage, 1 damage found and set aside (--repair), 4 damage
    /// found and left in place, 8 the check could not run (no key, a mounted or unreadable
    /// store)
    Fsck {
        #[command(flatten)]
        store: StoreArgs,
        /// Set damaged files aside: each moves to lost+found/<UTC time>/ with its damaged
        /// bytes made zeros, beside a DAMAGE.txt saying which; no name answers EIO any more
        #[arg(long)]
        repair: bool,
        /// Log level for the check's own messages
        #[arg(long, default_value = "warn")]
        log_level: String,
    },
    /// Find the pads that writes cut short by a crash left behind (created, on the network
    /// paid for, and referenced by nothing), on a file system that is not mounted; with
    /// --free, return them to the free list, where new files reuse them. Stops, changing
    /// nothing, if the store cannot say whether a pad exists
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Return the pads found to the free list (without it, only report them)
        #[arg(long)]
        free: bool,
        /// Log level for gc's own messages
        #[arg(long, default_value = "warn")]
        log_level: String,
    },
}

/// Where the key is: the same defaults as the mount's.
#[derive(Args, Debug, Clone)]
pub struct KeyLocation {
    /// Directory for the key and the local store [default: $XDG_DATA_HOME/mutant]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Master key file [default: DATA_DIR/master.key]
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// Where the passphrase of a sealed key file comes from (asked for on a terminal otherwise).
#[derive(Args, Debug, Clone, Default)]
pub struct PassphraseArgs {
    /// Read the key file's passphrase from the first line of FILE (for unattended mounts)
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_command")]
    pub passphrase_file: Option<PathBuf>,

    /// Run CMD with sh and take the key file's passphrase from the first line it prints
    #[arg(long, value_name = "CMD")]
    pub passphrase_command: Option<String>,

    /// Read the passphrase from standard input (how a mount hands it to its background process)
    #[arg(long, hide = true)]
    pub passphrase_stdin: bool,
}

impl PassphraseArgs {
    pub fn source(&self) -> mutant_mount::key_seal::PassphraseSource {
        use mutant_mount::key_seal::PassphraseSource;
        match (&self.passphrase_file, &self.passphrase_command) {
            (Some(file), _) => PassphraseSource::File(file.clone()),
            (None, Some(cmd)) => PassphraseSource::Command(cmd.clone()),
            _ if self.passphrase_stdin => PassphraseSource::Stdin,
            _ => PassphraseSource::Prompt,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Print a backup of the master key to write down or print: four checked lines and a checksum
    Export {
        #[command(flatten)]
        location: KeyLocation,
    },
    /// Restore the master key from a backup made by `key export` (from FILE, or standard input)
    Import {
        #[command(flatten)]
        location: KeyLocation,
        /// The backup text [default: standard input]
        file: Option<PathBuf>,
    },
    /// Print the key's fingerprint: a short name for it, safe to share, the same on every machine
    Fingerprint {
        #[command(flatten)]
        location: KeyLocation,
    },
    /// Protect the key file with a passphrase (argon2id and an AEAD), change it, or remove it
    Passphrase {
        #[command(flatten)]
        location: KeyLocation,
        /// Read the new passphrase from the first line of FILE [default: asked twice on the terminal]
        #[arg(long, value_name = "FILE", conflicts_with = "remove")]
        new_passphrase_file: Option<PathBuf>,
        /// Store the key without a passphrase again
        #[arg(long)]
        remove: bool,
    },
}

/// Where the file system's pads and key are: what a mount and `fsck` open.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Store the pads on the Autonomi network instead of this disk: "local" (a network on this
    /// machine, e.g. scripts/local-network.sh), "testnet" or "main" (the public network, paying
    /// on Arbitrum One). Peers come from ANT_PEERS (comma-separated multiaddrs; needed for
    /// local and testnet), the EVM network from EVM_NETWORK (e.g. local,
    /// arbitrum-sepolia-test). Creating a pad costs tokens from the wallet (see
    /// --wallet-key-file); updates are free
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<NetworkKind>,

    /// File holding the EVM wallet's private key (hex; keep it mode 0600) that pays for new pads
    /// on the network [default: the SECRET_KEY environment variable]. The key is never taken
    /// as a command-line value, which every user could see in ps
    #[arg(long, value_name = "FILE", requires = "network")]
    pub wallet_key_file: Option<PathBuf>,

    /// Directory of the local tier in front of the network: pads not yet uploaded and a cache
    /// of pads read from it, encrypted [default: DATA_DIR/tier-NETWORK]
    #[arg(long, value_name = "DIR", requires = "network")]
    pub cache_dir: Option<PathBuf>,

    /// Directory for the key and the local store [default: $XDG_DATA_HOME/mutant]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory of the local pad store [default: DATA_DIR/store]
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,

    /// Master key file (hex BLS secret key, or one sealed with `key passphrase`; created with
    /// mode 0600 if missing) [default: DATA_DIR/master.key]
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Empty directory to mount on. Given two paths (as mount(8) and fstab do: SOURCE
    /// MOUNTPOINT), the first names the file system and is otherwise ignored
    #[arg(
        value_name = "MOUNTPOINT",
        num_args = 1..=2,
        required_unless_present = "estimate"
    )]
    pub paths: Vec<PathBuf>,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Print what storing BYTES of file data on the network would cost (e.g. 500M, 2G), then
    /// exit; nothing is mounted or paid and no wallet is needed. Needs --network
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "network")]
    pub estimate: Option<u64>,

    /// How writes reach the network: "staged" (close() returns once the pads are sealed and
    /// durably written to the local tier, uploaded in the background; fsync waits for the
    /// upload; the default) or "sync" (close() waits for the network, no tier). With
    /// --simulate, the tier is in front of the simulated store only if "staged" is given
    #[arg(long, value_name = "MODE")]
    pub upload: Option<UploadMode>,

    /// Disk the tier's cache may use (e.g. 500M, 10G); pads not yet uploaded are kept beyond it
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "10G")]
    pub cache_max_size: u64,

    /// Memory for file data, the chunk cache and every open file's unsaved changes together
    /// (e.g. 512M, 2G); writers wait for room rather than the mount growing past it
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// Memory for cached file chunks, in MiB, within --memory (at most half of it)
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub cache_size: usize,

    /// Memory one open file may use for unsaved changes, uploads in flight included, in MiB,
    /// within --memory
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub write_buffer: usize,

    /// How long a system call waits for the store (e.g. 30s, 2m): a read of data not cached
    /// then fails with ETIMEDOUT, and so does a close() or fsync() whose upload is not done
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,

    /// How long unmount, SIGTERM and SIGINT wait for the last changes to reach the store (with
    /// the tier: to be uploaded) before the mount stops anyway, keeping them in its journal or
    /// its tier for the next mount (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub unmount_wait: std::time::Duration,

    /// Stay in the foreground (logs go to stderr); otherwise run in the background once mounted
    #[arg(short, long)]
    pub foreground: bool,

    /// Mount read-only
    #[arg(long)]
    pub read_only: bool,

    /// Let other users access the mount (root may always do this; others need user_allow_other in /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,

    /// Mount options, mount(8) style: ro, rw, allow_other, allow_root, nonempty,
    /// default_permissions, and any long option as NAME=VALUE (data_dir=DIR, key_file=FILE,
    /// store_dir=DIR, cache_size=MIB, network=NETWORK, wallet_key_file=FILE, log_level=LEVEL,
    /// ...). Options fstab and systemd add (_netdev, nofail, noauto, user, defaults,
    /// x-systemd.*, suid, dev, exec and their negations) are accepted and ignored
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,

    /// File system type, as mount(8) passes it to a mount helper (fuse.mutant-mount)
    #[arg(short = 't', value_name = "TYPE", hide = true)]
    pub fs_type: Option<String>,

    /// mount(8)'s helper flags (no mtab, sloppy, verbose): accepted and ignored
    #[arg(short = 'n', hide = true)]
    pub no_mtab: bool,
    #[arg(short = 's', hide = true)]
    pub sloppy: bool,
    #[arg(short = 'v', hide = true)]
    pub verbose: bool,

    /// Start an empty file system when the store has no index for this key
    #[arg(long)]
    pub new_index: bool,

    /// Chunk size in bytes for a new file system (4096 up to 4190208, a multiple of 4096)
    #[arg(long, value_name = "BYTES", value_parser = parse_chunk_size)]
    pub chunk_size: Option<u32>,

    /// Make the store slow and unreliable, for tests and benchmarks, e.g.
    /// "get=20ms+200ms,put=60ms+700ms,concurrency=16,errors=0.01,seed=7" ("local-network" is a preset)
    #[arg(long, value_name = "PROFILE")]
    pub simulate: Option<SimConfig>,

    /// FUSE worker threads
    #[arg(long, default_value_t = 4)]
    pub threads: usize,

    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides)
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Replay what can be read of a journal that has a damaged change in the middle (the
    /// damaged part is dropped); without it such a journal is refused and left untouched
    #[arg(long)]
    pub discard_damaged_journal: bool,

    /// Mount even if the store serves an older index than this machine has seen (a restored
    /// or stale copy): newer changes are then lost for good at the next commit
    #[arg(long)]
    pub accept_rollback: bool,
}

/// `--upload`: stage in the local tier, or write to the network before close() returns.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadMode {
    Staged,
    Sync,
}

impl MountArgs {
    /// The mount point: the last path (mount(8) passes SOURCE first).
    pub fn mountpoint(&self) -> Option<&PathBuf> {
        self.paths.last()
    }
}

const EXAMPLES: &str = "Examples:
  mutant-mount ~/mnt                 mount in the background, local store
  mutant-mount -f ~/mnt              stay in the foreground (Ctrl-C unmounts)
  fusermount3 -u ~/mnt               unmount (pending changes are committed first)
  mutant-mount key export            print a backup of the master key

  From /etc/fstab (the binary on root's PATH, e.g. /usr/local/bin):
  mutant /mnt/files fuse.mutant-mount data_dir=/var/lib/mutant,allow_other,_netdev 0 0

  On the Autonomi network (the wallet pays for new pads; the log reports the cost at unmount):
  SECRET_KEY=0x... mutant-mount --network main ~/mnt
  mutant-mount --network main --estimate 2G       price of 2 GiB before paying anything
  On a local test network (scripts/local-network.sh start):
  . ~/.cache/mutant-mount/localnet/env && mutant-mount --network local \\
      --wallet-key-file ~/.cache/mutant-mount/localnet/wallet.key ~/mnt";

/// A duration as people write them: 30s, 2m, 1h 30m, 500ms; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration: {s:?} ({e}; e.g. 30s, 2m)"))
}

/// A size in bytes (memory, disk, data): 512M and 2G are binary (MiB, GiB), as 512MiB and
/// 2GiB are; 500MB is decimal; a plain number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("not a size: {s:?} ({e}; e.g. 512M, 2G)"))
}

pub fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let max = mutant_mount::engine::DEFAULT_SCRATCHPAD_SIZE;
    match s.parse::<u32>() {
        Ok(n) if (4096..=max).contains(&n) && n.is_multiple_of(4096) => Ok(n),
        _ => Err(format!("must be a multiple of 4096 between 4096 and {max}")),
    }
}
