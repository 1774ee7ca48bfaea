//! A real mount for tests: the `mutant-mount` binary in the foreground on a temp dir, unmounted
//! and stopped when dropped, even when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Mount {
    pub mnt: PathBuf,
    pub data: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mutant-mount")
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let target = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == target)
}

impl Mount {
    /// Mounts `data`'s store on `mnt` (created if missing) with extra arguments.
    pub fn start(data: &Path, mnt: &Path, extra: &[&str]) -> Mount {
        Mount::start_with_env(data, mnt, extra, &[])
    }

    /// Like [`Mount::start`], with environment variables for the mount process.
    pub fn start_with_env(
        data: &Path,
        mnt: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Mount {
        std::fs::create_dir_all(data).unwrap();
        let log = data.join(format!("mount-{}.log", std::process::id()));
        Mount::start_logging_to(&log, data, mnt, extra, env)
    }

    /// Like [`Mount::start_with_env`], with the process's stdout and stderr appended to `log`.
    pub fn start_logging_to(
        log: &Path,
        data: &Path,
        mnt: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Mount {
        std::fs::create_dir_all(mnt).unwrap();
        std::fs::create_dir_all(data).unwrap();
        let log = log.to_path_buf();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary())
            .arg("-f")
            .arg("--data-dir")
            .arg(data)
            .args(["--allow-other", "--log-level", "debug"])
            .args(extra)
            .arg(mnt)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start mutant-mount");
        let mut mount = Mount {
            mnt: mnt.to_path_buf(),
            data: data.to_path_buf(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mounted(mnt) {
            if let Some(status) = mount.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mutant-mount exited ({status}) before mounting:\n{}",
                    mount.log_tail()
                );
            }
            assert!(Instant::now() < deadline, "not mounted after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    /// The mount process's log file (it stays after unmount).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    pub fn log_tail(&self) -> String {
        // Only a regular file: a device such as /dev/full reads forever.
        if !std::fs::metadata(&self.log).is_ok_and(|m| m.is_file()) {
            return format!("(the log went to {})", self.log.display());
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `fusermount3 -u`, as a user unmounts; it must succeed. "Device or resource busy" is
    /// tried again for a few seconds, as a user would: right after a program's last close()
    /// the kernel may still hold the mount for a moment (seen once in CI with 32 writers).
    fn fusermount_u(&self) {
        let mut tries = 0;
        loop {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && stderr.contains("busy") && tries < 50 {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert!(out.status.success(), "fusermount3 -u: {stderr}");
            if tries > 0 {
                eprintln!("fusermount3 -u: busy {tries} times before it unmounted");
            }
            return;
        }
    }

    /// Unmounts the way a user does and waits for the process to commit and exit cleanly.
    pub fn unmount(mut self) {
        self.fusermount_u();
        let status = self.wait_exit(Duration::from_secs(60));
        assert!(
            status.success(),
            "mutant-mount exited with {status}:\n{}",
            self.log_tail()
        );
    }

    /// Unmounts with `fusermount3 -u` and returns at once, as a script does: the process may
    /// still be committing. Returns it, to be waited for.
    pub fn unmount_no_wait(mut self) -> Child {
        self.fusermount_u();
        self.child.take().unwrap()
    }

    /// Kills the mount process with SIGKILL (a crash) and detaches the dead mount.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .output();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` (libc::SIGTERM, ...) to the mount process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Waits for the mount process to exit (it must within `limit`) and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "mutant-mount did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .output();
            std::thread::sleep(Duration::from_millis(200));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cwd: &Path, script: &str) -> String {
    let out = sh_output(cwd, script);
    assert!(
        out.status.success(),
        "command failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_output(cwd: &Path, script: &str) -> Output {
    Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Deterministic bytes for a name, so a file holding another's bytes is caught.
pub fn content_for(name: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A listing of a tree with what `rsync -a` keeps: type, mode, owner, size, mtime (whole
/// seconds), link target, and a checksum of the content.
pub fn describe_tree(root: &Path) -> String {
    sh(
        root,
        "{ find . -mindepth 1 -type d -printf '%P d %m %U:%G %Ts\\n'; \
           find . -mindepth 1 ! -type d -printf '%P %y %m %U:%G %s %Ts %l\\n'; } | sort; \
         find . -type f -print0 | sort -z | xargs -0 -r md5sum",
    )
}
