//! The subcommands: each a thin front end over the library.

pub mod args;
pub mod mount_options;
pub mod offline;
pub mod status;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use mutant_mount::key_backup;
use mutant_mount::key_seal::PassphraseSource;
use mutant_mount::keys::MasterKey;
use mutant_mount::mount::default_data_dir;

use args::{Cli, Command, KeyCommand, KeyLocation};

/// Runs a subcommand; errors are printed as one line and give exit code 1.
pub fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Key(key) => run_key(key),
        Command::Status {
            mountpoint,
            json,
            watch,
        } => status::status(mountpoint.as_deref(), json, watch),
        Command::Sync { mountpoint } => status::sync(&mountpoint),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "mutant-mount", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| format!("cannot write the man page: {e}")),
        Command::Fsck { .. } | Command::Gc { .. } => {
            unreachable!("run by main, which has the mount's configuration")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mutant-mount: {e}");
            ExitCode::FAILURE
        }
    }
}

impl KeyLocation {
    fn key_file(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| {
            self.data_dir
                .clone()
                .unwrap_or_else(default_data_dir)
                .join("master.key")
        })
    }

    fn load(&self) -> Result<MasterKey, String> {
        MasterKey::load_with(&self.key_file(), &self.passphrase.source()).map_err(|e| e.to_string())
    }
}

fn run_key(command: KeyCommand) -> Result<(), String> {
    match command {
        KeyCommand::Export { location } => {
            print!("{}", key_backup::export(&location.load()?));
            Ok(())
        }
        KeyCommand::Fingerprint { location } => {
            println!("{}", key_backup::fingerprint(&location.load()?));
            Ok(())
        }
        KeyCommand::Passphrase {
            location,
            new_passphrase_file,
            remove,
        } => set_passphrase(&location, new_passphrase_file, remove),
        KeyCommand::Import { location, file } => {
            let text = match &file {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| format!("cannot read standard input: {e}"))?;
                    text
                }
            };
            let key = key_backup::import(&text).map_err(|e| format!("not imported: {e}"))?;
            let path = location.key_file();
            if path.exists() {
                let existing = location.load()?;
                if existing.to_hex() == key.to_hex() {
                    println!(
                        "{} already holds this key (fingerprint {})",
                        path.display(),
                        key_backup::fingerprint(&key)
                    );
                    return Ok(());
                }
                return Err(format!(
                    "{} already holds another key (fingerprint {}); not replaced. Move it \
                     aside first, or import with --key-file to another place",
                    path.display(),
                    key_backup::fingerprint(&existing)
                ));
            }
            key.save_new(&path).map_err(|e| e.to_string())?;
            println!(
                "imported the key with fingerprint {} into {}",
                key_backup::fingerprint(&key),
                path.display()
            );
            Ok(())
        }
    }
}

/// Seals the key file with a new passphrase, or stores it plain again, replacing the file
/// atomically (a new 0600 file renamed over the old one).
fn set_passphrase(
    location: &KeyLocation,
    new_passphrase_file: Option<PathBuf>,
    remove: bool,
) -> Result<(), String> {
    use std::io::IsTerminal;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use zeroize::Zeroizing;

    let path = location.key_file();
    let key = location.load()?;
    let plain = Zeroizing::new(format!("{}\n", key.to_hex()));
    let text = Zeroizing::new(if remove {
        plain.to_string()
    } else {
        let pass = match new_passphrase_file {
            Some(file) => PassphraseSource::File(file).read("the new passphrase")?,
            None => {
                if !std::io::stdin().is_terminal() {
                    return Err("give the new passphrase with --new-passphrase-file (no terminal to ask on)".into());
                }
                let first = PassphraseSource::Prompt.read("the key (new)")?;
                let again = PassphraseSource::Prompt.read("the key (new, again)")?;
                if first != again {
                    return Err("the two passphrases differ; nothing changed".into());
                }
                first
            }
        };
        mutant_mount::key_seal::seal(plain.as_bytes(), pass.as_bytes())
    });
    let tmp = path.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rewrite {}: {e}", path.display())
    })?;
    println!(
        "{} {}",
        path.display(),
        if remove {
            "is stored without a passphrase"
        } else {
            "is sealed with the new passphrase"
        }
    );
    Ok(())
}

/// A progress bar on standard error if it is a terminal, else one that draws nothing.
fn progress_bar(template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(template).expect("a valid template");
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
