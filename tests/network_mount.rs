//! A real mount over a local Autonomi network: `rsync -a` a tree in, compare it, unmount, then
//! mount again from a fresh data dir holding only the master key (no local state at all) and
//! compare byte for byte.
//!
//! ```text
//! scripts/local-network.sh start
//! cargo test --test network_mount -- --ignored --nocapture
//! scripts/local-network.sh stop
//! ```
//!
//! The tests are `#[ignore]`d: a plain `cargo test` reports them as ignored, never as passed.
//! Peers come from
//! ANT_PEERS or the script's state dir (MUTANT_LOCALNET_DIR, default
//! ~/.cache/mutant-mount/localnet); the wallet from SECRET_KEY or the state dir's wallet.key.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{content_for, describe_tree, sh, Mount};

fn state_dir() -> PathBuf {
    match std::env::var_os("MUTANT_LOCALNET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/mutant-mount/localnet"),
    }
}

/// The mount's arguments and environment for the local network, as a user would give them.
fn network_args(state: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = vec!["--network".to_string(), "local".to_string()];
    let mut env = vec![("EVM_NETWORK".to_string(), "local".to_string())];
    if std::env::var_os("ANT_PEERS").is_none() {
        let peers = std::fs::read_to_string(state.join("peers")).unwrap_or_else(|e| {
            panic!(
                "no ANT_PEERS and no {}: is the local network up? ({e})",
                state.join("peers").display()
            )
        });
        env.push(("ANT_PEERS".to_string(), peers.trim().to_string()));
    }
    // The network's own bootstrap cache, not the user's.
    env.push((
        "XDG_DATA_HOME".to_string(),
        state.join("home/.local/share").display().to_string(),
    ));
    if std::env::var_os("SECRET_KEY").is_none() {
        args.push("--wallet-key-file".to_string());
        args.push(state.join("wallet.key").display().to_string());
    }
    (args, env)
}

/// What every test starts from: the local network's state dir, the mount's arguments for it
/// (plus a test's own), and a temp dir with `src/` (for the test to fill), `data1/` and `mnt/`.
struct Scene {
    state: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    tmp: tempfile::TempDir,
    src: PathBuf,
    data1: PathBuf,
    mnt: PathBuf,
}

impl Scene {
    fn new(extra: &[&str]) -> Scene {
        let state = state_dir();
        let (mut args, env) = network_args(&state);
        args.extend(extra.iter().map(|a| a.to_string()));
        let tmp = tempfile::tempdir().unwrap();
        Scene {
            state,
            args,
            env,
            src: tmp.path().join("src"),
            data1: tmp.path().join("data1"),
            mnt: tmp.path().join("mnt"),
            tmp,
        }
    }

    /// Makes the test tree in `src/`, copies it (`cp -a`) into a first mount of `data1/` as
    /// `dst/`, and unmounts (which waits for the upload); returns the tree's listing.
    fn copy_tree_in(&self) -> String {
        make_tree(&self.src);
        let expected = describe_tree(&self.src);
        let copy = format!("cp -a {} {}/dst", self.src.display(), self.mnt.display());
        copy_in_and_unmount(self.mount(&self.data1), &copy, &expected);
        expected
    }

    /// The data dir `data` mounted on the scene's mount point.
    fn mount(&self, data: &Path) -> Mount {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Mount::start_with_env(data, &self.mnt, &args, &self.env)
    }
}

/// The "network session cost" line a mount logs at unmount.
fn cost_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .rev()
        .find(|l| l.contains("network session cost"))
        .unwrap_or_else(|| panic!("no cost line in {}:\n{text}", log.display()))
        .to_string()
}

/// The figure after `key=` in a log line.
fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 2;
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

fn make_tree(src: &Path) {
    std::fs::create_dir_all(src).unwrap();
    let big = content_for("big", 4 * 1024 * 1024 + 1_234_567);
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    std::fs::write(src.join("a/b/c/big.bin"), &big).unwrap();
    std::fs::write(src.join("a/small.txt"), content_for("small", 3000)).unwrap();
    std::fs::write(src.join("a/b/note.md"), b"# notes\nhello\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    sh(
        src,
        "chmod 755 script.sh; chmod 600 a/small.txt; chmod 444 a/b/note.md; \
         mkdir -p private empty-dir; chmod 700 private; \
         echo secret > private/key; chmod 640 private/key; \
         ln -s a/b/c/big.bin link-to-big; ln -s ../small.txt a/b/up-link; \
         ln -s /nonexistent/target dangling; ln -s a dir-link; \
         touch -d '2021-03-04 05:06:07' a/small.txt empty; \
         touch -h -d '2020-01-02 03:04:05' dangling; \
         touch -d '2019-05-06 07:08:09' a/b",
    );
}

/// A fresh data dir, `data2` under `tmp`, holding only a copy of the master key in `data1`:
/// what a new machine has.
fn key_only(tmp: &Path, data1: &Path) -> PathBuf {
    let data2 = tmp.join("data2");
    std::fs::create_dir_all(&data2).unwrap();
    std::fs::copy(data1.join("master.key"), data2.join("master.key")).unwrap();
    data2
}

/// Runs `copy` (which fills `dst/` in the mount), checks the copy against `expected`, unmounts;
/// reports the times and returns the mount's log.
fn copy_in_and_unmount(mount: Mount, copy: &str, expected: &str) -> PathBuf {
    let t = Instant::now();
    sh(Path::new("/"), copy);
    eprintln!("  {copy}: {:?}", t.elapsed());
    assert_eq!(describe_tree(&mount.path("dst")), expected);
    let log = mount.log_path();
    let t = Instant::now();
    mount.unmount();
    eprintln!("  unmount: {:?}", t.elapsed());
    log
}

#[test]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
fn rsync_over_the_network_and_remount_from_the_key_alone() {
    let scene = Scene::new(&[]);
    let Scene {
        state: _,
        tmp,
        src,
        data1,
        mnt,
        ..
    } = &scene;
    make_tree(src);
    let expected = describe_tree(src);

    // First mount: a new key, a new file system on the network.
    let t = Instant::now();
    let mount = scene.mount(data1);
    eprintln!("  mount (new key): {:?}", t.elapsed());
    let log1 = copy_in_and_unmount(
        mount,
        &format!("rsync -a {}/ {}/dst/", src.display(), mnt.display()),
        &expected,
    );
    let cost1 = cost_line(&log1);
    eprintln!("  first session: {cost1}");
    let created1: u64 = field(&cost1, "pads_created").parse().unwrap();
    // Two chunks for the big file, one for each small one, the index: at least a handful.
    assert!(created1 >= 5, "only {created1} pads created: {cost1}");
    let paid1: u128 = field(&cost1, "atto_paid").parse().unwrap();
    assert!(paid1 > 0, "nothing paid: {cost1}");
    // Pads created together are paid for together: never more payments than pads.
    let payments1: u64 = field(&cost1, "payments").parse().unwrap();
    assert!(
        (1..=created1).contains(&payments1),
        "{payments1} payments for {created1} pads: {cost1}"
    );

    // Second mount: a fresh data dir with only a copy of the master key.
    let data2 = key_only(tmp.path(), data1);
    let t = Instant::now();
    let mount = scene.mount(&data2);
    eprintln!("  mount (key only): {:?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    sh(
        tmp.path(),
        &format!(
            "diff -r --no-dereference {}/ {}/dst/",
            src.display(),
            mnt.display()
        ),
    );
    eprintln!("  compare (cold, from the network): {:?}", t.elapsed());
    let log2 = mount.log_path();
    mount.unmount();
    let cost2 = cost_line(&log2);
    eprintln!("  second session: {cost2}");
    assert!(
        !data2.join("store").exists(),
        "a network mount made a local store"
    );
}

/// A source tree as the issue measured it (544 files of 4 to 18 KB, about 6 MB; the issue's took 246
/// paid pads when each small file had a pad of its own): packed, it takes about its size in
/// pads, and reads back from the network with only the key.
#[test]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
fn a_tree_of_small_files_takes_about_its_size_in_pads() {
    let scene = Scene::new(&[]);
    let Scene {
        state: _,
        tmp,
        src,
        data1,
        mnt,
        ..
    } = &scene;
    let mut bytes = 0;
    for i in 0..544usize {
        let dir = src.join(format!("crate{}/src/m{}", i % 6, i % 17));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 4_000 + (i * 7_919) % 14_000;
        std::fs::write(
            dir.join(format!("f{i}.rs")),
            content_for(&format!("{i}"), len),
        )
        .unwrap();
        bytes += len;
    }
    let expected = describe_tree(src);
    let mount = scene.mount(data1);
    let t = Instant::now();
    let copy = format!("rsync -a {}/ {}/dst/", src.display(), mnt.display());
    sh(Path::new("/"), &copy);
    let copied = t.elapsed();
    let bin = common::binary();
    sh(Path::new("/"), &format!("{bin} sync {}", mnt.display()));
    eprintln!(
        "  rsync of 544 files ({bytes} bytes): {copied:?} into the tier, {:?} until uploaded",
        t.elapsed()
    );
    let log = copy_in_and_unmount(mount, "true", &expected);
    let cost = cost_line(&log);
    eprintln!("  {cost}");
    let created: usize = field(&cost, "pads_created").parse().unwrap();
    // The data in ceil(bytes / pad) packs and one more for first fit; the index root, a page
    // and a free-list page or two.
    let most = bytes.div_ceil(4 << 20) + 1 + 4;
    assert!(
        created <= most,
        "{created} pads created for 544 files: {cost}"
    );

    let data2 = key_only(tmp.path(), data1);
    let mount = scene.mount(&data2);
    let t = Instant::now();
    sh(
        tmp.path(),
        &format!("diff -r {}/ {}/dst/", src.display(), mnt.display()),
    );
    eprintln!("  compare (cold, from the network): {:?}", t.elapsed());
    mount.unmount();
}

/// The antnode processes of the local network, stopped (SIGSTOP) until dropped.
struct StoppedNodes(Vec<String>);

impl StoppedNodes {
    /// Every node.
    fn stop(state: &Path) -> StoppedNodes {
        Self::stop_some(state, usize::MAX)
    }

    /// The last `n` nodes by number (the first, which the mount bootstraps from, is kept).
    fn stop_some(state: &Path, n: usize) -> StoppedNodes {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(state.join("pids")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(number) = name
                .strip_prefix("node-")
                .and_then(|n| n.strip_suffix(".pid"))
            {
                let number: u32 = number.parse().unwrap_or(u32::MAX);
                let pid = std::fs::read_to_string(&path).unwrap().trim().to_string();
                pids.push((number, pid));
            }
        }
        assert!(
            !pids.is_empty(),
            "no antnode pid files in {}",
            state.display()
        );
        pids.sort_by_key(|(number, _)| *number);
        let pids: Vec<String> = pids.into_iter().rev().take(n).map(|(_, p)| p).collect();
        sh(state, &format!("kill -STOP {}", pids.join(" ")));
        StoppedNodes(pids)
    }
}

impl Drop for StoppedNodes {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .args(&self.0)
            .status();
    }
}

#[test]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
fn a_copy_with_the_network_gone_completes_and_uploads_at_the_next_mount() {
    let scene = Scene::new(&["--unmount-wait", "5"]);
    let Scene {
        state,
        tmp,
        src,
        data1,
        mnt,
        ..
    } = &scene;
    make_tree(src);
    let expected = describe_tree(src);

    let mount = scene.mount(data1);
    let nodes = StoppedNodes::stop(state);
    let log1 = copy_in_and_unmount(
        mount,
        &format!("cp -a {} {}/dst", src.display(), mnt.display()),
        &expected,
    );
    let text = std::fs::read_to_string(&log1).unwrap();
    assert!(
        text.contains("not yet uploaded") && text.contains("uploaded by the next mount"),
        "no message about what is left:\n{text}"
    );
    drop(nodes);

    // The same data dir with the network back: the next mount uploads what was left.
    let mount = scene.mount(data1);
    let t = Instant::now();
    sh(
        tmp.path(),
        &format!("{} sync {}", common::binary(), mnt.display()),
    );
    eprintln!("  uploads drained: {:?}", t.elapsed());
    mount.unmount();

    // A fresh data dir holding only the key sees everything.
    let data2 = key_only(tmp.path(), data1);
    let mount = scene.mount(&data2);
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    mount.unmount();
}

/// A data dir that has mounted before mounts with every node stopped: from its tier, after a
/// bounded wait. What the tier holds reads; a write is staged; once the nodes are back the
/// mount joins by itself and uploads it, so a fresh data dir with only the key sees it.
#[test]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
fn a_mount_with_the_network_gone_starts_from_the_tier_and_uploads_once_it_is_back() {
    let scene = Scene::new(&[]);
    let Scene {
        state,
        tmp,
        data1,
        mnt,
        ..
    } = &scene;
    let expected = scene.copy_tree_in();

    let nodes = StoppedNodes::stop(state);
    let t = Instant::now();
    let mount = scene.mount(data1);
    eprintln!("  mount with the network gone: {:?}", t.elapsed());
    let log = std::fs::read_to_string(mount.log_path()).unwrap();
    assert!(log.contains("mounting offline"), "{}", mount.log_tail());
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    sh(
        mnt,
        "printf 'written offline\\n' > offline.txt && mkdir made-offline",
    );
    drop(nodes);
    let t = Instant::now();
    sh(
        tmp.path(),
        &format!("timeout 300 {} sync {}", common::binary(), mnt.display()),
    );
    eprintln!("  joined and uploaded: {:?}", t.elapsed());
    mount.unmount();

    let data2 = key_only(tmp.path(), data1);
    let mount = scene.mount(&data2);
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    assert_eq!(
        std::fs::read(mnt.join("offline.txt")).unwrap(),
        b"written offline\n"
    );
    assert!(mnt.join("made-offline").is_dir());
    mount.unmount();
}

/// With a third of the nodes stopped, a fresh data dir with only the key still mounts and
/// reads the whole tree (a pad from the nodes of its close group that answer, where a majority
/// cannot), and a write is staged and uploaded; nothing fails for want of the missing nodes.
#[test]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
fn a_third_of_the_nodes_gone_the_tree_still_reads_and_a_write_uploads() {
    let scene = Scene::new(&[]);
    let Scene {
        state,
        tmp,
        data1,
        mnt,
        ..
    } = &scene;
    let expected = scene.copy_tree_in();

    let nodes = std::fs::read_dir(state.join("pids"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("node-")
        })
        .count();
    let stopped = StoppedNodes::stop_some(state, nodes / 3);
    let data2 = key_only(tmp.path(), data1);
    let t = Instant::now();
    let mount = scene.mount(&data2);
    eprintln!(
        "  mount from the key alone, {} of {nodes} nodes stopped: {:?}",
        nodes / 3,
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    eprintln!("  read the tree: {:?}", t.elapsed());
    let written = content_for("degraded", 3_000_000);
    let t = Instant::now();
    std::fs::write(mnt.join("written-degraded.bin"), &written).unwrap();
    eprintln!("  wrote a 3 MB file: {:?}", t.elapsed());
    // Its upload is the network's to allow: an update goes through once the nodes now closest
    // to the pad hold it, which replication from its earlier holders brings, and those may be
    // among the nodes stopped (20 s to over 10 minutes in CI). Reported, and awaited in full
    // once the nodes are back.
    let t = Instant::now();
    let sync = format!("timeout 120 {} sync {}", common::binary(), mnt.display());
    match common::sh_output(tmp.path(), &sync).status.success() {
        true => eprintln!("  uploaded it with the nodes stopped: {:?}", t.elapsed()),
        false => eprintln!(
            "  not uploaded within {:?} with the nodes stopped",
            t.elapsed()
        ),
    }
    drop(stopped);
    let t = Instant::now();
    sh(
        tmp.path(),
        &format!("timeout 600 {} sync {}", common::binary(), mnt.display()),
    );
    eprintln!(
        "  uploaded once the nodes were back: {:?} more",
        t.elapsed()
    );
    mount.unmount();

    let data3 = tmp.path().join("data3");
    std::fs::create_dir_all(&data3).unwrap();
    std::fs::copy(data1.join("master.key"), data3.join("master.key")).unwrap();
    let mount = scene.mount(&data3);
    let read = std::fs::read(mnt.join("written-degraded.bin")).unwrap_or_else(|e| {
        panic!(
            "the file written with the nodes stopped: {e}; the mount's log:\n{}",
            mount.log_tail()
        )
    });
    assert!(
        read == written,
        "the file written with the nodes stopped differs"
    );
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    mount.unmount();
}

/// SIGTERM while a copy's pads are still uploading to the network: the mount exits within its
/// `--unmount-wait` (it keeps what is not uploaded, and says so), and the next mount of the same
/// data dir uploads the rest, so that a fresh data dir with only the key reads it all.
#[test]
#[ignore = "needs a local Autonomi network (scripts/local-network.sh)"]
fn sigterm_during_uploads_exits_in_time_and_the_next_mount_finishes() {
    let scene = Scene::new(&["--unmount-wait", "2"]);
    let Scene {
        state: _,
        tmp,
        src,
        data1,
        mnt,
        ..
    } = &scene;
    std::fs::create_dir_all(src).unwrap();
    std::fs::write(src.join("big.bin"), content_for("big", 40 << 20)).unwrap();
    for i in 0..40 {
        std::fs::write(
            src.join(format!("f{i}")),
            content_for(&format!("{i}"), 20_000),
        )
        .unwrap();
    }
    let expected = describe_tree(src);

    let mut mount = scene.mount(data1);
    sh(
        Path::new("/"),
        &format!("cp -a {} {}/dst", src.display(), mnt.display()),
    );
    let t = Instant::now();
    mount.signal(libc::SIGTERM);
    let status = mount.wait_exit(std::time::Duration::from_secs(60));
    eprintln!("  exit after SIGTERM: {:?} ({status})", t.elapsed());
    assert!(status.success(), "the mount failed on SIGTERM: {status}");
    let log = std::fs::read_to_string(mount.log_path()).unwrap();
    let kept = log.contains("uploaded by the next mount");
    eprintln!("  left pads for the next mount: {kept}");
    drop(mount);
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mnt)
        .status();

    let mount = scene.mount(data1);
    let t = Instant::now();
    sh(
        Path::new("/"),
        // Bounded: a network that cannot take the uploads fails the test rather than hang it.
        &format!("timeout 300 {} sync {}", common::binary(), mnt.display()),
    );
    eprintln!("  the next mount's uploads drained: {:?}", t.elapsed());
    mount.unmount();

    let data2 = key_only(tmp.path(), data1);
    let mount = scene.mount(&data2);
    assert_eq!(describe_tree(&mnt.join("dst")), expected);
    mount.unmount();
}
