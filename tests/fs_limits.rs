//! The mount's bounds through the real binary: no system call waits on a store that has gone
//! silent for longer than `--timeout`, a signal stops the mount within `--unmount-wait` keeping
//! every acknowledged change in the journal, and many writers stay within `--memory`.
//!
//! The store goes silent with the simulation's `outage-while=FILE`: while FILE exists, every
//! store operation waits. Needs root, /dev/fuse and fusermount3 (see .ci/run).

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{content_for, Mount};

/// Longer than any bound these tests set, so a mount that ignores its bound fails the test
/// instead of passing by luck; no test asserts how fast anything is.
const NEVER: Duration = Duration::from_secs(120);

struct Outage(PathBuf);

impl Outage {
    fn new(dir: &Path) -> Outage {
        Outage(dir.join("outage"))
    }
    fn profile(&self) -> String {
        format!("outage-while={}", self.0.display())
    }
    fn begin(&self) {
        fs::write(&self.0, b"").unwrap();
    }
    fn end(&self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Runs a command that must succeed; it is killed after `NEVER` (a hang fails the test).
fn run_ok(cwd: &Path, script: &str) -> String {
    let out = Command::new("timeout")
        .arg(NEVER.as_secs().to_string())
        .args(["bash", "-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes `file` and returns the error close() gave, if any.
fn close(file: fs::File) -> Result<(), std::io::Error> {
    // SAFETY: the descriptor is ours and closed once.
    match unsafe { libc::close(file.into_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn with_the_store_silent_calls_fail_in_time_listing_does_not_wait_and_the_mount_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let outage = Outage::new(dir.path());
    let before = content_for("before", 9 << 20);
    let mount = Mount::start(&data, &mnt, &[]);
    fs::write(mount.path("before"), &before).unwrap();
    mount.unmount();

    // A fresh mount: nothing of "before" is cached.
    let profile = outage.profile();
    let mount = Mount::start(&data, &mnt, &["--simulate", &profile, "--timeout", "4s"]);
    fs::create_dir(mount.path("dir")).unwrap();
    outage.begin();
    // What lists and describes files never waits for the store.
    let listed = run_ok(
        &mnt,
        "ls -l; stat -c '%s %F' before dir; df -k . >/dev/null; echo ok",
    );
    assert!(listed.contains("9437184 regular file"), "{listed}");
    assert!(listed.ends_with("ok\n"), "{listed}");
    // A read of data not cached and a close whose upload cannot finish wait until the
    // timeout, then fail with ETIMEDOUT; meanwhile nothing else waits behind them: names
    // come, move, list and go elsewhere in the mount.
    let reader = std::thread::spawn({
        let path = mount.path("before");
        move || fs::read(path)
    });
    let closer = std::thread::spawn({
        let path = mount.path("during");
        move || {
            let mut f = fs::File::create(path)?;
            f.write_all(&content_for("during", 5 << 20))?;
            close(f)
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let meanwhile = run_ok(
        &mnt,
        "mkdir d2 && printf x > d2/x && mv d2 d3 && ls -l d3 >/dev/null && cat d3/x && \
         rm d3/x && rmdir d3 && stat -c %s before",
    );
    assert_eq!(meanwhile, "x9437184\n");
    assert!(
        !reader.is_finished() && !closer.is_finished(),
        "calls on other names waited for calls waiting on the store"
    );
    let read = reader.join().unwrap().unwrap_err();
    assert_eq!(read.raw_os_error(), Some(libc::ETIMEDOUT), "{read}");
    let closed = closer.join().unwrap().unwrap_err();
    assert_eq!(closed.raw_os_error(), Some(libc::ETIMEDOUT), "{closed}");
    // So does fsync of a small file, whose change waits for an index commit.
    let mut f = fs::File::create(mount.path("small")).unwrap();
    f.write_all(b"small").unwrap();
    let synced = f.sync_all().unwrap_err();
    assert_eq!(synced.raw_os_error(), Some(libc::ETIMEDOUT), "{synced}");
    drop(f);

    outage.end();
    // The mount is usable again, and what it was given stays.
    assert_eq!(fs::read(mount.path("before")).unwrap(), before);
    let after = content_for("after", 5 << 20);
    fs::write(mount.path("during"), &after).unwrap();
    assert_eq!(fs::read(mount.path("small")).unwrap(), b"small");
    mount.unmount();
    let mount = Mount::start(&data, &mnt, &[]);
    assert_eq!(fs::read(mount.path("before")).unwrap(), before);
    assert_eq!(fs::read(mount.path("during")).unwrap(), after);
    assert_eq!(fs::read(mount.path("small")).unwrap(), b"small");
    mount.unmount();
}

/// Writes what a mount must keep, then silences the store and changes more: those changes
/// are acknowledged but cannot be committed.
fn changes_the_store_cannot_take(mount: &Mount, outage: &Outage) -> Vec<(String, Vec<u8>)> {
    let big = content_for("big", 6 << 20);
    fs::write(mount.path("big"), &big).unwrap();
    outage.begin();
    fs::rename(mount.path("big"), mount.path("renamed")).unwrap();
    fs::create_dir(mount.path("made-in-outage")).unwrap();
    // Small files live in the index: their close needs no upload.
    fs::write(mount.path("made-in-outage/note"), b"a note").unwrap();
    vec![
        ("renamed".to_string(), big),
        ("made-in-outage/note".to_string(), b"a note".to_vec()),
    ]
}

fn assert_kept(data: &Path, mnt: &Path, files: &[(String, Vec<u8>)]) {
    assert!(!common::is_mounted(mnt), "the mount point was left mounted");
    let mount = Mount::start(data, mnt, &[]);
    for (name, bytes) in files {
        assert_eq!(&fs::read(mount.path(name)).unwrap(), bytes, "{name}");
    }
    assert!(!mount.path("big").exists());
    mount.unmount();
}

/// A mount over a store that goes silent after taking a file: its last changes are
/// acknowledged but cannot be committed.
struct Stranded {
    dir: tempfile::TempDir,
    outage: Outage,
    mount: Mount,
    files: Vec<(String, Vec<u8>)>,
}

impl Stranded {
    fn new(unmount_wait: &str) -> Stranded {
        let dir = tempfile::tempdir().unwrap();
        let outage = Outage::new(dir.path());
        let profile = outage.profile();
        let mount = Mount::start(
            &dir.path().join("data"),
            &dir.path().join("mnt"),
            &["--simulate", &profile, "--unmount-wait", unmount_wait],
        );
        let files = changes_the_store_cannot_take(&mount, &outage);
        Stranded {
            dir,
            outage,
            mount,
            files,
        }
    }

    /// After the process ended with `status`: it failed, and with the store back, a new mount
    /// shows every change.
    fn assert_kept(self, status: std::process::ExitStatus) {
        Stranded::finish(self.dir, self.outage, self.files, status);
    }

    fn finish(
        dir: tempfile::TempDir,
        outage: Outage,
        files: Vec<(String, Vec<u8>)>,
        status: std::process::ExitStatus,
    ) {
        assert!(
            !status.success(),
            "uncommitted changes must show in the exit status"
        );
        outage.end();
        assert_kept(&dir.path().join("data"), &dir.path().join("mnt"), &files);
    }
}

#[test]
fn sigterm_with_the_store_silent_stops_within_the_bound_and_loses_nothing() {
    let mut s = Stranded::new("3s");
    s.mount.signal(libc::SIGTERM);
    let status = s.mount.wait_exit(NEVER);
    let log = fs::read_to_string(s.mount.log_path()).unwrap();
    assert!(log.contains("kept in the journal"), "{log}");
    assert!(log.contains("waiting up to"), "no progress shown:\n{log}");
    s.assert_kept(status);
}

#[test]
fn a_second_signal_stops_at_once_and_loses_nothing() {
    // A wait far longer than the test allows: only the second signal can end it in time.
    let mut s = Stranded::new("1h");
    s.mount.signal(libc::SIGTERM);
    while common::is_mounted(&s.mount.mnt) {
        std::thread::sleep(Duration::from_millis(20));
    }
    s.mount.signal(libc::SIGINT);
    let status = s.mount.wait_exit(NEVER);
    let log = fs::read_to_string(s.mount.log_path()).unwrap();
    assert!(log.contains("stopping now"), "{log}");
    s.assert_kept(status);
}

#[test]
fn unmount_with_the_store_silent_ends_within_the_bound_and_loses_nothing() {
    let s = Stranded::new("2s");
    let Stranded {
        dir,
        outage,
        mount,
        files,
    } = s;
    let mut child = mount.unmount_no_wait();
    let status = wait_child(&mut child);
    Stranded::finish(dir, outage, files, status);
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + NEVER;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mutant-mount did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bytes of piece `k` (1 MiB) of writer `w`'s file.
fn piece(w: usize, k: usize) -> Vec<u8> {
    content_for(&format!("writer {w} piece {k}"), 1 << 20)
}

/// A line of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes `writers` files of `mib` MiB at once, in 1 MiB writes, through `mount`.
fn write_in_parallel(mount: &Mount, writers: usize, mib: usize) {
    std::thread::scope(|s| {
        for w in 0..writers {
            let path = mount.path(&format!("w{w}"));
            s.spawn(move || {
                let mut f = fs::File::create(path).unwrap();
                for k in 0..mib {
                    f.write_all(&piece(w, k)).unwrap();
                }
                close(f).unwrap();
            });
        }
    });
}

#[test]
fn parallel_writers_share_one_memory_budget() {
    const WRITERS: usize = 32;
    const MIB: usize = 64;
    const MEMORY_MIB: u64 = 128;
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let memory = format!("{MEMORY_MIB}M");
    // A slow machine must not fail this test: a writer waits as long as room takes to come.
    let mount = Mount::start(&data, &mnt, &["--memory", &memory, "--timeout", "1h"]);
    // What the mount holds before any file data: code, runtime, index.
    let idle = status_kib(mount.pid(), "VmRSS:");
    write_in_parallel(&mount, WRITERS, MIB);
    let peak = status_kib(mount.pid(), "VmHWM:");
    mount.unmount();

    let mount = Mount::start(&data, &mnt, &[]);
    for w in 0..WRITERS {
        let bytes = fs::read(mount.path(&format!("w{w}"))).unwrap();
        assert_eq!(bytes.len(), MIB << 20, "w{w}");
        for (k, got) in bytes.chunks(1 << 20).enumerate() {
            assert!(got == piece(w, k), "w{w} differs in MiB {k}");
        }
    }
    mount.unmount();
    // Past the budget and the idle mount, memory that is not file data waiting: the buffer
    // pool's free chunks kept for reuse (src/buffers.rs: 16 of 4 MiB), the sealed copies of
    // the chunks uploading (16 at once on the local store: 64 MiB), each writer's request
    // copied for its task (1 MiB each), and 16 MiB of allocator slack.
    let margin = (64 + 64 + WRITERS as u64 + 16) << 10;
    let budget = MEMORY_MIB << 10;
    assert!(
        peak <= idle + budget + margin,
        "peak RSS {} MiB: idle {} MiB + budget {} MiB + margin {} MiB",
        peak >> 10,
        idle >> 10,
        budget >> 10,
        margin >> 10
    );
    eprintln!("peak RSS {} MiB (idle {} MiB)", peak >> 10, idle >> 10);
}
