//! What surrounds a mount, through the real binary: key backup and restore, the first mount's
//! key warning, mount(8) and fstab options, systemd's readiness messages, `status` and `sync`
//! over the control socket, and generated completions and man page. The mount tests need root,
//! /dev/fuse and fuse3 (mount.fuse3, fusermount3).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{sh, Mount};
use mutant_mount::keys::MasterKey;

fn run(args: &[&str]) -> Output {
    Command::new(common::binary()).args(args).output().unwrap()
}

fn run_with_input(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(common::binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn new_key_file(path: &Path) -> MasterKey {
    let key = MasterKey::generate();
    key.save_new(path).unwrap();
    key
}

#[test]
fn key_export_import_round_trip_refuses_typos_and_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("a/master.key");
    let key = new_key_file(&original);
    let orig = original.to_str().unwrap();

    let out = run(&["key", "export", "--key-file", orig]);
    assert!(out.status.success(), "{}", text(&out));
    let backup = String::from_utf8(out.stdout).unwrap();
    assert!(backup.contains("checksum:"), "{backup}");
    assert!(
        !backup.contains(&key.to_hex()),
        "the backup is grouped, not the key file's text"
    );

    // Restored on a "new machine" (another data dir), it is the same key, private.
    let restored_dir = dir.path().join("b");
    let out = run_with_input(
        &[
            "key",
            "import",
            "--data-dir",
            restored_dir.to_str().unwrap(),
        ],
        &backup,
    );
    assert!(out.status.success(), "{}", text(&out));
    let restored = restored_dir.join("master.key");
    assert_eq!(MasterKey::load(&restored).unwrap().to_hex(), key.to_hex());
    let mode = std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The fingerprint is the same from both files, and the mount logs it.
    let fp = |path: &Path| {
        let out = run(&["key", "fingerprint", "--key-file", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(fp(&original), fp(&restored));
    assert_eq!(fp(&original).len(), 14);

    // A typo in the backup: refused, with the line, and nothing written.
    let line2 = backup.lines().find(|l| l.starts_with("2:")).unwrap();
    let digit = line2.as_bytes()[4] as char;
    let other = if digit == 'a' { 'b' } else { 'a' };
    let mut typo_line = line2.to_string();
    typo_line.replace_range(4..5, &other.to_string());
    let typo = backup.replace(line2, &typo_line);
    let typo_file = dir.path().join("typo.txt");
    std::fs::write(&typo_file, &typo).unwrap();
    let fresh = dir.path().join("c/master.key");
    let out = run(&[
        "key",
        "import",
        "--key-file",
        fresh.to_str().unwrap(),
        typo_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("line 2 of the key has a typo"),
        "{}",
        text(&out)
    );
    assert!(!fresh.exists());

    // Over another key: refused, the existing key untouched. Over the same key: fine.
    let other_file = dir.path().join("d/master.key");
    let other_key = new_key_file(&other_file);
    let out = run_with_input(
        &["key", "import", "--key-file", other_file.to_str().unwrap()],
        &backup,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("already holds another key"),
        "{}",
        text(&out)
    );
    assert_eq!(
        MasterKey::load(&other_file).unwrap().to_hex(),
        other_key.to_hex()
    );
    let out = run_with_input(&["key", "import", "--key-file", orig], &backup);
    assert!(out.status.success(), "{}", text(&out));

    // No key: a clear error.
    let out = run(&["key", "export", "--key-file", "/nonexistent/key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot read key file"),
        "{}",
        text(&out)
    );
}

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("mutant-mount") && script.contains("status"),
            "{shell}"
        );
    }
    let out = run(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH mutant-mount"), "{page}");
    assert!(page.contains("\\-\\-data\\-dir"), "{page}");
}

/// Waits (with a generous limit, not a pass/fail timing) until `pid` has exited.
fn wait_gone(pid: u32) {
    for _ in 0..1200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("process {pid} did not exit");
}

fn status_json(mnt: &Path) -> serde_json::Value {
    let out = run(&["status", mnt.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn first_mount_tells_the_terminal_where_the_new_key_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = run(&["--data-dir", data.to_str().unwrap(), mnt.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let pid = status_json(&mnt)["pid"].as_u64().unwrap() as u32;
    sh(dir.path(), "echo kept > mnt/f");
    sh(dir.path(), "fusermount3 -u mnt");
    wait_gone(pid);
    let key_file = data.join("master.key");
    assert!(
        said.contains("created a new master key")
            && said.contains(key_file.to_str().unwrap())
            && said.contains("key export"),
        "{said}"
    );
    // The second mount finds the key and its files, and says nothing about a new key.
    let out = run(&["--data-dir", data.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("new master key"), "{}", text(&out));
    let pid = status_json(&mnt)["pid"].as_u64().unwrap() as u32;
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "kept\n");
    sh(dir.path(), "fusermount3 -u mnt");
    wait_gone(pid);
}

/// `mount -t fuse.mutant-mount` and `umount`, through util-linux's mount and fuse3's
/// mount.fuse3, with the options an fstab line has. mount(8) runs the helper without PATH, so
/// the binary must be in a system directory: a private mount namespace puts it in
/// /usr/local/bin for this test alone.
#[test]
fn mount_t_and_umount_work_through_the_system_helper() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(common::binary(), bin.join("mutant-mount")).unwrap();
    let data = dir.path().join("data");
    new_key_file(&data.join("master.key"));
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    let script = format!(
        r#"set -e
        mount --bind {bin} /usr/local/bin
        opts=data_dir={data},allow_other,_netdev,nofail,noauto,user,users,defaults,x-systemd.automount,x-systemd.requires=network-online.target,new_index
        mount -t fuse.mutant-mount mutant {mnt} -o $opts
        grep -q " {mnt} fuse" /proc/self/mounts
        echo through-fstab > {mnt}/f
        pid=$(mutant-mount status {mnt} --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
        umount {mnt}
        while [ -e /proc/$pid ]; do sleep 0.05; done
        ! grep -q " {mnt} " /proc/self/mounts
        mount -t fuse.mutant-mount mutant {mnt} -o data_dir={data},ro
        cat {mnt}/f
        ! touch {mnt}/g 2>/dev/null
        pid=$(mutant-mount status {mnt} --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
        umount {mnt}
        while [ -e /proc/$pid ]; do sleep 0.05; done
        echo done"#,
        bin = bin.display(),
        data = data.display(),
        mnt = dir.path().join("mnt").display(),
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        )
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("through-fstab\ndone"), "{said}");
}

/// What mount(8) passes a `/sbin/mount.fuse.mutant-mount` link: fstab's options untouched and
/// `-t fuse.mutant-mount` after them.
#[test]
fn the_direct_helper_argument_form_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let opts = format!(
        "rw,data_dir={},_netdev,nofail,x-systemd.automount,nosuid,nodev",
        data.display()
    );
    let out = run(&[
        "mutant",
        mnt.to_str().unwrap(),
        "-o",
        &opts,
        "-t",
        "fuse.mutant-mount",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let pid = status_json(&mnt)["pid"].as_u64().unwrap() as u32;
    sh(dir.path(), "echo x > mnt/f && fusermount3 -u mnt");
    wait_gone(pid);
}

#[test]
fn systemd_hears_ready_once_mounted_and_stopping_at_unmount() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // A limit against hanging, not a measurement.
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let env = [(
        "NOTIFY_SOCKET".to_string(),
        socket_path.to_str().unwrap().to_string(),
    )];
    let mount = Mount::start_with_env(&dir.path().join("data"), &dir.path().join("mnt"), &[], &env);
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a READY message");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(common::is_mounted(&mount.mnt), "READY=1 before the mount");
    mount.unmount();
    let n = socket.recv(&mut buf).expect("a STOPPING message");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}

#[test]
fn status_and_sync_reach_the_mount_over_its_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let mnt = mount.mnt.clone();
    sh(
        &mnt,
        "mkdir d && head -c 5000000 /dev/urandom > d/big && echo small > s && ln s s2",
    );
    let out = run(&["sync", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let s = status_json(&mnt);
    assert_eq!(s["mountpoint"], mnt.to_str().unwrap());
    assert_eq!(s["uncommitted"], false, "{s}");
    assert!(s["last_commit_unix"].as_u64().is_some(), "{s}");
    // d, d/big and s, with a second name for s: one file counted once.
    assert_eq!(s["files"], 3, "{s}");
    assert!(s["pads_created"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["store_errors"], 0, "{s}");
    assert_eq!(s["pid"].as_u64().unwrap() as u32, mount.pid());

    // The socket is private, and the plain form reads as a report.
    let socket = mutant_mount::control::socket_path(&mnt.canonicalize().unwrap());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let out = run(&["status", mnt.to_str().unwrap()]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("all changes are committed"), "{report}");
    // --watch reports again every two seconds until stopped.
    let mut watch = Command::new(common::binary())
        .args(["status", "--watch", mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    watch.kill().unwrap();
    let watched = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    let reports = watched.matches("all changes are committed").count();
    assert!(reports >= 2, "{reports} reports: {watched}");
    // Without a mount point: every mount of this user, this one among them.
    let out = run(&["status", "--json"]);
    assert!(text(&out).contains(mnt.to_str().unwrap()), "{}", text(&out));
    mount.unmount();

    // Nothing mounted there any more: a clear error, non-zero.
    let out = run(&["sync", mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no mutant-mount"), "{}", text(&out));
    assert!(!socket.exists(), "the socket is removed at unmount");
}

/// The tier in front of a simulated network, as the bench's network profiles run it: a copy
/// returns with its pads staged, `sync` waits until they are uploaded, and then the store under
/// the tier holds them (a mount without the tier reads them back).
#[test]
fn the_tier_in_front_of_a_simulated_network_stages_until_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    // Three pads, a second each, one at a time: the copy is back long before they are up.
    let slow = [
        "--simulate",
        "put=1s+0ms,concurrency=1",
        "--upload",
        "staged",
    ];
    let mount = Mount::start(&data, &mnt, &slow);
    sh(
        &mnt,
        "head -c 12000000 /dev/urandom > big && md5sum big > ../sum",
    );
    let s = status_json(&mnt);
    assert!(s["staged"]["pads"].as_u64().unwrap() > 0, "{s}");
    let out = run(&["sync", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let s = status_json(&mnt);
    assert_eq!(s["staged"]["pads"], 0, "{s}");
    mount.unmount();

    let mount = Mount::start(&data, &mnt, &[]);
    assert!(status_json(&mnt)["staged"].is_null());
    sh(&mnt, "md5sum -c ../sum");
    mount.unmount();
}

#[test]
fn sync_fails_when_the_store_does() {
    let dir = tempfile::tempdir().unwrap();
    // The store stops accepting writes after the new index's first commit.
    let mount = Mount::start(
        &dir.path().join("data"),
        &dir.path().join("mnt"),
        &["--simulate", "crash-after=4"],
    );
    let mnt = mount.mnt.clone();
    // Small files live in the index: only the commit writes pads.
    for i in 0..20 {
        std::fs::write(mnt.join(format!("f{i}")), b"pending").unwrap();
    }
    let out = run(&["sync", mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("commit failed"), "{}", text(&out));
    let s = status_json(&mnt);
    assert_eq!(s["uncommitted"], true, "{s}");
    assert!(s["store_errors"].as_u64().unwrap() > 0, "{s}");
    assert!(s["last_store_error"].is_string(), "{s}");
    mount.kill();
}

#[test]
fn the_log_stays_quiet_and_names_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    // lsattr asks with an ioctl (FS_IOC_GETFLAGS), which is not supported.
    sh(
        &mount.mnt,
        "echo x > f; lsattr f 2>/dev/null || true; cat missing 2>/dev/null || true",
    );
    let log_path = mount.log_path();
    mount.unmount();
    let log = std::fs::read_to_string(log_path).unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert!(log.contains("op=\"ioctl\""), "{log}");
    // At debug level, what a request logs carries its span: the operation and the inode.
    assert!(log.contains("fuse{op=\"lookup\" node=1}"), "{log}");
}

#[test]
fn a_passphrase_sealed_key_round_trips_and_mounts_unattended() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("data/master.key");
    let key = new_key_file(&key_file);
    let k = key_file.to_str().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let p = pass.to_str().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong horse\n").unwrap();

    let out = run(&[
        "key",
        "passphrase",
        "--key-file",
        k,
        "--new-passphrase-file",
        p,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let sealed = std::fs::read_to_string(&key_file).unwrap();
    assert!(sealed.starts_with("mutant-sealed-key"), "{sealed}");
    assert!(!sealed.contains(&key.to_hex()));
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Without a terminal or a passphrase source: a clear error. With the wrong one: refused.
    let out = run(&["key", "export", "--key-file", k]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--passphrase-file"), "{}", text(&out));
    let out = run(&[
        "key",
        "export",
        "--key-file",
        k,
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("passphrase is wrong"), "{}", text(&out));

    // Export through the passphrase, import elsewhere: the same key.
    let out = run(&["key", "export", "--key-file", k, "--passphrase-file", p]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = dir.path().join("restored.key");
    let out = run_with_input(
        &["key", "import", "--key-file", restored.to_str().unwrap()],
        &String::from_utf8(out.stdout).unwrap(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(MasterKey::load(&restored).unwrap().to_hex(), key.to_hex());

    // An unattended mount (in the background, no terminal) takes the passphrase from a file
    // or a command; a wrong one is refused before anything is mounted.
    let data = dir.path().join("data");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let d = data.to_str().unwrap();
    let m = mnt.to_str().unwrap();
    let out = run(&[
        "--data-dir",
        d,
        "--passphrase-file",
        wrong.to_str().unwrap(),
        "--new-index",
        m,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("passphrase is wrong"), "{}", text(&out));
    assert!(!common::is_mounted(&mnt));
    let cmd = format!("cat {p}");
    let out = run(&[
        "--data-dir",
        d,
        "--passphrase-command",
        &cmd,
        "--new-index",
        m,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let s = status_json(&mnt);
    assert_eq!(
        s["key_fingerprint"],
        mutant_mount::key_backup::fingerprint(&key)
    );
    sh(dir.path(), "fusermount3 -u mnt");
    wait_gone(s["pid"].as_u64().unwrap() as u32);

    // And the passphrase can be taken off again.
    let out = run(&[
        "key",
        "passphrase",
        "--remove",
        "--key-file",
        k,
        "--passphrase-file",
        p,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(MasterKey::load(&key_file).unwrap().to_hex(), key.to_hex());
}

/// `cargo install --path .` installs the package's binaries: only the product. The local test
/// chain that scripts/local-network.sh runs is an example, built on demand.
#[test]
fn cargo_install_installs_only_the_product() {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let targets = meta["packages"][0]["targets"].as_array().unwrap();
    let of_kind = |kind: &str| -> Vec<&str> {
        targets
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == kind))
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(of_kind("bin"), ["mutant-mount"]);
    assert!(of_kind("example").contains(&"evm-testnet"));
}

/// Flips one byte near the end of the `n`-th largest pad file of a local store: inside the
/// sealed bytes of a whole-chunk pad, so that pad no longer authenticates.
fn damage_largest_pad(store: &Path) -> u64 {
    let mut pads: Vec<(u64, std::path::PathBuf)> = walk(store)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == "journal"))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    pads.sort();
    let (len, path) = pads.pop().expect("a pad file");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    len
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn fsck_finds_a_damaged_pad_and_repair_sets_the_file_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mnt = dir.path().join("mnt");
    // Chunks of 1 MiB: `big` takes five pads; `other` one; `small` lives in the index.
    let big = common::content_for("big", 5 << 20);
    let other = common::content_for("other", 300_000);
    let mount = Mount::start(&data, &mnt, &["--chunk-size", "1048576"]);
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/big"), &big).unwrap();
    std::fs::write(mnt.join("other"), &other).unwrap();
    std::fs::write(mnt.join("small"), b"small").unwrap();
    std::fs::hard_link(mnt.join("d/big"), mnt.join("big-link")).unwrap();
    mount.unmount();

    let clean = run(&["fsck", "--data-dir", data_arg]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).contains("6 pads checked"), "{}", text(&clean));

    // One of big's pads (the largest pad files are its whole 1 MiB chunks).
    assert!(damage_largest_pad(&data.join("store")) > 1 << 20);
    let found = run(&["fsck", "--data-dir", data_arg]);
    let report = text(&found);
    assert_eq!(found.status.code(), Some(4), "{report}");
    assert!(report.contains("1 damaged file"), "{report}");
    let line = report.lines().find(|l| l.starts_with("DAMAGED")).unwrap();
    assert!(
        line.contains("/d/big") && line.contains("/big-link"),
        "{line}"
    );
    assert!(!report.contains("/other"), "{report}");

    let repaired = run(&["fsck", "--repair", "--data-dir", data_arg]);
    let report = text(&repaired);
    assert_eq!(repaired.status.code(), Some(1), "{report}");
    assert!(report.contains("set aside under /lost+found/"), "{report}");
    let again = run(&["fsck", "--data-dir", data_arg]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // Mounted: the damaged file's names are gone from where they were and stand under
    // lost+found, readable (no EIO), with the damaged chunk as zeros and the rest intact.
    let mount = Mount::start(&data, &mnt, &[]);
    assert!(!mnt.join("d/big").exists() && !mnt.join("big-link").exists());
    assert_eq!(std::fs::read(mnt.join("other")).unwrap(), other);
    assert_eq!(std::fs::read(mnt.join("small")).unwrap(), b"small");
    let stamps: Vec<_> = std::fs::read_dir(mnt.join("lost+found"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stamps.len(), 1, "{stamps:?}");
    let aside = std::fs::read(stamps[0].join("d/big")).unwrap();
    assert_eq!(aside, std::fs::read(stamps[0].join("big-link")).unwrap());
    assert_eq!(aside.len(), big.len());
    let chunk = 1 << 20;
    let zeroed: Vec<usize> = (0..5)
        .filter(|i| aside[i * chunk..(i + 1) * chunk] != big[i * chunk..(i + 1) * chunk])
        .collect();
    assert_eq!(zeroed.len(), 1, "exactly the damaged chunk differs");
    let z = zeroed[0];
    assert!(aside[z * chunk..(z + 1) * chunk].iter().all(|&b| b == 0));
    let notes = std::fs::read_to_string(stamps[0].join("DAMAGE.txt")).unwrap();
    assert!(notes.contains("d/big ->"), "{notes}");
    assert!(
        notes.contains(&format!("bytes {}..{}", z * chunk, (z + 1) * chunk)),
        "{notes}"
    );

    // A mounted store is not checked: the mount holds it.
    let busy = run(&["fsck", "--data-dir", data_arg]);
    assert_eq!(busy.status.code(), Some(8), "{}", text(&busy));
    mount.unmount();
}

#[test]
fn fsck_without_a_key_or_with_a_bad_flag_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["fsck", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains("no key file"), "{}", text(&out));
    let out = run(&["fsck", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// The number at the start of gc's report line.
fn leading_number(report: &str) -> usize {
    let line = report.lines().next().unwrap_or("");
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"))
}

#[test]
fn gc_finds_the_pads_a_killed_mount_left_and_new_files_reuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mnt = dir.path().join("mnt");
    // Chunks of 64 KiB, each upload a quarter of a second, four at a time: a 4 MiB copy
    // takes about four seconds, and the kill lands half-way.
    let slow = [
        "--chunk-size",
        "65536",
        "--simulate",
        "put=250ms+0s,concurrency=4",
    ];
    let mount = Mount::start(&data, &mnt, &slow);
    let kept = common::content_for("kept", 300_000);
    std::fs::write(mnt.join("kept"), &kept).unwrap();
    assert!(run(&["sync", mnt.to_str().unwrap()]).status.success());
    let copy = format!("head -c 4194304 /dev/urandom > {}/cut", mnt.display());
    let mut writer = Command::new("sh").arg("-c").arg(copy).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    mount.kill();
    let _ = writer.wait();

    let found = run(&["gc", "--data-dir", data_arg]);
    assert!(found.status.success(), "{}", text(&found));
    let leaked = leading_number(&text(&found));
    assert!((1..=64).contains(&leaked), "{}", text(&found));
    assert!(text(&found).contains("gc --free"), "{}", text(&found));
    let freed = run(&["gc", "--free", "--data-dir", data_arg]);
    assert!(freed.status.success(), "{}", text(&freed));
    assert_eq!(leading_number(&text(&freed)), leaked, "{}", text(&freed));
    let again = run(&["gc", "--data-dir", data_arg]);
    assert_eq!(text(&again).trim(), "no pads to reclaim");
    let fsck = run(&["fsck", "--data-dir", data_arg]);
    assert_eq!(fsck.status.code(), Some(0), "{}", text(&fsck));

    // The next 64-chunk file takes the freed pads instead of creating as many.
    let mount = Mount::start(&data, &mnt, &[]);
    assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), kept);
    let next = common::content_for("next", 4 << 20);
    std::fs::write(mnt.join("next"), &next).unwrap();
    assert!(run(&["sync", mnt.to_str().unwrap()]).status.success());
    let created = status_json(&mnt)["pads_created"].as_u64().unwrap() as usize;
    assert!(
        created + leaked <= 64 + 4,
        "{created} created after {leaked} freed"
    );
    mount.unmount();
    let mount = Mount::start(&data, &mnt, &[]);
    assert_eq!(std::fs::read(mnt.join("next")).unwrap(), next);
    mount.unmount();
}
