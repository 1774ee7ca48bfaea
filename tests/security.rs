//! What a mount leaves where others can look: the files under the data and store dirs (no
//! plaintext of names, contents, link targets or xattrs, after an unmount, a SIGKILL, or a
//! conflict's recovery; modes 0600 and 0700), its processes' environment (no wallet key), and
//! what a mount started right after an unmount sees. Needs root, /dev/fuse and fusermount3.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{describe_tree, sh, Mount};

/// In names, contents, a link target and an xattr: none may be found on disk.
const NAME: &str = "secret-name-xyz";
const MARKER: &str = "MARKER-5d1e-contents";

/// The log level a user gets: what it prints is checked too.
fn default_logging() -> Vec<(String, String)> {
    vec![("RUST_LOG".into(), "mutant_mount=info,warn".into())]
}

fn start(data: &Path, mnt: &Path) -> Mount {
    Mount::start_with_env(data, mnt, &[], &default_logging())
}

/// Writes marked files under `tag` names: a small file (inline in the index), a large one
/// (in pads), a directory, a symlink and an xattr.
fn write_marked(mnt: &Path, tag: &str) {
    let dir = mnt.join(format!("{NAME}-dir-{tag}"));
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join(format!("{NAME}-{tag}.txt")), MARKER.repeat(3)).unwrap();
    fs::write(
        mnt.join(format!("{NAME}-big-{tag}")),
        MARKER.repeat(5 << 20 >> 4),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        format!("/{MARKER}/target"),
        mnt.join(format!("{NAME}-link-{tag}")),
    )
    .unwrap();
    sh(
        mnt,
        &format!(
            "python3 -c 'import os; os.setxattr(\"{NAME}-big-{tag}\", \"user.{NAME}\", b\"{MARKER}\")'"
        ),
    );
}

fn check_marked(root: &Path, tag: &str) {
    let small = root.join(format!("{NAME}-dir-{tag}/{NAME}-{tag}.txt"));
    assert_eq!(fs::read_to_string(&small).unwrap(), MARKER.repeat(3));
    let big = fs::read(root.join(format!("{NAME}-big-{tag}"))).unwrap();
    assert!(
        big == MARKER.repeat(5 << 20 >> 4).as_bytes(),
        "{tag}: big file"
    );
    assert_eq!(
        fs::read_link(root.join(format!("{NAME}-link-{tag}"))).unwrap(),
        PathBuf::from(format!("/{MARKER}/target"))
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.clone());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// No marker in any name or file under `data`, and everything the mount made there is private.
fn assert_nothing_readable(data: &Path, when: &str) {
    for path in files_under(data) {
        let shown = path.display().to_string();
        assert!(
            !shown.contains(NAME),
            "{when}: a name in the clear: {shown}"
        );
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let is_test_log = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("mount-"));
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{when}: {shown} is mode {mode:o}");
        } else if meta.is_file() {
            if !is_test_log {
                assert_eq!(mode, 0o600, "{when}: {shown} is mode {mode:o}");
            }
            let bytes = fs::read(&path).unwrap();
            for marker in [NAME, MARKER] {
                assert!(
                    !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                    "{when}: {marker} in {shown}"
                );
            }
        }
    }
}

#[test]
fn nothing_readable_at_rest_after_unmount_crash_or_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));

    // A clean session.
    let mount = start(&data, &mnt);
    write_marked(&mnt, "a");
    mount.unmount();
    assert_nothing_readable(&data, "after an unmount");

    // A session killed before its last commit: its changes are in the journal only.
    let mount = start(&data, &mnt);
    write_marked(&mnt, "b");
    mount.kill();
    assert_nothing_readable(&data, "after a SIGKILL");
    let mount = start(&data, &mnt);
    check_marked(&mnt, "a");
    check_marked(&mnt, "b");
    mount.unmount();
    assert_nothing_readable(&data, "after replaying the journal");

    // A killed session whose journal no longer fits the store: another session (here the
    // same store without that journal) committed meanwhile. Its changes are recovered.
    let mount = start(&data, &mnt);
    write_marked(&mnt, "c");
    mount.kill();
    let journal = data.join("store/journal/journal");
    let aside = dir.path().join("journal-aside");
    fs::rename(&journal, &aside).unwrap();
    let mount = start(&data, &mnt);
    fs::write(mnt.join("meanwhile"), b"another session").unwrap();
    mount.unmount();
    fs::rename(&aside, &journal).unwrap();
    let mount = start(&data, &mnt);
    let found: Vec<_> = fs::read_dir(mnt.join("lost+found"))
        .expect("recovered into lost+found")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let changes = fs::read_to_string(found[0].join("CHANGES.txt")).unwrap();
    assert!(
        changes.contains(&format!("wrote {NAME}-big-c")),
        "{changes}"
    );
    // The other session took recycled pads from the free list it shared with the killed one,
    // so the big file's pads may hold the other's data now: then it is reported, never
    // recovered with wrong bytes.
    let big = found[0].join(format!("{NAME}-big-c"));
    if !big.exists() {
        assert!(
            changes.contains(&format!("{NAME}-big-c: NOT recovered")),
            "{changes}"
        );
        fs::write(&big, MARKER.repeat(5 << 20 >> 4)).unwrap();
    }
    check_marked(&found[0], "c");
    assert_eq!(fs::read(mnt.join("meanwhile")).unwrap(), b"another session");
    check_marked(&mnt, "a");
    mount.unmount();
    assert_nothing_readable(&data, "after a recovery");
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    start(&data, &mnt).unmount();
    let key = data.join("master.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(common::binary())
        .args(["-f", "--data-dir"])
        .arg(&data)
        .arg(&mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", key.display())),
        "{text}"
    );
    assert!(!common::is_mounted(&mnt));
}

/// The process ids whose command line holds `needle`.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn the_wallet_key_is_not_left_in_any_mount_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let secret = "0x4c0883a69102937d6231471b5dbb6204fe512961708279f2e3e8a5d4b8e3e0aa";
    let env = vec![("SECRET_KEY".to_string(), secret.to_string())];
    let environ_of = |pid: u32| fs::read(format!("/proc/{pid}/environ")).unwrap();
    let holds = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());

    // In the foreground.
    let mount = Mount::start_with_env(&data, &mnt, &[], &env);
    assert!(
        !holds(&environ_of(mount.pid())),
        "SECRET_KEY in the foreground mount"
    );
    mount.unmount();

    // In the background: the process that serves the mount is a child.
    fs::create_dir_all(&mnt).unwrap();
    let out = Command::new(common::binary())
        .arg("--data-dir")
        .arg(&data)
        .arg(&mnt)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt_arg = mnt.to_str().unwrap();
    let pids = pids_with_arg(mnt_arg);
    assert!(!pids.is_empty(), "the background mount process");
    for pid in &pids {
        assert!(!holds(&environ_of(*pid)), "SECRET_KEY in process {pid}");
    }
    sh(dir.path(), &format!("fusermount3 -u {mnt_arg}"));
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// `fusermount3 -u` returns while the old process still commits; a mount started at once must
/// neither fail nor show an older tree: it waits for the old process's lock on the store.
#[test]
fn a_mount_right_after_an_unmount_shows_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let src = dir.path().join("src");
    let mut mount = start(&data, &mnt);
    let mut expected = String::new();
    for round in 0..5 {
        let tree = src.join(format!("t{round}"));
        fs::create_dir_all(&tree).unwrap();
        sh(
            &tree,
            &format!(
                "for i in $(seq 1 40); do printf 'file %s round {round}\\n' $i > f$i; done
                 head -c 20000000 /dev/urandom > big"
            ),
        );
        sh(dir.path(), &format!("cp -a src/t{round} mnt/"));
        expected = describe_tree(&src);
        let old = mount.unmount_no_wait();
        mount = start(&data, &mnt);
        assert_eq!(describe_tree(&mnt), expected, "round {round}: a stale tree");
        let status = {
            let mut old = old;
            old.wait().unwrap()
        };
        assert!(
            status.success(),
            "round {round}: the old mount exited with {status}"
        );
    }
    mount.unmount();
    let mount = start(&data, &mnt);
    assert_eq!(describe_tree(&mnt), expected);
    mount.unmount();
}
