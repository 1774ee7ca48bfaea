//! The local journal: every index change since the last commit, appended to a file as it is
//! made. Commits can then be grouped (one per interval, not one per closed file) without losing
//! what a killed mount had acknowledged: the next open replays the journal on top of the root it
//! was written against. A journal written against a root that someone else has since replaced is
//! not replayed blindly: its changes are saved as files for the user to recover.
//!
//! The file is a sequence of frames (`u32` length, then a codec record with its own checksum). A
//! torn or damaged frame ends the journal: what follows it is ignored, so a crash mid-append loses
//! at most the change whose call had not returned. Appends are `write`s without `fsync`, which a
//! killed process cannot lose; commits (and `fsync(2)` on a file, which commits) make changes
//! durable in the store. The records that matter for safety, a commit's intent and the rewrite
//! after it, are synced.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::codec::{self, Kind};
use crate::index::{self, Entry, Meta};

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

/// What a journal left by an earlier run says.
#[derive(Debug, Default)]
pub struct Leftover {
    base: Option<[u8; 32]>,
    ops: Vec<(u64, Op)>,
    commits: Vec<(u64, [u8; 32])>,
    /// Bytes after the last whole frame (a crash mid-append, or damage).
    pub torn_bytes: usize,
}

/// What to do with a leftover journal, given the root the store holds now.
#[derive(Debug, PartialEq)]
pub enum Replay {
    /// These ops are not in the stored root: apply them.
    Apply(Vec<Op>),
    /// The stored root is not one this journal led to: someone else committed. These ops
    /// cannot be applied safely; they are to be saved for the user.
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
}

pub struct Journal {
    path: PathBuf,
    file: Mutex<Open>,
    /// Held for the journal's life: two processes appending to one journal would garble it.
    _lock: File,
}

/// Takes the lock that makes a journal this process's alone; an error if another holds it.
pub fn lock(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "another mutant-mount is using this store with the same key (its journal is locked)",
            )
        } else {
            e
        });
    }
    Ok(file)
}

struct Open {
    file: File,
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

fn frame(record: &Record) -> io::Result<Vec<u8>> {
    let body = codec::encode(Kind::JournalRecord, record)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

impl Journal {
    /// Reads the journal at `path`; an absent file is an empty journal.
    pub fn read(path: &Path) -> io::Result<Leftover> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Leftover::default()),
            Err(e) => return Err(e),
        };
        let mut left = Leftover::default();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let Some(body) = bytes.get(at + 4..at + 4 + len) else {
                break;
            };
            let Ok(record) = decode_record(body) else {
                break;
            };
            match record {
                Record::Base { root_hash } if left.base.is_none() => left.base = Some(root_hash),
                Record::Base { .. } => break,
                Record::Op { seq, op } => left.ops.push((seq, op)),
                Record::Commit { upto, root_hash } => left.commits.push((upto, root_hash)),
            }
            at += 4 + len;
        }
        left.torn_bytes = bytes.len() - at;
        Ok(left)
    }

    /// Starts a journal at `path` (replacing any) on top of the root with hash `root_hash`,
    /// holding `ops` not yet committed.
    pub fn create(
        path: &Path,
        lock: File,
        root_hash: [u8; 32],
        ops: Vec<Op>,
    ) -> io::Result<Journal> {
        let pending: Vec<(u64, Op)> = ops.into_iter().zip(1..).map(|(op, n)| (n, op)).collect();
        let file = write_new(path, root_hash, &pending)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(Open {
                file,
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
        let bytes = frame(&Record::Op {
            seq,
            op: op.clone(),
        })?;
        open.file.write_all(&bytes)?;
        open.next_seq += 1;
        open.pending.push((seq, op.clone()));
        Ok(seq)
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
        let bytes = frame(&Record::Commit { upto, root_hash })?;
        open.file.write_all(&bytes)?;
        open.file.sync_data()
    }

    /// After the commit of the changes up to `upto` landed as the root with hash `root_hash`:
    /// rewrites the journal to hold only the later changes.
    pub fn committed(&self, upto: u64, root_hash: [u8; 32]) -> io::Result<()> {
        let mut open = self.file.lock().unwrap();
        open.pending.retain(|(seq, _)| *seq > upto);
        open.file = write_new(&self.path, root_hash, &open.pending)?;
        Ok(())
    }

    /// The changes not yet covered by a landed commit.
    pub fn pending(&self) -> Vec<Op> {
        let open = self.file.lock().unwrap();
        open.pending.iter().map(|(_, op)| op.clone()).collect()
    }
}

/// Writes a whole journal next to `path`, syncs it and renames it over; returns it open for
/// appending.
fn write_new(path: &Path, root_hash: [u8; 32], ops: &[(u64, Op)]) -> io::Result<File> {
    let tmp = path.with_extension("new");
    let mut bytes = frame(&Record::Base { root_hash })?;
    for (seq, op) in ops {
        bytes.extend(frame(&Record::Op {
            seq: *seq,
            op: op.clone(),
        })?);
    }
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove(key: &str) -> Op {
        Op::Remove { key: key.into() }
    }

    #[test]
    fn replays_what_no_landed_commit_covers_and_stops_at_a_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (r0, r1, other) = ([0; 32], [1; 32], [9; 32]);
        let j = Journal::create(&path, lock(&path).unwrap(), r0, vec![remove("a")]).unwrap();
        assert_eq!(
            lock(&path).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "a second user of the journal is refused"
        );
        j.append(&remove("b")).unwrap();
        assert_eq!(j.last_seq(), 2);
        let ops = |names: &[&str]| names.iter().map(|n| remove(n)).collect::<Vec<_>>();

        assert_eq!(
            Journal::read(&path).unwrap().replay(&r0),
            Replay::Apply(ops(&["a", "b"]))
        );
        // A commit of seq 1 was about to land: if it did, only "b" is left to apply.
        j.note_commit(1, r1).unwrap();
        j.append(&remove("c")).unwrap();
        assert_eq!(
            Journal::read(&path).unwrap().replay(&r1),
            Replay::Apply(ops(&["b", "c"]))
        );
        assert_eq!(
            Journal::read(&path).unwrap().replay(&r0),
            Replay::Apply(ops(&["a", "b", "c"]))
        );
        assert_eq!(
            Journal::read(&path).unwrap().replay(&other),
            Replay::Foreign(ops(&["a", "b", "c"]))
        );

        // The commit landed: the journal keeps only what came after it.
        j.committed(1, r1).unwrap();
        assert_eq!(j.pending(), ops(&["b", "c"]));
        assert_eq!(
            Journal::read(&path).unwrap().replay(&r1),
            Replay::Apply(ops(&["b", "c"]))
        );
        j.append(&remove("d")).unwrap();

        // A crash mid-append: the torn frame and anything after it are ignored.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let left = Journal::read(&path).unwrap();
        assert!(left.torn_bytes > 0);
        assert_eq!(left.replay(&r1), Replay::Apply(ops(&["b", "c"])));
    }

    #[test]
    fn no_journal_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let left = Journal::read(&dir.path().join("absent")).unwrap();
        assert!(left.is_empty());
    }
}
