//! `-o` mount options, as a user types them and as mount(8), fstab and systemd pass them.
//!
//! mount(8) runs a FUSE file system through a helper: either `/sbin/mount.fuse.mutant-mount`
//! (when that link exists) with `SOURCE MOUNTPOINT -o OPTIONS -t fuse.mutant-mount`, or fuse3's
//! `mount.fuse3`, which drops the options only mount(8) cares about and runs
//! `mutant-mount SOURCE MOUNTPOINT -o OPTIONS` with `dev,suid` or their negations added. So every
//! long option is also accepted as `name=value`, and the generic options are accepted and
//! ignored: a FUSE mount made by an ordinary user is always nosuid and nodev anyway.

use std::path::PathBuf;

use super::args::{parse_chunk_size, parse_duration, parse_size, MountArgs};

/// Options that say something to mount(8), fstab or systemd rather than to the file system.
const IGNORED: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "suid", "nosuid",
    "dev", "nodev", "exec", "noexec", "noatime", "relatime", "atime", "async",
];

/// Prefixes of options for mount(8)'s and systemd's own use (`x-systemd.automount`,
/// `x-systemd.requires=...`, `comment=...`).
const IGNORED_PREFIXES: &[&str] = &["x-", "comment="];

/// Applies the `-o` options to the arguments; an option given both ways takes the `-o` value.
pub fn apply(args: &mut MountArgs) -> Result<(), String> {
    let options: Vec<String> = args
        .options
        .iter()
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect();
    for opt in options {
        if IGNORED.contains(&opt.as_str()) || IGNORED_PREFIXES.iter().any(|p| opt.starts_with(p)) {
            continue;
        }
        match opt.split_once('=') {
            Some((name, value)) => set(args, name, value)?,
            None => flag(args, &opt)?,
        }
    }
    if let Some(t) = &args.fs_type {
        if t != "fuse.mutant-mount" && t != "fuse" && t != "mutant-mount" {
            return Err(format!("file system type {t:?} is not fuse.mutant-mount"));
        }
    }
    Ok(())
}

fn flag(args: &mut MountArgs, opt: &str) -> Result<(), String> {
    match opt {
        "ro" | "read_only" => args.read_only = true,
        "rw" => args.read_only = false,
        "allow_other" => args.allow_other = true,
        "foreground" => args.foreground = true,
        "new_index" => args.new_index = true,
        // Checked by the mount itself (see `mount::MountConfig`).
        "allow_root" | "nonempty" | "default_permissions" => {}
        other => return Err(format!("unknown mount option '{other}' (see --help)")),
    }
    Ok(())
}

fn set(args: &mut MountArgs, name: &str, value: &str) -> Result<(), String> {
    let bad = |e: String| format!("mount option {name}: {e}");
    let number = |v: &str| v.parse::<usize>().map_err(|e| bad(e.to_string()));
    let path = |v: &str| {
        if v.is_empty() {
            Err(bad("needs a path".into()))
        } else {
            Ok(Some(PathBuf::from(v)))
        }
    };
    match name.replace('-', "_").as_str() {
        "data_dir" => args.store.data_dir = path(value)?,
        "store_dir" => args.store.store_dir = path(value)?,
        "key_file" => args.store.key_file = path(value)?,
        "wallet_key_file" => args.store.wallet_key_file = path(value)?,
        "passphrase_file" => args.store.passphrase.passphrase_file = path(value)?,
        "network" => args.store.network = Some(value.parse().map_err(bad)?),
        "cache_size" => args.cache_size = number(value)?,
        "write_buffer" => args.write_buffer = number(value)?,
        "memory" => args.memory = parse_size(value).map_err(bad)?,
        "timeout" => args.timeout = parse_duration(value).map_err(bad)?,
        "unmount_wait" => args.unmount_wait = parse_duration(value).map_err(bad)?,
        "threads" => args.threads = number(value)?,
        "chunk_size" => args.chunk_size = Some(parse_chunk_size(value).map_err(bad)?),
        "log_level" => args.log_level = value.to_string(),
        "estimate" => args.estimate = Some(parse_size(value).map_err(bad)?),
        "upload" => {
            args.upload = Some(clap::ValueEnum::from_str(value, false).map_err(bad)?);
        }
        "cache_dir" => args.store.cache_dir = path(value)?,
        "cache_max_size" => args.cache_max_size = parse_size(value).map_err(bad)?,
        other => {
            return Err(format!(
                "unknown mount option '{other}={value}' (see --help)"
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> Result<MountArgs, String> {
        let cli = super::super::args::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let mut args = cli.mount;
        apply(&mut args)?;
        Ok(args)
    }

    #[test]
    fn the_forms_mount_helpers_use_are_accepted() {
        // What mount.fuse3 runs for an fstab line.
        let args = parse(&[
            "mutant-mount",
            "none",
            "/mnt/files",
            "-o",
            "rw,data_dir=/var/lib/mutant,key_file=/etc/mutant.key,allow_other,dev,suid",
        ])
        .unwrap();
        assert_eq!(args.mountpoint().unwrap(), &PathBuf::from("/mnt/files"));
        assert_eq!(args.store.data_dir, Some(PathBuf::from("/var/lib/mutant")));
        assert_eq!(args.store.key_file, Some(PathBuf::from("/etc/mutant.key")));
        assert!(args.allow_other && !args.read_only);
        // What mount(8) passes a /sbin/mount.fuse.mutant-mount link, fstab's options untouched.
        let args = parse(&[
            "mount.fuse.mutant-mount",
            "mutant",
            "/mnt/files",
            "-o",
            "ro,_netdev,nofail,noauto,user,users,defaults,x-systemd.automount,\
             x-systemd.requires=network-online.target,nosuid,nodev,noexec,cache_size=64",
            "-t",
            "fuse.mutant-mount",
            "-n",
        ])
        .unwrap();
        assert!(args.read_only);
        assert_eq!(args.cache_size, 64);
    }

    #[test]
    fn the_tier_options_come_as_mount_options_too() {
        let args = parse(&[
            "mutant-mount",
            "-o",
            "network=local,upload=sync,cache_dir=/var/cache/m,cache_max_size=2G,unmount_wait=5",
            "/m",
        ])
        .unwrap();
        assert_eq!(args.upload, Some(crate::cli::args::UploadMode::Sync));
        assert_eq!(args.store.cache_dir, Some(PathBuf::from("/var/cache/m")));
        assert_eq!(args.cache_max_size, 2 << 30);
        assert_eq!(args.unmount_wait, std::time::Duration::from_secs(5));
        let err = parse(&["mutant-mount", "-o", "upload=later", "/m"]).unwrap_err();
        assert!(err.contains("upload"), "{err}");
    }

    #[test]
    fn limits_take_human_durations_and_sizes_both_ways() {
        let args = parse(&["mutant-mount", "/m"]).unwrap();
        assert_eq!(args.timeout, std::time::Duration::from_secs(30));
        assert_eq!(args.unmount_wait, std::time::Duration::from_secs(30));
        assert_eq!(args.memory, 512 << 20);
        let args = parse(&[
            "mutant-mount",
            "--timeout",
            "2m",
            "-o",
            "memory=2G,unmount_wait=1m 30s",
            "/m",
        ])
        .unwrap();
        assert_eq!(args.timeout, std::time::Duration::from_secs(120));
        assert_eq!(args.unmount_wait, std::time::Duration::from_secs(90));
        assert_eq!(args.memory, 2 << 30);
        let err = parse(&["mutant-mount", "-o", "timeout=soon", "/m"]).unwrap_err();
        assert!(err.contains("timeout"), "{err}");
        assert!(parse(&["mutant-mount", "--memory", "lots", "/m"]).is_err());
    }

    #[test]
    fn unknown_options_and_types_are_refused() {
        let err = parse(&["mutant-mount", "-o", "bogus", "/m"]).unwrap_err();
        assert!(err.contains("unknown mount option 'bogus'"), "{err}");
        let err = parse(&["mutant-mount", "-o", "cache_size=lots", "/m"]).unwrap_err();
        assert!(err.contains("cache_size"), "{err}");
        let err = parse(&["mutant-mount", "-t", "fuse.sshfs", "/m"]).unwrap_err();
        assert!(err.contains("not fuse.mutant-mount"), "{err}");
    }
}
