//! The local journal: every index change since the last commit, appended to a file as it is
//! made. Commits can then be grouped (one per interval, not one per closed file) without losing
//! what a killed mount had acknowledged: the next open replays the journal on top of the root it
//! was written against. A journal written against a root that someone else has since replaced is
//! not replayed blindly: its changes are recovered into the file system for the user.
//!
//! The file is a header (a magic and a random file id) and a sequence of frames: a `u32` length,
//! then a record sealed with the journal key (`at_rest.rs`) whose associated data is the file
//! id, and whose plaintext starts with the frame's number. A frame therefore opens only in its
//! own file at its own place: one that fails is never replayed. A torn frame at the end (a crash
//! mid-append) is dropped; a frame that fails with valid frames after it is damage, and the
//! journal is refused as a whole (see [`Damage`]) rather than silently losing the acknowledged
//! changes that follow it. Appends are `write`s without `fsync`, which a killed process cannot
//! lose; commits (and `fsync(2)` on a file, which commits) make changes durable in the store.
//! The records that matter for safety, a commit's intent and the rewrite after it, are synced.
//!
//! A journal of the earlier, unsealed format (frames of plain codec records) is read once, by
//! its own checksums, and rewritten sealed by the open that replays it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::at_rest::{LocalKey, OVERHEAD};
use crate::codec::{self, Kind};
use crate::engine::reserve::Reserve;
use crate::index::{self, Entry, Meta};

/// The start of a sealed journal. The unsealed format starts with a frame length, which these
/// bytes as a length (over 800 MB) never are.
const MAGIC: &[u8; 8] = b"MMJRNL02";
const FILE_ID_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + FILE_ID_LEN;

/// One change to the index, as the engine's API made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Install {
        key: String,
        entry: Entry,
    },
    Remove {
        key: String,
    },
    Rename {
        moves: Vec<(String, String)>,
    },
    SetMeta {
        key: String,
        meta: Meta,
    },
    /// The file at `key` takes a second name to come: it moves to `index::inode_key(id)` and
    /// `key` becomes its first name (hard links).
    Link {
        key: String,
        id: u64,
    },
}

#[derive(Serialize, Deserialize)]
enum Record {
    /// The ops that follow apply on top of the root whose encoding has this hash.
    Base {
        root_hash: [u8; 32],
    },
    Op {
        seq: u64,
        op: Op,
    },
    /// A commit of every op up to `upto` is about to write the root with this hash.
    Commit {
        upto: u64,
        root_hash: [u8; 32],
    },
}

/// A frame that failed its check with valid frames after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The number of the first bad frame (0 is the base record).
    pub frame: u64,
    /// Its byte offset in the file.
    pub offset: usize,
    /// Frames after it that passed their check (recoverable by discarding the damage).
    pub valid_after: usize,
}

/// What a journal left by an earlier run says.
#[derive(Debug, Default)]
pub struct Leftover {
    base: Option<[u8; 32]>,
    ops: Vec<(u64, Op)>,
    commits: Vec<(u64, [u8; 32])>,
    /// Bytes after the last whole frame (a crash mid-append).
    pub torn_bytes: usize,
    /// Damage in the middle; `ops` then holds what could be read around it.
    pub damage: Option<Damage>,
    /// Written by a version that did not seal the journal.
    pub unsealed: bool,
}

/// What to do with a leftover journal, given the root the store holds now.
#[derive(Debug, PartialEq)]
pub enum Replay {
    /// These ops are not in the stored root: apply them.
    Apply(Vec<Op>),
    /// The stored root is not one this journal led to: someone else committed. These ops
    /// cannot be applied safely; they are to be recovered for the user.
    Foreign(Vec<Op>),
}

impl Leftover {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn replay(self, stored_root: &[u8; 32]) -> Replay {
        let landed = self
            .commits
            .iter()
            .filter(|(_, hash)| hash == stored_root)
            .map(|(upto, _)| *upto)
            .max();
        let after = |from: u64, ops: Vec<(u64, Op)>| {
            ops.into_iter()
                .filter(|(seq, _)| *seq > from)
                .map(|(_, op)| op)
                .collect()
        };
        match landed {
            Some(upto) => Replay::Apply(after(upto, self.ops)),
            None if self.base.as_ref() == Some(stored_root) => Replay::Apply(after(0, self.ops)),
            None => Replay::Foreign(after(0, self.ops)),
        }
    }

    /// Takes in one record; `false` if it cannot be where it is (a second base).
    fn take(&mut self, record: Record) -> bool {
        match record {
            Record::Base { root_hash } if self.base.is_none() => self.base = Some(root_hash),
            Record::Base { .. } => return false,
            Record::Op { seq, op } => self.ops.push((seq, op)),
            Record::Commit { upto, root_hash } => self.commits.push((upto, root_hash)),
        }
        true
    }
}

pub struct Journal {
    path: PathBuf,
    key: LocalKey,
    file: Mutex<Open>,
    /// Room on the disk for the journal's writes (and a commit's) when the disk is full.
    reserve: Reserve,
    /// Held for the journal's life: two processes appending to one journal would garble it.
    _lock: File,
}

/// How long a mount waits for the lock of a process that is still finishing its unmount.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the lock that makes a journal (and so the store, for this key) this process's alone,
/// or, `shared`, one that read-only mounts share with each other and with no writer. A process
/// holding it is given up to `wait` to let go: `fusermount3 -u` returns while the old process
/// still commits, and a mount started at once must neither fail nor read the root before that
/// commit landed.
pub fn lock(path: &Path, wait: std::time::Duration, shared: bool) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path.with_extension("lock"))?;
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let mode = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
        if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another mutant-mount is using this store with the same key (its journal is \
                 locked); a read-only mount shares it only with other read-only mounts",
            ));
        }
        if !said {
            tracing::info!(
                "another mutant-mount holds this store's journal (still finishing an unmount?): \
                 waiting up to {} s for it",
                wait.as_secs()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

struct Open {
    file: File,
    /// The file's length: an append that fails is cut back to it, never left half-written.
    len: u64,
    file_id: [u8; FILE_ID_LEN],
    next_frame: u64,
    next_seq: u64,
    /// Ops appended and not yet covered by a landed commit, for the rewrite after one.
    pending: Vec<(u64, Op)>,
}

/// A record of any format version, as today's record.
fn decode_record(bytes: &[u8]) -> Result<Record, codec::CodecError> {
    match codec::open(Kind::JournalRecord, bytes)? {
        (1, body) => Ok(codec::decode_body::<legacy::Record<index::v1::Entry>>(body)?.into()),
        (2, body) => Ok(codec::decode_body::<legacy::Record<index::v2::Entry>>(body)?.into()),
        (_, body) => codec::decode_body(body),
    }
}

/// Records as earlier format versions wrote them: the same records, with that version's
/// entries. A journal left by an older program is replayed, not dropped.
mod legacy {
    use serde::Deserialize;

    use crate::index::{Entry, Meta};

    #[derive(Deserialize)]
    pub enum Op<E> {
        Install { key: String, entry: E },
        Remove { key: String },
        Rename { moves: Vec<(String, String)> },
        SetMeta { key: String, meta: Meta },
    }

    #[derive(Deserialize)]
    pub enum Record<E> {
        Base { root_hash: [u8; 32] },
        Op { seq: u64, op: Op<E> },
        Commit { upto: u64, root_hash: [u8; 32] },
    }

    impl<E: Into<Entry>> From<Record<E>> for super::Record {
        fn from(record: Record<E>) -> Self {
            match record {
                Record::Base { root_hash } => super::Record::Base { root_hash },
                Record::Commit { upto, root_hash } => super::Record::Commit { upto, root_hash },
                Record::Op { seq, op } => super::Record::Op {
                    seq,
                    op: match op {
                        Op::Install { key, entry } => super::Op::Install {
                            key,
                            entry: entry.into(),
                        },
                        Op::Remove { key } => super::Op::Remove { key },
                        Op::Rename { moves } => super::Op::Rename { moves },
                        Op::SetMeta { key, meta } => super::Op::SetMeta { key, meta },
                    },
                },
            }
        }
    }
}

/// A sealed frame: length, then the frame number and the record, sealed.
fn frame(
    key: &LocalKey,
    file_id: &[u8; FILE_ID_LEN],
    number: u64,
    record: &Record,
) -> io::Result<Vec<u8>> {
    let body = codec::encode(Kind::JournalRecord, record)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut plain = Vec::with_capacity(8 + body.len());
    plain.extend_from_slice(&number.to_le_bytes());
    plain.extend_from_slice(&body);
    let sealed = key.seal(&plain, file_id);
    let mut out = Vec::with_capacity(4 + sealed.len());
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The frame at `at`, if one is whole there and passes its check: its number, its record and
/// its end.
fn open_frame(
    key: &LocalKey,
    file_id: &[u8],
    bytes: &[u8],
    at: usize,
) -> Option<(u64, Record, usize)> {
    let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().unwrap()) as usize;
    if len < OVERHEAD + 8 {
        return None;
    }
    let sealed = bytes.get(at + 4..at + 4 + len)?;
    let plain = key.open(sealed, file_id).ok()?;
    let number = u64::from_le_bytes(plain[..8].try_into().unwrap());
    let record = decode_record(&plain[8..]).ok()?;
    Some((number, record, at + 4 + len))
}

impl Journal {
    /// Reads the journal at `path`; an absent file is an empty journal.
    pub fn read(path: &Path, key: &LocalKey) -> io::Result<Leftover> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Leftover::default()),
            Err(e) => return Err(e),
        };
        if !bytes.starts_with(MAGIC) {
            return Ok(read_unsealed(&bytes));
        }
        let mut left = Leftover::default();
        let Some(file_id) = bytes.get(MAGIC.len()..HEADER_LEN) else {
            left.torn_bytes = bytes.len();
            return Ok(left);
        };
        let mut at = HEADER_LEN;
        let mut number = 0;
        while at < bytes.len() {
            match open_frame(key, file_id, &bytes, at) {
                Some((n, record, end)) if n == number => {
                    if !left.take(record) {
                        break;
                    }
                    at = end;
                    number += 1;
                }
                _ => break,
            }
        }
        if at == bytes.len() {
            return Ok(left);
        }
        // A bad frame: the end of the journal if no valid frame follows it (a torn append),
        // damage otherwise. Frame boundaries past it are unknown: every offset is tried.
        let mut after = Vec::new();
        let mut next = at + 1;
        while next + 4 <= bytes.len() {
            match open_frame(key, file_id, &bytes, next) {
                Some((_, record, end)) => {
                    after.push(record);
                    next = end;
                }
                None => next += 1,
            }
        }
        if after.is_empty() {
            left.torn_bytes = bytes.len() - at;
        } else {
            left.damage = Some(Damage {
                frame: number,
                offset: at,
                valid_after: after.len(),
            });
            for record in after {
                left.take(record);
            }
        }
        Ok(left)
    }

    /// Starts a journal at `path` (replacing any) on top of the root with hash `root_hash`,
    /// holding `ops` not yet committed.
    pub fn create(
        path: &Path,
        lock: File,
        key: LocalKey,
        root_hash: [u8; 32],
        ops: Vec<Op>,
    ) -> io::Result<Journal> {
        let pending: Vec<(u64, Op)> = ops.into_iter().zip(1..).map(|(op, n)| (n, op)).collect();
        let reserve = Reserve::new(path.with_extension("reserve"));
        let (file, len, file_id, next_frame) =
            reserve.with_room(|| write_new(path, &key, root_hash, &pending))?;
        Ok(Journal {
            path: path.to_path_buf(),
            key,
            reserve,
            file: Mutex::new(Open {
                file,
                len,
                file_id,
                next_frame,
                next_seq: pending.len() as u64 + 1,
                pending,
            }),
            _lock: lock,
        })
    }

    /// Appends a change; returns its sequence number.
    pub fn append(&self, op: &Op) -> io::Result<u64> {
        let mut open = self.file.lock().unwrap();
        let seq = open.next_seq;
        let bytes = frame(
            &self.key,
            &open.file_id,
            open.next_frame,
            &Record::Op {
                seq,
                op: op.clone(),
            },
        )?;
        self.write_frame(&mut open, &bytes, false)?;
        open.next_seq += 1;
        open.pending.push((seq, op.clone()));
        Ok(seq)
    }

    /// Makes every change appended so far survive a crash of the machine.
    pub fn sync(&self) -> io::Result<()> {
        self.file.lock().unwrap().file.sync_data()
    }

    /// The sequence number of the last change appended (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.file.lock().unwrap().next_seq - 1
    }

    /// Records, durably, that a commit of every change up to `upto` is about to write the root
    /// with hash `root_hash`: if it lands and the process dies, the next open knows those
    /// changes are in the store.
    pub fn note_commit(&self, upto: u64, root_hash: [u8; 32]) -> io::Result<()> {
        let mut open = self.file.lock().unwrap();
        let bytes = frame(
            &self.key,
            &open.file_id,
            open.next_frame,
            &Record::Commit { upto, root_hash },
        )?;
        self.write_frame(&mut open, &bytes, true)
    }

    /// Appends a frame (and syncs it if `sync`); a failure leaves the file as it was.
    fn write_frame(&self, open: &mut Open, bytes: &[u8], sync: bool) -> io::Result<()> {
        self.reserve.with_room(|| {
            let written = open.file.write_all(bytes).and_then(|()| {
                if sync {
                    open.file.sync_data()
                } else {
                    Ok(())
                }
            });
            if written.is_err() {
                // A torn frame would read as the journal's end, hiding the frames after it.
                open.file.set_len(open.len)?;
            }
            written
        })?;
        open.len += bytes.len() as u64;
        open.next_frame += 1;
        Ok(())
    }

    /// Gives the disk room kept for the journal back, for a commit that found the disk full
    /// (its deletes give more back when it lands); `false` if none was left.
    pub fn release_reserve(&self) -> bool {
        self.reserve.release()
    }

    /// After the commit of the changes up to `upto` landed as the root with hash `root_hash`:
    /// rewrites the journal to hold only the later changes.
    pub fn committed(&self, upto: u64, root_hash: [u8; 32]) -> io::Result<()> {
        let mut open = self.file.lock().unwrap();
        open.pending.retain(|(seq, _)| *seq > upto);
        let (file, len, file_id, next_frame) = self
            .reserve
            .with_room(|| write_new(&self.path, &self.key, root_hash, &open.pending))?;
        (open.file, open.len, open.file_id, open.next_frame) = (file, len, file_id, next_frame);
        drop(open);
        self.reserve.refill();
        Ok(())
    }

    /// The changes not yet covered by a landed commit.
    pub fn pending(&self) -> Vec<Op> {
        let open = self.file.lock().unwrap();
        open.pending.iter().map(|(_, op)| op.clone()).collect()
    }
}

/// Reads a journal of the unsealed format: frames of codec records, each with its checksum;
/// the first that does not decode ends it.
fn read_unsealed(bytes: &[u8]) -> Leftover {
    let mut left = Leftover {
        unsealed: true,
        ..Leftover::default()
    };
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        let Ok(record) = decode_record(body) else {
            break;
        };
        if !left.take(record) {
            break;
        }
        at += 4 + len;
    }
    left.torn_bytes = bytes.len() - at;
    left
}

/// Writes a whole journal (mode 0600) next to `path` under a new file id, syncs it and renames
/// it over; returns it open for appending, with its length, its id and the number of its next
/// frame.
fn write_new(
    path: &Path,
    key: &LocalKey,
    root_hash: [u8; 32],
    ops: &[(u64, Op)],
) -> io::Result<(File, u64, [u8; FILE_ID_LEN], u64)> {
    let tmp = path.with_extension("new");
    let file_id: [u8; FILE_ID_LEN] = rand::random();
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&file_id);
    bytes.extend(frame(key, &file_id, 0, &Record::Base { root_hash })?);
    for (number, (seq, op)) in (1..).zip(ops) {
        bytes.extend(frame(
            key,
            &file_id,
            number,
            &Record::Op {
                seq: *seq,
                op: op.clone(),
            },
        )?);
    }
    {
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, bytes.len() as u64, file_id, ops.len() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use std::time::Duration;

    fn remove(key: &str) -> Op {
        Op::Remove { key: key.into() }
    }

    fn ops(names: &[&str]) -> Vec<Op> {
        names.iter().map(|n| remove(n)).collect()
    }

    fn key() -> LocalKey {
        crate::at_rest::LocalKeys::derive(&MasterKey::generate()).journal
    }

    #[test]
    fn replays_what_no_landed_commit_covers_and_stops_at_a_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let key = key();
        let (r0, r1, other) = ([0; 32], [1; 32], [9; 32]);
        let j = Journal::create(
            &path,
            lock(&path, Duration::ZERO, false).unwrap(),
            key.clone(),
            r0,
            vec![remove("a")],
        )
        .unwrap();
        for shared in [false, true] {
            assert_eq!(
                lock(&path, Duration::from_millis(100), shared)
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::WouldBlock,
                "a second user of the journal is refused (shared: {shared})"
            );
        }
        j.append(&remove("b")).unwrap();
        assert_eq!(j.last_seq(), 2);
        let read = || Journal::read(&path, &key).unwrap();

        assert_eq!(read().replay(&r0), Replay::Apply(ops(&["a", "b"])));
        // A commit of seq 1 was about to land: if it did, only "b" is left to apply.
        j.note_commit(1, r1).unwrap();
        j.append(&remove("c")).unwrap();
        assert_eq!(read().replay(&r1), Replay::Apply(ops(&["b", "c"])));
        assert_eq!(read().replay(&r0), Replay::Apply(ops(&["a", "b", "c"])));
        assert_eq!(
            read().replay(&other),
            Replay::Foreign(ops(&["a", "b", "c"]))
        );

        // The commit landed: the journal keeps only what came after it.
        j.committed(1, r1).unwrap();
        assert_eq!(j.pending(), ops(&["b", "c"]));
        assert_eq!(read().replay(&r1), Replay::Apply(ops(&["b", "c"])));
        j.append(&remove("d")).unwrap();

        // A crash mid-append: the torn frame is dropped, and that is no damage.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let left = read();
        assert!(left.torn_bytes > 0);
        assert_eq!(left.damage, None);
        assert_eq!(left.replay(&r1), Replay::Apply(ops(&["b", "c"])));
    }

    /// Bytes of the journal at `path` with one byte flipped in frame `n` (0 is the base).
    fn flip_in_frame(path: &Path, n: usize) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        let mut at = HEADER_LEN;
        for _ in 0..n {
            at += 4 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        bytes[at + 4 + 30] ^= 0x40;
        bytes
    }

    #[test]
    fn a_damaged_frame_is_never_replayed_and_damage_before_valid_frames_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let key = key();
        let j = Journal::create(
            &path,
            lock(&path, Duration::ZERO, false).unwrap(),
            key.clone(),
            [0; 32],
            ops(&["a", "b", "c"]),
        )
        .unwrap();
        drop(j);
        let intact = std::fs::read(&path).unwrap();

        // Frame 2 ("b") damaged, "c" valid after it: damage, and "b" is gone for good.
        std::fs::write(&path, flip_in_frame(&path, 2)).unwrap();
        let left = Journal::read(&path, &key).unwrap();
        assert_eq!(
            left.damage,
            Some(Damage {
                frame: 2,
                offset: left.damage.as_ref().unwrap().offset,
                valid_after: 1
            })
        );
        assert_eq!(left.replay(&[0; 32]), Replay::Apply(ops(&["a", "c"])));

        // The last frame damaged: nothing follows it, so it is a torn tail.
        std::fs::write(&path, &intact).unwrap();
        std::fs::write(&path, flip_in_frame(&path, 3)).unwrap();
        let left = Journal::read(&path, &key).unwrap();
        assert_eq!(left.damage, None);
        assert!(left.torn_bytes > 0);
        assert_eq!(left.replay(&[0; 32]), Replay::Apply(ops(&["a", "b"])));

        // Frames reordered (each one valid on its own): the order is checked too.
        std::fs::write(&path, &intact).unwrap();
        let mut at = HEADER_LEN;
        let mut frames = Vec::new();
        while at < intact.len() {
            let end = at + 4 + u32::from_le_bytes(intact[at..at + 4].try_into().unwrap()) as usize;
            frames.push(intact[at..end].to_vec());
            at = end;
        }
        frames.swap(1, 2);
        let mut swapped = intact[..HEADER_LEN].to_vec();
        swapped.extend(frames.concat());
        std::fs::write(&path, swapped).unwrap();
        assert!(Journal::read(&path, &key).unwrap().damage.is_some());

        // Another key opens nothing, and applies nothing.
        std::fs::write(&path, &intact).unwrap();
        let left = Journal::read(&path, &self::key()).unwrap();
        assert!(left.is_empty());
    }

    #[test]
    fn an_unsealed_journal_is_read_once_and_rewritten_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let key = key();
        // The earlier format: length-prefixed codec records, names in the clear.
        let mut old = Vec::new();
        let records = [
            Record::Base { root_hash: [3; 32] },
            Record::Op {
                seq: 1,
                op: remove("secret-name-xyz"),
            },
        ];
        for record in &records {
            let body = codec::encode(Kind::JournalRecord, record).unwrap();
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&body);
        }
        std::fs::write(&path, &old).unwrap();
        let left = Journal::read(&path, &key).unwrap();
        assert!(left.unsealed);
        let Replay::Apply(kept) = left.replay(&[3; 32]) else {
            panic!("the old journal applies to its root")
        };
        assert_eq!(kept, ops(&["secret-name-xyz"]));

        let j = Journal::create(
            &path,
            lock(&path, Duration::ZERO, false).unwrap(),
            key.clone(),
            [3; 32],
            kept,
        )
        .unwrap();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"secret-name"));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let left = Journal::read(&path, &key).unwrap();
        assert!(!left.unsealed);
        assert_eq!(
            left.replay(&[3; 32]),
            Replay::Apply(ops(&["secret-name-xyz"]))
        );
    }

    #[test]
    fn read_only_users_share_the_lock_and_keep_a_writer_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let first = lock(&path, Duration::ZERO, true).unwrap();
        let second = lock(&path, Duration::ZERO, true).unwrap();
        let writer = lock(&path, Duration::from_millis(50), false);
        assert_eq!(writer.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop((first, second));
        lock(&path, Duration::ZERO, false).unwrap();
    }

    #[test]
    fn no_journal_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let left = Journal::read(&dir.path().join("absent"), &key()).unwrap();
        assert!(left.is_empty());
    }
}
