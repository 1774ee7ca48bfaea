//! Real mounts used the way people use a folder: shell tools, tar, rsync, editors, file
//! managers, sqlite, and crashes. Needs root, /dev/fuse and fusermount3 (see .ci/run).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{content_for, describe_tree, sh, sh_output, Mount};

fn setup() -> (tempfile::TempDir, Mount) {
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    (dir, mount)
}

/// Inode numbers survive a remount, as on a disk: git compares them in its index, and a changed
/// number makes `git status` read every file again ("refreshing the index"). A file made again
/// under a name removed while open gets a new number, as the old file is still there; once
/// the kernel has forgotten a removed file, its number is free again, as on ext4.
#[test]
fn inode_numbers_survive_a_remount() {
    let (dir, mount) = setup();
    let mnt = mount.mnt.clone();
    sh(
        &mnt,
        "mkdir -p d/e && printf a > d/a && printf b > d/e/b && ln -s a d/link
         printf h > h1 && ln h1 h2",
    );
    let numbers = |mnt: &Path| sh_output(mnt, "find . -printf '%p %i\\n' | sort").stdout;
    let before = String::from_utf8(numbers(&mnt)).unwrap();
    assert_eq!(before.lines().count(), 8, "{before}");
    let distinct: std::collections::HashSet<&str> = before
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(distinct.len(), 7, "h1 and h2 share one number: {before}");
    let held = fs::File::open(mnt.join("d/a")).unwrap();
    let a = held.metadata().unwrap().ino();
    fs::remove_file(mnt.join("d/a")).unwrap();
    fs::write(mnt.join("d/a"), b"again").unwrap();
    assert_ne!(fs::metadata(mnt.join("d/a")).unwrap().ino(), a);
    assert_eq!(held.metadata().unwrap().ino(), a);
    drop(held);
    // The kernel forgets a removed file once nothing holds it (FUSE FORGET, sent when it
    // gets round to it): then the name made again gets its number back.
    let reused = (0..100).any(|_| {
        fs::remove_file(mnt.join("d/a")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs::write(mnt.join("d/a"), b"again").unwrap();
        fs::metadata(mnt.join("d/a")).unwrap().ino() == a
    });
    assert!(reused, "the number of a forgotten file is given again");
    mount.unmount();

    let mount = Mount::start(&dir.path().join("data"), &mnt, &[]);
    let after = String::from_utf8(numbers(&mnt)).unwrap();
    let unchanged = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|l| !l.starts_with("./d/a "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(unchanged(&after), unchanged(&before));
    mount.unmount();
}

/// A tree with nested dirs, symlinks, odd modes, empty files and files larger than one pad.
fn make_tree(root: &Path) {
    sh(
        root,
        "mkdir -p a/b/c d/e empty-dir 'with space'
         printf 'hello\\n' > a/hello.txt
         : > a/b/empty
         head -c 9000000 /dev/urandom > a/b/c/big.bin
         head -c 4190208 /dev/urandom > exactly-one-pad.bin
         head -c 12345 /dev/urandom > 'with space/f i l e'
         seq 1 100000 > d/e/numbers.txt
         chmod 0600 a/hello.txt; chmod 0755 d/e/numbers.txt; chmod 0711 d
         chmod 4755 a/b/empty
         ln -s ../hello.txt a/b/link-up
         ln -s /nonexistent/target dangling
         ln -s a/b/c/big.bin big-link
         touch -d '2001-02-03 04:05:06' a/hello.txt
         touch -h -d '2002-01-01 00:00:00' dangling",
    );
}

#[test]
fn shell_tools_behave_as_on_a_local_disk() {
    let (dir, mount) = setup();
    let script = "
        mkdir -p src/sub && printf 'one\\n' > src/sub/one && printf 'two\\n' > src/two
        cp -a src copy && mv copy moved && rm -r src
        ln -s moved/two two-link && cat two-link
        dd if=/dev/zero of=holes bs=1k count=1 seek=5000 status=none
        seq 1 1000000 > rand
        dd if=rand of=patched bs=64k count=100 status=none
        printf 'XYZ' | dd of=patched bs=1 seek=1234567 conv=notrunc status=none
        truncate -s 100 rand && truncate -s 5000000 rand
        printf 'tail' >> rand
        find . | sort
        du -s --apparent-size holes
        stat -c '%s %F %a' holes rand patched two-link moved
        md5sum holes rand patched moved/sub/one moved/two
        echo appended >> moved/two && cat moved/two
        ";
    let local = tempfile::tempdir().unwrap();
    let expected = sh(local.path(), script);
    let got = sh(&mount.mnt, script);
    assert_eq!(got, expected);

    let df = sh(&mount.mnt, "df -P . | tail -1");
    let fields: Vec<&str> = df.split_whitespace().collect();
    assert_eq!(fields[0], "mutant-mount");
    assert!(
        fields[3].parse::<u64>().unwrap() > 0,
        "df shows free space: {df}"
    );
    mount.unmount();

    // Everything is there again after a remount.
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let again = sh(
        &mount.mnt,
        "md5sum holes rand patched moved/sub/one moved/two; stat -c '%s %a' rand",
    );
    let want = sh(
        local.path(),
        "md5sum holes rand patched moved/sub/one moved/two; stat -c '%s %a' rand",
    );
    assert_eq!(again, want);
    mount.unmount();
}

#[test]
fn rsync_into_the_mount_is_complete_and_idempotent_across_remounts() {
    let (dir, mount) = setup();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let dst = mount.path("dst");
    sh(dir.path(), &format!("rsync -a src/ {}/", dst.display()));
    assert_eq!(describe_tree(&dst), describe_tree(&src));

    let again = sh(
        dir.path(),
        &format!("rsync -a --itemize-changes src/ {}/", dst.display()),
    );
    assert_eq!(again, "", "a second rsync must transfer nothing");
    mount.unmount();

    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    assert_eq!(describe_tree(&dst), describe_tree(&src));
    let again = sh(
        dir.path(),
        &format!("rsync -a --itemize-changes src/ {}/", dst.display()),
    );
    assert_eq!(again, "", "nothing to transfer after a remount either");
    mount.unmount();
}

/// A directory of many entries (the kernel lists it over many calls, each entry with its
/// attributes) shows the same `ls -l` as a local one, also from a fresh mount.
#[test]
fn a_large_directory_lists_like_a_local_one() {
    let (dir, mount) = setup();
    let script = "mkdir big && cd big
        for i in $(seq 1 700); do
            head -c $((i * 37 % 5000)) /dev/zero > f$i
            chmod $((600 + i % 8)) f$i
            touch -d @$((1000000000 + i * 3600)) f$i
        done
        mkdir sub && ln -s f1 link && touch -h -d @1500000000 sub link";
    let local = tempfile::tempdir().unwrap();
    sh(local.path(), script);
    sh(&mount.mnt, script);
    let listing = "ls -ln --time-style=+%s big | grep -v '^total'";
    let want = sh(local.path(), listing);
    assert_eq!(want.lines().count(), 702);
    let same_as_local = |mount: &Mount| {
        let got = sh(&mount.mnt, listing);
        let first_difference = got.lines().zip(want.lines()).find(|(g, w)| g != w);
        assert!(
            got == want,
            "{} lines listed, {} local; first difference (mount, local): {first_difference:?}",
            got.lines().count(),
            want.lines().count()
        );
    };
    same_as_local(&mount);
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    same_as_local(&mount);
    mount.unmount();
}

/// A program that unlinks each name as readdir returns it, in one pass over a directory of
/// 5,000 files (a one-pass `rm -r`, a file manager emptying a folder), leaves nothing behind:
/// directory offsets stay valid while names are removed.
#[test]
fn deleting_while_listing_empties_a_large_directory() {
    let (_dir, mount) = setup();
    sh(
        &mount.mnt,
        "mkdir many && cd many && for i in $(seq 1 5000); do : > f$i; done",
    );
    let removed = sh(
        &mount.mnt,
        "python3 -c '
import os
n = 0
with os.scandir(\"many\") as it:
    for entry in it:
        os.unlink(entry.path)
        n += 1
print(n)'",
    );
    assert_eq!(removed.trim(), "5000");
    assert_eq!(fs::read_dir(mount.path("many")).unwrap().count(), 0);
    fs::remove_dir(mount.path("many")).unwrap();
    mount.unmount();
}

/// What `qemu-img create disk.img 1T` or a download manager's preallocation does: sparse files
/// of a terabyte and of the largest size, with bytes near 2^32, chunk boundaries and the end,
/// read back byte for byte after a remount (so from the store, not the page cache). Past the
/// largest size, `truncate` says "File too large". Such a file once left the file system
/// unable to commit or mount.
#[test]
fn huge_sparse_files_survive_a_remount() {
    let (dir, mount) = setup();
    let script = "truncate -s 1T tera && truncate -s 16T max
        printf 'first' | dd of=tera bs=1 seek=0 conv=notrunc status=none
        printf 'across-2^32' | dd of=tera bs=1 seek=$(( (1 << 32) - 5 )) conv=notrunc status=none
        printf 'chunk-edge' | dd of=tera bs=1 seek=$(( 4190208 * 3 - 4 )) conv=notrunc status=none
        printf 'end!' | dd of=tera bs=1 seek=$(( (1 << 40) - 4 )) conv=notrunc status=none
        printf 'last' | dd of=max bs=1 seek=$(( (1 << 44) - 4 )) conv=notrunc status=none";
    sh(&mount.mnt, script);
    let probe = "stat -c '%n %s' tera max
        for at in 0 $(( (1 << 32) - 8 )) $(( 4190208 * 3 - 6 )) $(( (1 << 40) - 6 )) $(( 1 << 39 )); do
            dd if=tera bs=1 skip=$at count=16 status=none | od -An -c | tr -s ' '
        done
        dd if=max bs=1 skip=$(( (1 << 44) - 6 )) count=16 status=none | od -An -c | tr -s ' '";
    let before = sh(&mount.mnt, probe);
    assert!(before.contains("tera 1099511627776"), "{before}");
    assert!(before.contains("a c r o s s - 2 ^ 3 2"), "{before}");
    assert!(before.contains("l a s t"), "{before}");
    let too_big = sh_output(&mount.mnt, "truncate -s 17T max");
    assert!(!too_big.status.success());
    assert!(
        String::from_utf8_lossy(&too_big.stderr).contains("File too large"),
        "{}",
        String::from_utf8_lossy(&too_big.stderr)
    );
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    assert_eq!(sh(&mount.mnt, probe), before);
    mount.unmount();
}

/// Holes take no room and tools see them: `du` counts what is stored, `lseek` finds data and
/// holes (by chunk), so `cp --sparse` and `tar --sparse` skip the zeros instead of reading
/// them, and `df` does not count holes as used. Checked after a remount.
#[test]
fn holes_are_holes_to_du_lseek_cp_tar_and_df() {
    let (dir, mount) = setup();
    let data_at: u64 = 50 << 30;
    sh(
        &mount.mnt,
        &format!(
            "truncate -s 100G big && printf data | dd of=big bs=1 seek={data_at} conv=notrunc status=none
            truncate -s 1G mid && printf middle | dd of=mid bs=1 seek=$(( 512 << 20 )) conv=notrunc status=none"
        ),
    );
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    for name in ["big", "mid"] {
        let meta = fs::metadata(mount.path(name)).unwrap();
        assert!(
            meta.blocks() * 512 <= 8 << 20,
            "{name}: {} blocks",
            meta.blocks()
        );
    }
    let du = sh(&mount.mnt, "du -k big mid | cut -f1 | tr '\n' ' '");
    assert!(
        du.split_whitespace()
            .all(|k| k.parse::<u64>().unwrap() <= 8192),
        "du: {du}"
    );

    let file = fs::File::open(mount.path("big")).unwrap();
    let seek = |offset: u64, whence| {
        use std::os::fd::AsRawFd;
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
        (at >= 0).then_some(at as u64)
    };
    const CHUNK: u64 = 4190208;
    let chunk_start = data_at / CHUNK * CHUNK;
    assert_eq!(seek(0, libc::SEEK_HOLE), Some(0));
    assert_eq!(seek(0, libc::SEEK_DATA), Some(chunk_start));
    assert_eq!(seek(data_at, libc::SEEK_DATA), Some(data_at));
    // Holes are found by chunk: the data runs to the end of what its chunk holds.
    let hole = seek(data_at, libc::SEEK_HOLE).unwrap();
    assert!(
        (data_at + 4..=chunk_start + CHUNK).contains(&hole),
        "{hole}"
    );
    assert_eq!(seek(hole, libc::SEEK_DATA), None, "no data after");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    assert_eq!(seek(100 << 30, libc::SEEK_HOLE), None, "past the end");

    let copied = sh(
        &mount.mnt,
        "cp --sparse=always mid mid2 && cmp mid mid2 && du -k mid2 | cut -f1
        tar --sparse -cf mid.tar mid && stat -c %s mid.tar",
    );
    let sizes: Vec<u64> = copied.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(sizes[0] <= 8192, "cp --sparse copy: {copied}");
    // The archive holds the chunk `middle` lies in, not the gigabyte.
    assert!(sizes[1] <= 2 * CHUNK, "tar --sparse archive: {copied}");
    drop(file);
    let used = sh(&mount.mnt, "df -k --output=used . | tail -1");
    assert!(
        used.trim().parse::<u64>().unwrap() < 64 << 10,
        "df counts holes: {used} KiB used"
    );
    mount.unmount();
}

/// Hard links as tools make them: `ln`, then `cp -a` and `rsync -aH` of a tree with links
/// into the mount keep every group of names one file (one inode, one link count), also after
/// a remount; a write through one name is seen through the others; removing a name keeps the
/// rest.
#[test]
fn hard_links_survive_cp_rsync_and_a_remount() {
    let (dir, mount) = setup();
    let src = tempfile::tempdir().unwrap();
    sh(
        src.path(),
        "mkdir -p tree/sub && head -c 300000 /dev/urandom > tree/data
         ln tree/data tree/sub/data-link && ln tree/data tree/third
         printf small > tree/sub/s && ln tree/sub/s tree/s2",
    );
    sh(
        &mount.mnt,
        &format!(
            "cp -a {0}/tree cp-copy && rsync -aH {0}/tree/ rsync-copy/",
            src.path().display()
        ),
    );
    // Groups of names, by inode: the same in the source and in both copies.
    let groups = "find . -type f -printf '%i %n %P\\n' | sort -k3 \
        | awk '{ if (!($1 in g)) g[$1] = $3; print g[$1], $2, $3 }'";
    let want = sh(&src.path().join("tree"), groups);
    assert!(want.contains("data 3 sub/data-link"), "{want}");
    let check = |mount: &Mount| {
        for copy in ["cp-copy", "rsync-copy"] {
            assert_eq!(sh(&mount.path(copy), groups), want, "{copy}");
            sh(
                &mount.path(copy),
                &format!(
                    "cmp data {}/tree/data && cmp sub/data-link data",
                    src.path().display()
                ),
            );
        }
    };
    check(&mount);
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    check(&mount);
    sh(
        &mount.mnt,
        "printf changed > cp-copy/sub/s && test \"$(cat cp-copy/s2)\" = changed
         rm cp-copy/data && test $(stat -c %h cp-copy/third) = 2
         mv cp-copy/third cp-copy/sub/moved && cmp cp-copy/sub/moved cp-copy/sub/data-link
         ln cp-copy/sub/moved top-level && test $(stat -c %h top-level) = 3",
    );
    let ln_dir = sh_output(&mount.mnt, "ln cp-copy cp-copy-link");
    assert!(!ln_dir.status.success(), "a directory took a hard link");
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    sh(
        &mount.mnt,
        "test \"$(cat cp-copy/s2)\" = changed && test $(stat -c %h top-level) = 3
         test $(stat -c %i top-level) = $(stat -c %i cp-copy/sub/data-link)",
    );
    mount.unmount();
}

#[test]
fn tar_extract_reproduces_the_archive() {
    let (dir, mount) = setup();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    sh(dir.path(), "tar cf tree.tar -C src .");
    sh(
        &mount.mnt,
        &format!("mkdir x && tar xpf {}/tree.tar -C x", dir.path().display()),
    );
    assert_eq!(describe_tree(&mount.path("x")), describe_tree(&src));
    mount.unmount();
    // From the store, not the kernel's page cache.
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    assert_eq!(describe_tree(&mount.path("x")), describe_tree(&src));
    mount.unmount();
}

#[test]
fn editor_style_saves_and_read_write_opens() {
    let (dir, mount) = setup();
    let doc = mount.path("doc.txt");
    fs::write(&doc, b"first version\n").unwrap();
    // Save by writing a temp file and renaming it over the original.
    let tmp = mount.path(".doc.txt.swp");
    fs::write(&tmp, b"second version\n").unwrap();
    fs::rename(&tmp, &doc).unwrap();
    assert_eq!(fs::read(&doc).unwrap(), b"second version\n");
    assert!(!tmp.exists());

    // Open O_RDWR, overwrite in the middle, read back through the same handle before closing.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&doc)
        .unwrap();
    f.seek(SeekFrom::Start(7)).unwrap();
    f.write_all(b"VERSION").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "second VERSION\n");
    drop(f);
    assert_eq!(fs::read_to_string(&doc).unwrap(), "second VERSION\n");

    // O_TRUNC, append, writing past the end leaves zeros.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&doc)
        .unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().append(true).open(&doc).unwrap();
    f.write_all(b"def").unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().write(true).open(&doc).unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::read(&doc).unwrap(), b"abcdef\0\0\0\0!");

    // A rename while the file is open and unsaved: the data follows the new name.
    let mut f = fs::File::create(mount.path("pending")).unwrap();
    f.write_all(b"written before the rename").unwrap();
    fs::rename(mount.path("pending"), mount.path("renamed")).unwrap();
    f.write_all(b", and after").unwrap();
    drop(f);
    assert_eq!(
        fs::read(mount.path("renamed")).unwrap(),
        b"written before the rename, and after"
    );
    assert!(!mount.path("pending").exists());
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    assert_eq!(fs::read(mount.path("doc.txt")).unwrap(), b"abcdef\0\0\0\0!");
    assert_eq!(
        fs::read(mount.path("renamed")).unwrap(),
        b"written before the rename, and after"
    );
    let names = sh(&mount.mnt, "ls -A");
    assert_eq!(names, "doc.txt\nrenamed\n", "no temporary file is left");
    mount.unmount();
}

#[test]
fn a_file_manager_trash_works() {
    let (dir, mount) = setup();
    fs::write(mount.path("photo.jpg"), content_for("photo", 50_000)).unwrap();
    let trash = mount.path(".Trash-0");
    fs::create_dir(&trash).unwrap();
    fs::set_permissions(&trash, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(trash.join("files")).unwrap();
    fs::create_dir(trash.join("info")).unwrap();
    let info = trash.join("info/photo.jpg.trashinfo");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&info)
        .unwrap();
    f.write_all(b"[Trash Info]\nPath=/photo.jpg\n").unwrap();
    drop(f);
    let again = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&info);
    assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    fs::rename(mount.path("photo.jpg"), trash.join("files/photo.jpg")).unwrap();
    assert_eq!(
        fs::read(trash.join("files/photo.jpg")).unwrap(),
        content_for("photo", 50_000)
    );
    assert_eq!(
        fs::metadata(&trash).unwrap().permissions().mode() & 0o777,
        0o700
    );
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let trash = mount.path(".Trash-0");
    assert_eq!(
        fs::read(trash.join("files/photo.jpg")).unwrap(),
        content_for("photo", 50_000)
    );
    assert_eq!(
        fs::read(trash.join("info/photo.jpg.trashinfo")).unwrap(),
        b"[Trash Info]\nPath=/photo.jpg\n"
    );
    assert!(!mount.path("photo.jpg").exists());
    mount.unmount();
}

#[test]
fn sqlite_random_writes_and_fsync_survive_a_remount() {
    let (dir, mount) = setup();
    let script = "sqlite3 db.sqlite 'create table t(k integer primary key, v text);' \
        && for i in $(seq 1 20); do \
             sqlite3 db.sqlite \"begin; $(for j in $(seq 1 50); do echo \"insert into t(v) values (hex(randomblob(200)));\"; done) commit;\"; \
           done \
        && sqlite3 db.sqlite 'delete from t where k % 3 = 0; vacuum;' \
        && sqlite3 db.sqlite 'pragma integrity_check; select count(*) from t;'";
    let out = sh(&mount.mnt, script);
    assert_eq!(out, "ok\n667\n");
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let out = sh(
        &mount.mnt,
        "sqlite3 db.sqlite 'pragma integrity_check; select count(*) from t;'",
    );
    assert_eq!(out, "ok\n667\n");
    mount.unmount();
}

#[test]
fn unlinked_open_files_stay_readable_and_metadata_sticks() {
    let (dir, mount) = setup();
    let path = mount.path("doomed");
    fs::write(&path, b"still here").unwrap();
    let mut f = fs::File::open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(f);

    let file = mount.path("owned");
    fs::write(&file, b"x").unwrap();
    sh(
        &mount.mnt,
        "chown 1234:5678 owned && chmod 0640 owned && touch -d '1999-12-31 23:59:59' owned",
    );
    let xattr = sh_output(
        &mount.mnt,
        "setfattr -n user.color -v blue owned && getfattr -n user.color --only-values owned",
    );
    assert_eq!(String::from_utf8_lossy(&xattr.stdout), "blue");
    let missing = sh_output(&mount.mnt, "getfattr -n user.nothing owned");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such attribute"));
    mount.unmount();

    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    let meta = fs::metadata(mount.path("owned")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
    assert_eq!(meta.mtime(), 946684799);
    let xattr = sh(&mount.mnt, "getfattr -n user.color --only-values owned");
    assert_eq!(xattr, "blue");
    assert!(!mount.path("doomed").exists());
    let rmdir = sh_output(&mount.mnt, "mkdir -p full/sub && rmdir full");
    assert!(String::from_utf8_lossy(&rmdir.stderr).contains("not empty"));
    mount.unmount();
}

#[test]
fn files_closed_before_a_sigkill_are_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mnt = dir.path().join("mnt");
    let mount = Mount::start(&data, &mnt, &[]);
    // A writer that reports each file once close() returned, until the mount dies.
    let writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys
i = 0
while True:
    name = f'f{i:05d}'
    size = 1000 + (i * 7919) % 300000
    try:
        with open(os.path.join(sys.argv[1], name), 'wb') as f:
            x = (hash(name) & 0xffffffff) | 1
            f.write(bytes((x * (k + 1)) % 251 for k in range(size)))
    except OSError:
        break
    print(name, size, x, flush=True)
    i += 1",
        )
        .arg(&mnt)
        .stdout(std::process::Stdio::piped())
        .env("PYTHONHASHSEED", "0")
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    mount.kill();
    let out = writer.wait_with_output().unwrap();
    let closed: Vec<(String, usize, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.split(' ').collect();
            (
                p[0].to_string(),
                p[1].parse().unwrap(),
                p[2].parse().unwrap(),
            )
        })
        .collect();
    assert!(
        closed.len() > 3,
        "the writer got some files closed before the kill"
    );

    let mount = Mount::start(&data, &mnt, &[]);
    for (name, size, x) in &closed {
        let want: Vec<u8> = (0..*size)
            .map(|k| ((x * (k as u64 + 1)) % 251) as u8)
            .collect();
        let got = fs::read(mount.path(name)).unwrap_or_else(|e| panic!("{name} lost: {e}"));
        assert!(got == want, "{name} does not hold its own bytes");
    }
    // A file being written at the kill is absent, empty or whole: never another file's bytes.
    for entry in fs::read_dir(&mount.mnt).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if closed.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        let got = fs::read(entry.path()).unwrap();
        let i: u64 = name[1..].parse().unwrap();
        let size = 1000 + (i * 7919) % 300000;
        assert!(
            got.is_empty() || got.len() as u64 == size,
            "{name}: torn file of {} bytes",
            got.len()
        );
    }
    mount.unmount();
}

#[test]
fn a_read_only_mount_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let mount = Mount::start(&data, &mnt, &[]);
    fs::write(mount.path("kept"), b"kept").unwrap();
    mount.unmount();
    let mount = Mount::start(&data, &mnt, &["--read-only"]);
    assert_eq!(fs::read(mount.path("kept")).unwrap(), b"kept");
    let err = fs::write(mount.path("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    mount.unmount();
}

/// A read-only mount shows what a killed mount had acknowledged (its journal) without writing
/// it anywhere, and shares the store with no read-write mount.
#[test]
fn a_read_only_mount_shows_a_killed_mounts_changes_and_keeps_writers_out() {
    let dir = tempfile::tempdir().unwrap();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let mount = Mount::start(&data, &mnt, &[]);
    fs::write(mount.path("a"), b"v1").unwrap();
    fs::write(mount.path("b"), b"v1").unwrap();
    sh(&mount.mnt, &format!("{} sync .", common::binary()));
    fs::write(mount.path("a"), b"v2").unwrap();
    fs::rename(mount.path("b"), mount.path("c")).unwrap();
    mount.kill();

    let check = |mount: &Mount| {
        assert_eq!(fs::read(mount.path("a")).unwrap(), b"v2");
        assert_eq!(fs::read(mount.path("c")).unwrap(), b"v1");
        assert!(!mount.path("b").exists());
    };
    let read_only = Mount::start(&data, &mnt, &["--read-only"]);
    check(&read_only);
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let refused = Command::new(common::binary())
        .arg("-f")
        .arg("--data-dir")
        .arg(&data)
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a writer mounted beside a reader"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("the store is in use"), "{said}");
    read_only.unmount();

    // Left as it was: the next read-write mount commits it.
    let mount = Mount::start(&data, &mnt, &[]);
    check(&mount);
    mount.unmount();
    let mount = Mount::start(&data, &mnt, &["--read-only"]);
    check(&mount);
    mount.unmount();
}

#[test]
fn a_running_program_cannot_be_truncated_under_itself() {
    let (_dir, mount) = setup();
    let program = mount.path("sleeper");
    let original = fs::read("/bin/sleep").unwrap();
    fs::write(&program, &original).unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let mut running = std::process::Command::new(&program)
        .arg("30")
        .spawn()
        .unwrap();
    // Every way of opening it for change is refused while it runs, O_RDONLY|O_TRUNC included
    // (the kernel once emptied its cached pages first, killing the program with SIGBUS).
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let opened = fs::OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            .custom_flags(flags & libc::O_TRUNC)
            .open(&program);
        assert_eq!(
            opened.map(|_| ()).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ETXTBSY)),
            "open with flags {flags:#o}"
        );
    }
    assert_eq!(fs::metadata(&program).unwrap().len(), original.len() as u64);
    assert!(
        running.try_wait().unwrap().is_none(),
        "the program still runs"
    );
    running.kill().unwrap();
    running.wait().unwrap();
    assert!(fs::read(&program).unwrap() == original);
}

/// Pad files of the store under `data`.
fn pad_count(data: &Path) -> usize {
    let pads = data.join("store/pads");
    let shards = fs::read_dir(pads).unwrap().map(|s| s.unwrap().path());
    shards
        .map(|s| fs::read_dir(s).unwrap().count())
        .sum::<usize>()
}

/// A source tree of small files (5 KiB to 60 KiB) rsynced in takes about its size in pads, not a
/// pad per file, and reads back from a fresh mount; so does a file held open while the packs it
/// lies in are merged by later saves of one small file each.
#[test]
fn small_files_share_pads_and_read_back_after_a_remount() {
    let (dir, mount) = setup();
    let src = dir.path().join("src");
    let mut bytes = 0;
    for i in 0..400usize {
        let sub = src.join(format!("mod{}", i % 9));
        fs::create_dir_all(&sub).unwrap();
        let len = 5_000 + (i * 7_919) % 55_000;
        fs::write(
            sub.join(format!("f{i}.rs")),
            content_for(&format!("f{i}"), len),
        )
        .unwrap();
        bytes += len;
    }
    let dst = mount.path("tree");
    sh(dir.path(), &format!("rsync -a src/ {}/", dst.display()));
    sh(
        dir.path(),
        &format!("{} sync {}", common::binary(), mount.mnt.display()),
    );
    let data = dir.path().join("data");
    let pads = pad_count(&data);
    // The data in ceil(bytes / chunk) packs, one more for first fit, the index root and a page
    // or two; a pad per file would be 400.
    let most = bytes.div_ceil(4 << 20) + 1 + 3;
    assert!(pads <= most, "{pads} pads for 400 files of {bytes} bytes");

    // One file stays open while each of twelve saves commits a small file of its own.
    let held = dst.join("mod0/f0.rs");
    let mut open = fs::File::open(&held).unwrap();
    for i in 0..12 {
        fs::write(
            mount.path(&format!("note{i}.md")),
            content_for("note", 9_000 + i),
        )
        .unwrap();
        sh(
            dir.path(),
            &format!("{} sync {}", common::binary(), mount.mnt.display()),
        );
    }
    sh(dir.path(), "sync; echo 3 > /proc/sys/vm/drop_caches");
    let mut read = Vec::new();
    open.read_to_end(&mut read).unwrap();
    assert_eq!(read, fs::read(src.join("mod0/f0.rs")).unwrap());
    drop(open);
    mount.unmount();

    let mount = Mount::start(&data, &dir.path().join("mnt"), &[]);
    assert_eq!(describe_tree(&dst), describe_tree(&src));
    for i in 0..12 {
        let note = fs::read(mount.path(&format!("note{i}.md"))).unwrap();
        assert_eq!(note, content_for("note", 9_000 + i));
    }
    // The packs the saves made were merged once eight were under half full, and the merged
    // ones are free once no open file can name them: a pack each would be twelve more.
    let bin = common::binary();
    sh(dir.path(), &format!("{bin} sync {}", mount.mnt.display()));
    let status = sh(dir.path(), &format!("{bin} status {}", mount.mnt.display()));
    let in_use: usize = (status.lines())
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" pads in use")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pad count in status: {status}"));
    let tree_packs = bytes.div_ceil(4 << 20) + 1;
    assert!(
        in_use <= tree_packs + 7,
        "{in_use} pads in use after twelve small saves"
    );
    mount.unmount();
}

/// `fallocate(1)` as download managers, databases and `posix_fallocate` use it: preallocation
/// extends a file without storing zeros, `--keep-size` leaves it as it is, `--punch-hole` and
/// `--zero-range` make a range read as zeros and give back what they cover whole (`du`
/// drops), `--dig-holes` keeps the bytes it punches around, and the modes a file here
/// cannot do are refused with "Operation not supported". Checked after a remount.
#[test]
fn fallocate_preallocates_punches_and_zeroes() {
    const CHUNK: usize = 4190208;
    let (dir, mount) = setup();
    let mut want = content_for("f", 3 * CHUNK);
    fs::write(mount.path("f"), &want).unwrap();
    let mut zeros_then_data = content_for("z", 1000);
    zeros_then_data.resize(2 * CHUNK + 5000, 0);
    zeros_then_data.extend_from_slice(b"tail");
    fs::write(mount.path("z"), &zeros_then_data).unwrap();
    let du = |name: &str| fs::metadata(mount.path(name)).unwrap().blocks() * 512;
    let before = du("f");
    sh(
        &mount.mnt,
        &format!(
            "fallocate -l 1G pre && printf hello > kept && fallocate -n -l 1G kept
            fallocate -p -o {CHUNK} -l {CHUNK} f
            fallocate -z -o 100 -l 50 f
            fallocate -p -o {} -l 100 f
            fallocate -d z",
            3 * CHUNK - 10
        ),
    );
    want[CHUNK..2 * CHUNK].fill(0);
    want[100..150].fill(0);
    want[3 * CHUNK - 10..].fill(0);
    let refused = sh_output(&mount.mnt, "fallocate -c -o 0 -l 4096 f");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let check = |mount: &Mount| {
        let size = |name: &str| fs::metadata(mount.path(name)).unwrap().len();
        assert_eq!((size("pre"), size("kept")), (1 << 30, 5));
        assert!(fs::read(mount.path("f")).unwrap() == want, "f's bytes");
        assert!(
            fs::read(mount.path("z")).unwrap() == zeros_then_data,
            "z's bytes"
        );
        let du = |name: &str| fs::metadata(mount.path(name)).unwrap().blocks() * 512;
        assert!(
            du("pre") < 1 << 20,
            "preallocation stored {} bytes",
            du("pre")
        );
        assert!(du("f") <= before - CHUNK as u64, "{} of {before}", du("f"));
    };
    check(&mount);
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    check(&mount);
    mount.unmount();
}

/// Names that are not UTF-8 (Latin-1 names from old archives, a cut multi-byte character, a
/// first byte of 0xff) are ordinary names, as on ext4: created, listed byte for byte, renamed,
/// linked, copied in with `rsync -a`, looked up by `find`, and all the same after a remount.
#[test]
fn names_that_are_not_utf8_work_like_any_other() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (dir, mount) = setup();
    let name = |bytes: &[u8]| OsStr::from_bytes(bytes).to_owned();
    let latin1 = name(b"caf\xe9.txt");
    let top = name(b"\xff\xfe first byte");
    let cut = name(b"\xe6\x97\xa5\xe6\x9c");
    let sub = name(b"r\xe9pertoire");
    fs::write(mount.path("").join(&latin1), b"latin-1").unwrap();
    fs::write(mount.path("").join(&top), b"top").unwrap();
    fs::create_dir(mount.path("").join(&sub)).unwrap();
    fs::write(mount.path("").join(&sub).join(&cut), b"cut").unwrap();
    fs::hard_link(
        mount.path("").join(&latin1),
        mount.path("").join(&sub).join(&latin1),
    )
    .unwrap();
    fs::rename(
        mount.path("").join(&top),
        mount.path("").join(name(b"renamed \xfe")),
    )
    .unwrap();
    std::os::unix::fs::symlink(&latin1, mount.path("").join(name(b"link\x80"))).unwrap();

    // The same names made on the disk beneath, copied in whole by rsync.
    let src = dir.path().join("src");
    fs::create_dir_all(src.join(&sub)).unwrap();
    fs::write(src.join(&sub).join(&cut), content_for("cut", 10_000)).unwrap();
    fs::write(src.join(&latin1), b"from rsync").unwrap();
    sh(
        dir.path(),
        &format!("rsync -a src/ {}/copied/", mount.mnt.display()),
    );

    let listing = |mount: &Mount| {
        sh(
            &mount.mnt,
            "find . -printf '%p %y %s %n %l\\n' | LC_ALL=C sort | od -An -c",
        )
    };
    let before = listing(&mount);
    assert!(
        before.contains("351"),
        "the byte 0xe9 is listed as it is: {before}"
    );
    let check = |mount: &Mount| {
        let read = |path: std::path::PathBuf| fs::read(path).unwrap();
        assert_eq!(read(mount.path("").join(&sub).join(&latin1)), b"latin-1");
        assert_eq!(read(mount.path("").join(name(b"renamed \xfe"))), b"top");
        assert_eq!(read(mount.path("").join(name(b"link\x80"))), b"latin-1");
        assert_eq!(read(mount.path("copied").join(&latin1)), b"from rsync");
        assert_eq!(
            read(mount.path("copied").join(&sub).join(&cut)),
            content_for("cut", 10_000)
        );
        assert!(!mount.path("").join(&top).exists());
        sh(
            dir.path(),
            &format!("diff -r src {}/copied", mount.mnt.display()),
        );
    };
    check(&mount);
    mount.unmount();
    let mount = Mount::start(&dir.path().join("data"), &dir.path().join("mnt"), &[]);
    assert_eq!(listing(&mount), before);
    check(&mount);
    // Removing them all leaves nothing behind.
    sh(&mount.mnt, "rm -r -- * && ls -A | wc -l");
    assert_eq!(sh(&mount.mnt, "ls -A | wc -l").trim(), "0");
    mount.unmount();
}
