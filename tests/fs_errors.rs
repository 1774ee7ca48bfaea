//! A full disk under the store, through a real mount: the program sees ENOSPC, not EIO, and
//! the file system carries on. Needs root (to mount a tmpfs), /dev/fuse and fusermount3.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{sh, sh_output, Mount};

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// A mount whose log cannot be written (a background mount logs into its data dir, which a
/// full disk fills too) drops the lines and goes on serving: nothing it logs may end it.
#[test]
fn a_log_on_a_full_disk_does_not_stop_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mnt = dir.path().join("mnt");
    let mount = Mount::start_logging_to(Path::new("/dev/full"), &data, &mnt, &[], &[]);
    // Every operation logs at the debug level, a failing one more.
    sh(
        &mount.mnt,
        "mkdir d && printf hello > d/f && cat d/f >/dev/null && mv d/f d/g && ls -la d >/dev/null",
    );
    assert!(sh_output(&mount.mnt, "cat missing").status.code() == Some(1));
    sh(&mount.mnt, "sync");
    assert_eq!(fs::read(mount.path("d/g")).unwrap(), b"hello");
    mount.unmount();

    let mount = Mount::start(&data, &mnt, &[]);
    assert_eq!(fs::read(mount.path("d/g")).unwrap(), b"hello");
    mount.unmount();
}

#[test]
fn a_full_disk_is_enospc_and_the_mount_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _disk = Tmpfs::mount(&data, "24m");
    let source = dir.path().join("big.bin");
    sh(
        dir.path(),
        "head -c 40000000 /dev/urandom > big.bin; printf 'kept\\n' > kept.txt",
    );

    let mount = Mount::start(&data, &dir.path().join("mnt"), &[]);
    sh(
        &mount.mnt,
        &format!("cp {}/kept.txt before.txt", dir.path().display()),
    );
    let out = sh_output(&mount.mnt, &format!("cp {} big.bin", source.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 40 MB copy fit a 24 MiB disk");
    assert!(
        stderr.contains("No space left on device"),
        "cp said: {stderr}\n{}",
        mount.log_tail()
    );

    // Still usable: the partial file goes, small files come and stay.
    sh(
        &mount.mnt,
        "rm -f big.bin; printf 'after\\n' > after.txt; mkdir d; printf x > d/x",
    );
    let listing = sh(&mount.mnt, "ls");
    assert_eq!(
        listing,
        "after.txt\nbefore.txt\nd\n",
        "{}",
        mount.log_tail()
    );
    mount.unmount();

    // After a remount, exactly what succeeded.
    let mount = Mount::start(&data, &dir.path().join("mnt"), &[]);
    assert_eq!(
        sh(&mount.mnt, "ls -R"),
        ".:\nafter.txt\nbefore.txt\nd\n\n./d:\nx\n"
    );
    assert_eq!(fs::read(mount.path("before.txt")).unwrap(), b"kept\n");
    assert_eq!(fs::read(mount.path("after.txt")).unwrap(), b"after\n");
    assert_eq!(fs::read(mount.path("d/x")).unwrap(), b"x");
    mount.unmount();
}

/// Waits until every change to the mount at `mnt` is committed (`mutant-mount sync`). On a
/// disk left full by a failed copy the first try may find no room yet: the kernel sends the
/// copy's last close (which gives its unsaved pads back) a moment after `cp` exits.
fn commit(mnt: &Path) {
    let mut tries = 0;
    loop {
        let out = Command::new(common::binary())
            .arg("sync")
            .arg(mnt)
            .output()
            .unwrap();
        tries += 1;
        if out.status.success() {
            return;
        }
        assert!(tries < 10, "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Free bytes of the file system holding `dir`.
fn available(dir: &Path) -> u64 {
    let out = sh(dir, "df --output=avail -B1 . | tail -1");
    out.trim().parse().unwrap()
}

/// Deleting files gives their space back to the disk under the store, as on any file system:
/// the pads they held stay on the free list for reuse, but hold nothing. So a disk filled to
/// ENOSPC recovers once files are deleted (a pad is rewritten through a temporary file, which
/// a full disk has no room for).
#[test]
fn deleting_files_gives_their_space_back_and_a_full_disk_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _disk = Tmpfs::mount(&data, "24m");
    sh(
        dir.path(),
        "head -c 40000000 /dev/urandom > big.bin; head -c 12000000 /dev/urandom > next.bin",
    );
    let mount = Mount::start(&data, &dir.path().join("mnt"), &[]);
    let out = sh_output(
        &mount.mnt,
        &format!("cp {}/big.bin .", dir.path().display()),
    );
    assert!(!out.status.success(), "a 40 MB copy fit a 24 MiB disk");

    sh(&mount.mnt, "rm big.bin");
    commit(&mount.mnt);
    // The copy's last close, which gives back what it could not save, may still be on its way.
    let mut free = available(&data);
    for _ in 0..50 {
        if free > 16 << 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        free = available(&data);
    }
    assert!(
        free > 16 << 20,
        "{free} bytes free of 24 MiB after the rm\n{}",
        mount.log_tail()
    );
    let out = sh_output(
        &mount.mnt,
        &format!("cp {}/next.bin .", dir.path().display()),
    );
    assert!(
        out.status.success(),
        "cp after rm: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mount.log_tail()
    );
    mount.unmount();

    let mount = Mount::start(&data, &dir.path().join("mnt"), &[]);
    assert_eq!(sh(&mount.mnt, "ls"), "next.bin\n");
    assert!(
        fs::read(mount.path("next.bin")).unwrap() == fs::read(dir.path().join("next.bin")).unwrap()
    );
    mount.unmount();
}

/// A disk filled to its last block by something other than the mount: deleting inside the
/// mount still works, its commit lands, and the store still mounts, from the room the store
/// keeps in reserve for its journal.
#[test]
fn a_disk_full_to_the_last_block_still_takes_deletes_and_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let _disk = Tmpfs::mount(&disk, "24m");
    let data = disk.join("data");
    let mnt = dir.path().join("mnt");
    sh(
        dir.path(),
        "head -c 8000000 /dev/urandom > a.bin; printf 'kept\\n' > kept.txt",
    );
    let mount = Mount::start(&data, &mnt, &[]);
    sh(
        &mount.mnt,
        &format!("cp {0}/a.bin {0}/kept.txt .", dir.path().display()),
    );
    commit(&mount.mnt);
    fill(&disk, "filler");

    sh(&mount.mnt, "rm a.bin");
    commit(&mount.mnt);
    assert_eq!(sh(&mount.mnt, "ls"), "kept.txt\n");
    mount.unmount();

    fill(&disk, "filler2");
    let mount = Mount::start(&data, &mnt, &[]);
    assert_eq!(sh(&mount.mnt, "ls"), "kept.txt\n");
    assert_eq!(fs::read(mount.path("kept.txt")).unwrap(), b"kept\n");
    sh(&disk, "rm filler filler2");
    sh(&mount.mnt, "printf 'later\\n' > later.txt");
    commit(&mount.mnt);
    mount.unmount();
}

/// Writes zeros into `dir/name` until the disk has not one byte left.
fn fill(dir: &Path, name: &str) {
    sh(dir, &format!("cat /dev/zero > {name} 2>/dev/null || true"));
    assert_eq!(available(dir), 0, "the disk is not full");
}
