//! Stores written by earlier versions of mutant-mount, mounted by this one. Each fixture in
//! `tests/fixtures/` was made by `scripts/make-format-fixture.sh` with the binary of an older
//! commit: a tree of every kind of file copied in and committed, then one more file left only in
//! the journal by a kill -9. Here every file reads as it was copied in, the old journal is
//! replayed, and the first commits, which rewrite the index in today's format, are killed with
//! -9 at spread-out points: each time the next mount holds every change that returned, and
//! nothing else changed. Needs root, /dev/fuse and fusermount3.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{binary, describe_tree, sh, Mount};

/// Unpacks fixture `name` into `dir`: `src/` (the tree as copied in) and `data/` (the store).
fn unpack(name: &str, dir: &Path) {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.tar.gz"));
    sh(
        dir,
        &format!(
            "tar xzf {} --xattrs --xattrs-include='*'",
            archive.display()
        ),
    );
}

/// The files of the tree under `root` with their contents' MD5, one per line.
fn contents(root: &Path) -> String {
    sh(
        root,
        "find . -type f -print0 | sort -z | xargs -0 -r md5sum",
    )
}

fn fsck_is_clean(data: &Path) {
    let out = Command::new(binary())
        .args(["fsck", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_fixture(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    unpack(name, tmp.path());
    let (src, data, mnt) = (
        tmp.path().join("src"),
        tmp.path().join("data"),
        tmp.path().join("mnt"),
    );

    // Every file as it was copied in, the late one from the old journal included.
    let mount = Mount::start(&data, &mnt, &[]);
    assert_eq!(describe_tree(&mnt), describe_tree(&src), "{name}");
    assert_eq!(
        sh(&mnt, "getfattr --only-values -n user.note small.txt"),
        "hello"
    );
    let links = |root: &Path| std::fs::metadata(root.join("dir/multi-link.bin")).unwrap();
    assert_eq!(links(&mnt).nlink(), links(&src).nlink(), "{name}");
    if links(&src).nlink() == 2 {
        let file = std::fs::metadata(mnt.join("multi.bin")).unwrap();
        assert_eq!(
            file.ino(),
            links(&mnt).ino(),
            "{name}: the names are one file"
        );
    }
    mount.unmount();
    fsck_is_clean(&data);

    // Each round starts again from the old store, changes the mode of every file one by one,
    // and is killed partway: before, during or after the first commit, which rewrites the
    // index in today's format. The changes that returned are logged outside the mount.
    let expected_contents = contents(&src);
    for (round, (mode, kill_after_ms)) in [
        ("640", 0),
        ("604", 40),
        ("660", 150),
        ("606", 400),
        ("644", 1_200),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("round-{round}"));
        std::fs::create_dir(&dir).unwrap();
        unpack(name, &dir);
        let (data, mnt) = (dir.join("data"), dir.join("mnt"));
        let mount = Mount::start(&data, &mnt, &[]);
        let done = dir.join("done");
        let mut writer = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "find . -type f -print0 | sort -z | while IFS= read -r -d '' f; do \
                 chmod {mode} \"$f\" && printf '%s\\n' \"$f\" >> {}; done",
                done.display()
            ))
            .current_dir(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        mount.kill();
        let _ = writer.wait();

        let mount = Mount::start(&data, &mnt, &[]);
        assert_eq!(contents(&mnt), expected_contents, "{name}, round {round}");
        let acknowledged = std::fs::read_to_string(&done).unwrap_or_default();
        for file in acknowledged.lines() {
            let meta = std::fs::metadata(mnt.join(file)).unwrap();
            assert_eq!(
                format!("{:o}", meta.mode() & 0o7777),
                mode,
                "{name}, round {round}: {file} lost its acknowledged chmod"
            );
        }
        eprintln!(
            "{name}, round {round}: killed after {kill_after_ms} ms, {} changes acknowledged",
            acknowledged.lines().count()
        );
        mount.unmount();
        fsck_is_clean(&data);
    }
}

/// Format 2 (commit efeafa2): entries listed every chunk, holes included; no hard links.
#[test]
fn a_store_of_format_2_mounts_replays_its_journal_and_migrates_through_kills() {
    check_fixture("format-2");
}

/// Format 4 (commit 8f27a15): hard links and a paged free list, before small files were packed.
#[test]
fn a_store_of_format_4_mounts_replays_its_journal_and_migrates_through_kills() {
    check_fixture("format-4");
}

/// Format 5 (commit 97bb98d, chunks of 4 KiB): packs, and a file of 700 chunks whose whole
/// chunk map was in its page; the first commit that rewrites its page moves it to segments.
#[test]
fn a_store_of_format_5_mounts_replays_its_journal_and_migrates_through_kills() {
    check_fixture("format-5");
}
