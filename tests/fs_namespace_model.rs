//! Model test of the namespace: random sequences of mkdir, create, write, link, rename (of
//! files and whole directories, over files and directories), unlink and rmdir, with remounts,
//! driven through the file-system core and checked against a plain in-memory tree: the same
//! errno for every call, and after every step the same tree (names, kinds, contents, link
//! counts, which names share an inode).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mutant_mount::engine::{Engine, EngineOptions};
use mutant_mount::fs::namespace::ROOT_INO;
use mutant_mount::fs::{Caller, Errno, FsConfig, FsCore};
use mutant_mount::index::FileKind;
use mutant_mount::keys::MasterKey;
use mutant_mount::store::{LocalStore, PadStore};
use proptest::prelude::*;

const ME: Caller = Caller { uid: 0, gid: 0 };
const CHUNK: usize = 4096;
/// Few names, so that operations meet existing names and each other's directories.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A path of the model picked by position among the paths that exist when the op runs.
type Pick = usize;

#[derive(Clone, Debug)]
enum Op {
    Mkdir {
        dir: Pick,
        name: usize,
    },
    Create {
        dir: Pick,
        name: usize,
        len: usize,
        seed: u8,
    },
    Write {
        file: Pick,
        at: usize,
        len: usize,
        seed: u8,
    },
    Link {
        file: Pick,
        dir: Pick,
        name: usize,
    },
    Rename {
        from: Pick,
        dir: Pick,
        name: usize,
    },
    Unlink {
        path: Pick,
    },
    Rmdir {
        path: Pick,
    },
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let pick = 0usize..64;
    let name = 0..NAMES.len();
    prop_oneof![
        3 => (pick.clone(), name.clone()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        4 => (pick.clone(), name.clone(), 0..3 * CHUNK, any::<u8>())
            .prop_map(|(dir, name, len, seed)| Op::Create { dir, name, len, seed }),
        2 => (pick.clone(), 0..2 * CHUNK, 1..CHUNK, any::<u8>())
            .prop_map(|(file, at, len, seed)| Op::Write { file, at, len, seed }),
        4 => (pick.clone(), pick.clone(), name.clone())
            .prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        4 => (pick.clone(), pick.clone(), name.clone())
            .prop_map(|(from, dir, name)| Op::Rename { from, dir, name }),
        3 => pick.clone().prop_map(|path| Op::Unlink { path }),
        2 => pick.prop_map(|path| Op::Rmdir { path }),
        1 => Just(Op::Remount),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir(BTreeMap<String, usize>),
    File(Vec<u8>),
}

/// The reference: nodes by number, the root directory is node 0.
#[derive(Debug)]
struct Model {
    nodes: HashMap<usize, Node>,
    next: usize,
}

impl Model {
    fn new() -> Self {
        Model {
            nodes: HashMap::from([(0, Node::Dir(BTreeMap::new()))]),
            next: 1,
        }
    }

    /// Every path, with its node, parents before children: `""` is the root.
    fn paths(&self) -> Vec<(String, usize)> {
        let mut out = vec![(String::new(), 0)];
        let mut i = 0;
        while i < out.len() {
            let (path, node) = out[i].clone();
            if let Node::Dir(children) = &self.nodes[&node] {
                for (name, &child) in children {
                    let p = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}/{name}")
                    };
                    out.push((p, child));
                }
            }
            i += 1;
        }
        out
    }

    fn pick(&self, pick: Pick, want_dir: Option<bool>) -> Option<(String, usize)> {
        let all: Vec<_> = (self.paths().into_iter())
            .filter(|(_, n)| want_dir.is_none_or(|d| matches!(self.nodes[n], Node::Dir(_)) == d))
            .collect();
        (!all.is_empty()).then(|| all[pick % all.len()].clone())
    }

    fn children(&self, dir: usize) -> &BTreeMap<String, usize> {
        match &self.nodes[&dir] {
            Node::Dir(c) => c,
            Node::File(_) => panic!("not a directory"),
        }
    }

    fn children_mut(&mut self, dir: usize) -> &mut BTreeMap<String, usize> {
        match self.nodes.get_mut(&dir).unwrap() {
            Node::Dir(c) => c,
            Node::File(_) => panic!("not a directory"),
        }
    }

    fn is_dir(&self, node: usize) -> bool {
        matches!(self.nodes[&node], Node::Dir(_))
    }

    /// Whether `node` is `ancestor` or below it.
    fn within(&self, node: usize, ancestor: usize) -> bool {
        let mut stack = vec![ancestor];
        while let Some(n) = stack.pop() {
            if n == node {
                return true;
            }
            if let Node::Dir(c) = &self.nodes[&n] {
                stack.extend(c.values());
            }
        }
        false
    }

    fn links(&self, node: usize) -> usize {
        self.paths()
            .iter()
            .filter(|(p, n)| *n == node && !p.is_empty())
            .count()
    }

    /// Drops nodes no name reaches any more.
    fn collect(&mut self) {
        let live: std::collections::HashSet<usize> =
            self.paths().into_iter().map(|(_, n)| n).collect();
        self.nodes.retain(|n, _| live.contains(n));
    }

    fn parent_of(path: &str) -> (&str, &str) {
        path.rsplit_once('/').unwrap_or(("", path))
    }

    fn node_at(&self, path: &str) -> usize {
        self.paths().into_iter().find(|(p, _)| p == path).unwrap().1
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

struct Harness {
    dir: tempfile::TempDir,
    key: MasterKey,
    fs: Arc<FsCore>,
}

impl Harness {
    async fn start(dir: tempfile::TempDir, key: MasterKey) -> Harness {
        let store: Arc<dyn PadStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let opts = EngineOptions {
            scratchpad_size: CHUNK as u32,
            ..Default::default()
        };
        let engine = Engine::open(store, key.clone(), opts).await.unwrap();
        let fs = FsCore::start(engine, FsConfig::default()).await.unwrap();
        Harness { dir, key, fs }
    }

    async fn ino(&self, path: &str) -> u64 {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.fs.lookup(ino, part).await.unwrap().ino;
        }
        ino
    }

    /// The tree as the core shows it: path -> (kind, size, contents, nlink, inode).
    async fn tree(&self) -> BTreeMap<String, (FileKind, Vec<u8>, u32, u64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(String::new(), ROOT_INO)];
        while let Some((path, ino)) = stack.pop() {
            let listed = self.fs.readdir(ino, 0, 10_000).await.unwrap();
            for (_, entry) in listed.into_iter().skip(2) {
                let p = if path.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{path}/{}", entry.name)
                };
                let attr = self.fs.getattr(entry.ino).await.unwrap();
                let data = if attr.kind == FileKind::File {
                    let fh = self.fs.open(entry.ino, libc::O_RDONLY).await.unwrap();
                    let d = self
                        .fs
                        .read(fh, 0, attr.size as u32 + 1)
                        .await
                        .unwrap()
                        .to_vec();
                    self.fs.release(fh).await.unwrap();
                    d
                } else {
                    stack.push((p.clone(), entry.ino));
                    Vec::new()
                };
                out.insert(p, (attr.kind, data, attr.nlink, entry.ino));
            }
        }
        out
    }
}

/// The model's tree in the core's terms, and the check that names share inodes exactly as
/// they share nodes.
fn compare(
    model: &Model,
    got: &BTreeMap<String, (FileKind, Vec<u8>, u32, u64)>,
) -> Result<(), TestCaseError> {
    let paths: Vec<(String, usize)> = model.paths().into_iter().skip(1).collect();
    let got_names: Vec<&String> = got.keys().collect();
    let mut want_names: Vec<&String> = paths.iter().map(|(p, _)| p).collect();
    want_names.sort();
    prop_assert_eq!(got_names, want_names);
    let mut ino_of_node: HashMap<usize, u64> = HashMap::new();
    for (path, node) in &paths {
        let (kind, data, nlink, ino) = &got[path];
        match &model.nodes[node] {
            Node::Dir(children) => {
                prop_assert_eq!(*kind, FileKind::Dir, "{}", path);
                let subdirs = children.values().filter(|c| model.is_dir(**c)).count();
                prop_assert_eq!(*nlink as usize, 2 + subdirs, "nlink of {}", path);
            }
            Node::File(content) => {
                prop_assert_eq!(*kind, FileKind::File, "{}", path);
                prop_assert!(data == content, "content of {}", path);
                prop_assert_eq!(*nlink as usize, model.links(*node), "nlink of {}", path);
            }
        }
        let seen = *ino_of_node.entry(*node).or_insert(*ino);
        prop_assert_eq!(seen, *ino, "{} is another inode than its other names", path);
    }
    let distinct: std::collections::HashSet<u64> = ino_of_node.values().copied().collect();
    prop_assert_eq!(
        distinct.len(),
        ino_of_node.len(),
        "two files share an inode"
    );
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::start(tempfile::tempdir().unwrap(), MasterKey::generate()).await;
    let mut model = Model::new();
    for op in ops {
        let outcome: Option<(Result<(), Errno>, Result<(), Errno>)> = match op.clone() {
            Op::Mkdir { dir, name } => {
                let (dpath, dnode) = model.pick(dir, Some(true)).unwrap();
                let name = NAMES[name];
                let want = if model.children(dnode).contains_key(name) {
                    Err(Errno(libc::EEXIST))
                } else {
                    let n = model.next;
                    model.next += 1;
                    model.nodes.insert(n, Node::Dir(BTreeMap::new()));
                    model.children_mut(dnode).insert(name.into(), n);
                    Ok(())
                };
                let parent = h.ino(&dpath).await;
                let got = h.fs.mkdir(parent, name, 0o755, ME).await.map(|_| ());
                Some((got, want))
            }
            Op::Create {
                dir,
                name,
                len,
                seed,
            } => {
                let (dpath, dnode) = model.pick(dir, Some(true)).unwrap();
                let name = NAMES[name];
                let data = bytes(seed, len);
                let parent = h.ino(&dpath).await;
                let want = if model.children(dnode).contains_key(name) {
                    Err(Errno(libc::EEXIST))
                } else {
                    let n = model.next;
                    model.next += 1;
                    model.nodes.insert(n, Node::File(data.clone()));
                    model.children_mut(dnode).insert(name.into(), n);
                    Ok(())
                };
                let got = match h
                    .fs
                    .create(parent, name, 0o644, libc::O_WRONLY | libc::O_EXCL, ME)
                    .await
                {
                    Ok((_, fh)) => {
                        h.fs.write(fh, 0, &data).await.unwrap();
                        h.fs.release(fh).await
                    }
                    Err(e) => Err(e),
                };
                Some((got, want))
            }
            Op::Write {
                file,
                at,
                len,
                seed,
            } => match model.pick(file, Some(false)) {
                None => None,
                Some((path, node)) => {
                    let data = bytes(seed, len);
                    if let Node::File(content) = model.nodes.get_mut(&node).unwrap() {
                        if content.len() < at + len {
                            content.resize(at + len, 0);
                        }
                        content[at..at + len].copy_from_slice(&data);
                    }
                    let ino = h.ino(&path).await;
                    let fh = h.fs.open(ino, libc::O_WRONLY).await.unwrap();
                    h.fs.write(fh, at as u64, &data).await.unwrap();
                    Some((h.fs.release(fh).await, Ok(())))
                }
            },
            Op::Link { file, dir, name } => {
                let (path, node) = model.pick(file, None).unwrap();
                let (dpath, dnode) = model.pick(dir, Some(true)).unwrap();
                let name = NAMES[name];
                if path.is_empty() {
                    None
                } else {
                    let want = if model.is_dir(node) {
                        Err(Errno(libc::EPERM))
                    } else if model.children(dnode).contains_key(name) {
                        Err(Errno(libc::EEXIST))
                    } else {
                        model.children_mut(dnode).insert(name.into(), node);
                        Ok(())
                    };
                    let (ino, parent) = (h.ino(&path).await, h.ino(&dpath).await);
                    let got = h.fs.link(ino, parent, name).await.map(|_| ());
                    Some((got, want))
                }
            }
            Op::Rename { from, dir, name } => {
                let (path, node) = model.pick(from, None).unwrap();
                let (dpath, dnode) = model.pick(dir, Some(true)).unwrap();
                let name = NAMES[name];
                if path.is_empty() {
                    None
                } else {
                    let (ppath, old_name) = Model::parent_of(&path);
                    let (ppath, old_name) = (ppath.to_string(), old_name.to_string());
                    let pnode = model.node_at(&ppath);
                    let target = model.children(dnode).get(name).copied();
                    let is_dir = model.is_dir(node);
                    let want = if is_dir && model.within(dnode, node) {
                        Err(Errno(libc::EINVAL))
                    } else if target == Some(node) {
                        Ok(()) // two names of one file: nothing happens
                    } else {
                        match target {
                            Some(t) if is_dir && !model.is_dir(t) => Err(Errno(libc::ENOTDIR)),
                            Some(t) if !is_dir && model.is_dir(t) => Err(Errno(libc::EISDIR)),
                            Some(t) if model.is_dir(t) && !model.children(t).is_empty() => {
                                Err(Errno(libc::ENOTEMPTY))
                            }
                            _ => {
                                model.children_mut(pnode).remove(&old_name);
                                model.children_mut(dnode).insert(name.into(), node);
                                model.collect();
                                Ok(())
                            }
                        }
                    };
                    let (parent, new_parent) = (h.ino(&ppath).await, h.ino(&dpath).await);
                    let got = h.fs.rename(parent, &old_name, new_parent, name, 0).await;
                    Some((got, want))
                }
            }
            Op::Unlink { path } => match model.pick(path, None) {
                Some((path, node)) if !path.is_empty() => {
                    let (ppath, name) = Model::parent_of(&path);
                    let (ppath, name) = (ppath.to_string(), name.to_string());
                    let want = if model.is_dir(node) {
                        Err(Errno(libc::EISDIR))
                    } else {
                        let pnode = model.node_at(&ppath);
                        model.children_mut(pnode).remove(&name);
                        model.collect();
                        Ok(())
                    };
                    let parent = h.ino(&ppath).await;
                    Some((h.fs.unlink(parent, &name).await, want))
                }
                _ => None,
            },
            Op::Rmdir { path } => match model.pick(path, None) {
                Some((path, node)) if !path.is_empty() => {
                    let (ppath, name) = Model::parent_of(&path);
                    let (ppath, name) = (ppath.to_string(), name.to_string());
                    let want = if !model.is_dir(node) {
                        Err(Errno(libc::ENOTDIR))
                    } else if !model.children(node).is_empty() {
                        Err(Errno(libc::ENOTEMPTY))
                    } else {
                        let pnode = model.node_at(&ppath);
                        model.children_mut(pnode).remove(&name);
                        model.collect();
                        Ok(())
                    };
                    let parent = h.ino(&ppath).await;
                    Some((h.fs.rmdir(parent, &name).await, want))
                }
                _ => None,
            },
            Op::Remount => {
                h.fs.sync_all().await.unwrap();
                let Harness { dir, key, fs } = h;
                drop(fs);
                h = Harness::start(dir, key).await;
                None
            }
        };
        if let Some((got, want)) = outcome {
            prop_assert_eq!(got, want, "{:?}", op);
        }
        compare(&model, &h.tree().await)?;
    }
    // From the store alone: everything committed, a fresh core sees the same tree.
    h.fs.sync_all().await.unwrap();
    h.fs.engine().check_accounting().await.unwrap();
    let Harness { dir, key, fs } = h;
    drop(fs);
    let h = Harness::start(dir, key).await;
    compare(&model, &h.tree().await)?;
    h.fs.engine().check_accounting().await.unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn the_namespace_behaves_like_a_plain_tree(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
