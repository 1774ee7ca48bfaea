//! Bad input gets a clear error and a non-zero exit, before anything is mounted or written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::binary()).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt = mnt.to_str().unwrap();

    let (code, text) = run(&["--data-dir", data, "/nonexistent/mountpoint"]);
    assert_eq!(code, 1);
    assert!(text.contains("does not exist"), "{text}");

    let (code, text) = run(&["--data-dir", data, "-o", "bogus", mnt]);
    assert_eq!(code, 2);
    assert!(text.contains("unknown mount option 'bogus'"), "{text}");

    let (code, text) = run(&["--data-dir", data, "--no-such-flag", mnt]);
    assert_eq!(code, 2);
    assert!(text.contains("--no-such-flag"), "{text}");

    let (code, text) = run(&["--data-dir", data, "--chunk-size", "1000", mnt]);
    assert_eq!(code, 2);
    assert!(text.contains("multiple of 4096"), "{text}");

    // The tier is in front of a network: the local store has none.
    let (code, text) = run(&["--data-dir", data, "--upload", "staged", mnt]);
    assert_ne!(code, 0);
    assert!(
        text.contains("--upload is for a store over a network"),
        "{text}"
    );

    std::fs::write(dir.path().join("mnt/file"), b"x").unwrap();
    let (code, text) = run(&["--data-dir", data, "-f", mnt]);
    assert_eq!(code, 1);
    assert!(text.contains("not empty"), "{text}");
    std::fs::remove_file(dir.path().join("mnt/file")).unwrap();

    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "not a key").unwrap();
    std::fs::set_permissions(&bad_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = run(&[
        "--data-dir",
        data,
        "--key-file",
        bad_key.to_str().unwrap(),
        "-f",
        mnt,
    ]);
    assert_eq!(code, 1);
    assert!(
        text.contains("does not hold a hex-encoded BLS secret key"),
        "{text}"
    );
    // Nothing was mounted, and the bad key file was left as it was.
    assert!(!common::is_mounted(std::path::Path::new(mnt)));
    assert_eq!(std::fs::read_to_string(&bad_key).unwrap(), "not a key");

    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("MOUNTPOINT") && text.contains("--simulate"),
        "{text}"
    );
}

#[test]
fn a_store_of_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = dir.path().join("data");
    let mount = common::Mount::start(&data, &mnt, &[]);
    std::fs::write(mnt.join("secret"), b"mine").unwrap();
    mount.unmount();

    let other_key = dir.path().join("other.key");
    let (code, text) = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        other_key.to_str().unwrap(),
        "-f",
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    // A missing key file where a store exists is a mistake, never a reason for a new key.
    assert!(
        text.contains(&format!(
            "no master key in {}, the key file that was expected",
            other_key.display()
        )),
        "{text}"
    );
    assert!(!other_key.exists(), "no new key was made");

    // A key that exists but is another one's is refused by the store.
    let other = dir.path().join("keys/other.key");
    mutant_mount::keys::MasterKey::generate()
        .save_new(&other)
        .unwrap();
    let (code, text) = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        other.to_str().unwrap(),
        "-f",
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(text.contains("belongs to another master key"), "{text}");
}
