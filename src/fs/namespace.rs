//! The directory tree in memory: inode numbers, names and parents. The index keys are paths
//! (`dir/sub/file`, the root is the empty key); the tree is rebuilt from them at mount.
//!
//! A node's inode number is derived from its index key, so a file not renamed keeps its number
//! from one mount to the next, as programs that remember numbers expect (git's index, backup
//! tools' file caches: a changed number makes them read the file again). Within a mount a
//! number is not given again while its node exists or the kernel may still know it (it was
//! named in a reply and not yet forgotten, FUSE's lookup count): a number taken goes to the
//! next free one. Numbers the kernel forgot are given back, so a mount that creates and
//! deletes files for months does not keep one for every file it ever made.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::children::Children;
use super::open_file::OpenFile;
use crate::index::{inode_key, FileKind};

pub const ROOT_INO: u64 = 1;

/// Inode numbers have 63 bits: some programs keep them signed.
const INO_MASK: u64 = u64::MAX >> 1;

/// Key under which a file unlinked while open lives until its last handle closes. A NUL byte
/// cannot occur in a path, so these never clash with a file name.
pub fn orphan_key(ino: u64) -> String {
    format!("\0orphan/{ino}")
}

pub fn is_orphan_key(key: &str) -> bool {
    key.starts_with("\0orphan/")
}

pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

pub struct Node {
    /// The directory of the node's first name, and that name.
    pub parent: u64,
    pub name: String,
    pub kind: FileKind,
    pub children: Children,
    /// Shared state of the open handles of a regular file.
    pub open: Option<Arc<OpenFile>>,
    pub handles: usize,
    /// Every name removed while open: it lives under its orphan key (or its inode key).
    pub unlinked: bool,
    /// For a file with several names (hard links): its number, under which it lives in the
    /// index (`index::inode_key`), and its names after the first.
    pub link: Option<u64>,
    pub more_names: Vec<(u64, String)>,
}

impl Node {
    /// How many names the node has.
    pub fn nlink(&self) -> u32 {
        if self.unlinked {
            0
        } else {
            1 + self.more_names.len() as u32
        }
    }
}

pub struct Namespace {
    nodes: HashMap<u64, Node>,
    /// The inode numbers that may not be given now: those of the nodes, and those the kernel
    /// still knows.
    given: HashSet<u64>,
    /// How many times each number was named to the kernel and not yet forgotten.
    known: HashMap<u64, u64>,
    /// File number (hard links) -> inode.
    linked: HashMap<u64, u64>,
}

/// One index key as the tree is built from it: a path, its kind, and for a name of a file with
/// several names, that file's number.
pub struct KeyInfo {
    pub key: String,
    pub kind: FileKind,
    pub link: Option<u64>,
}

impl Namespace {
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, Node::new(ROOT_INO, String::new(), FileKind::Dir));
        Namespace {
            nodes,
            given: HashSet::from([ROOT_INO]),
            known: HashMap::new(),
            linked: HashMap::new(),
        }
    }

    /// A number for the node whose entry lives under `key`: the key's own (see the module's
    /// doc), or the next one free in this mount.
    fn number_for(&mut self, key: &str) -> u64 {
        let hash = blake3::hash(key.as_bytes());
        let mut ino = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap()) & INO_MASK;
        while ino <= ROOT_INO || !self.given.insert(ino) {
            ino = (ino + 1) & INO_MASK;
        }
        ino
    }

    /// A number for the file numbered `id` (hard links): `id` itself, which `link(2)` takes
    /// from the number the file had when it got its second name, so that it keeps it.
    fn number_for_link(&mut self, id: u64) -> u64 {
        if id > ROOT_INO && id <= INO_MASK && self.given.insert(id) {
            return id;
        }
        self.number_for(&inode_key(id))
    }

    /// Builds the tree from index keys (sorted, so a parent comes before its children). Keys
    /// whose parent is missing are returned, not placed. The names of one file number share an
    /// inode.
    pub fn build(keys: impl IntoIterator<Item = KeyInfo>) -> (Self, Vec<String>) {
        let mut ns = Namespace::new();
        let mut by_path: HashMap<String, u64> = HashMap::from([(String::new(), ROOT_INO)]);
        let mut stray = Vec::new();
        let mut keys: Vec<_> = keys.into_iter().filter(|k| !k.key.is_empty()).collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        for info in keys {
            let (parent_path, name) = match info.key.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), info.key.clone()),
            };
            match by_path.get(&parent_path) {
                Some(&parent) if ns.nodes[&parent].kind == FileKind::Dir => {
                    let ino = match info.link.and_then(|id| ns.linked.get(&id).copied()) {
                        Some(ino) => {
                            ns.add_name(ino, parent, &name);
                            ino
                        }
                        None => {
                            let ino = match info.link {
                                Some(id) => ns.number_for_link(id),
                                None => ns.number_for(&info.key),
                            };
                            ns.insert_numbered(ino, parent, &name, info.kind);
                            if let Some(id) = info.link {
                                ns.set_link(ino, id);
                            }
                            ino
                        }
                    };
                    by_path.insert(info.key, ino);
                }
                _ => stray.push(info.key),
            }
        }
        (ns, stray)
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The state of every file open now.
    pub fn open_files(&self) -> impl Iterator<Item = &std::sync::Arc<OpenFile>> {
        self.nodes.values().filter_map(|n| n.open.as_ref())
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.nodes.get(&parent)?.children.get(name)
    }

    /// The inode of the file numbered `id`, if it is in the tree.
    pub fn linked(&self, id: u64) -> Option<u64> {
        self.linked.get(&id).copied()
    }

    /// The index key of a node's entry: its path, or where a file with several names or
    /// without any lives.
    pub fn key(&self, ino: u64) -> Option<String> {
        let node = self.nodes.get(&ino)?;
        if let Some(id) = node.link {
            return Some(inode_key(id));
        }
        if node.unlinked {
            return Some(orphan_key(ino));
        }
        self.path(ino)
    }

    /// The path of a node's first name.
    fn path(&self, ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT_INO {
            let node = self.nodes.get(&at)?;
            parts.push(node.name.as_str());
            at = node.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// The index key of the name `name` in directory `parent`.
    pub fn name_key(&self, parent: u64, name: &str) -> Option<String> {
        Some(join(&self.path(parent)?, name))
    }

    /// Puts a new node in the tree, numbered by its path.
    pub fn insert(&mut self, parent: u64, name: &str, kind: FileKind) -> u64 {
        let key = self.name_key(parent, name).expect("parent exists");
        let ino = self.number_for(&key);
        self.insert_numbered(ino, parent, name, kind);
        ino
    }

    fn insert_numbered(&mut self, ino: u64, parent: u64, name: &str, kind: FileKind) {
        self.nodes
            .insert(ino, Node::new(parent, name.to_string(), kind));
        self.nodes
            .get_mut(&parent)
            .expect("parent exists")
            .children
            .insert(name.to_string(), ino, kind == FileKind::Dir);
    }

    /// Marks a node as the file numbered `id` (it lives under its inode key from now on).
    pub fn set_link(&mut self, ino: u64, id: u64) {
        self.nodes.get_mut(&ino).expect("node exists").link = Some(id);
        self.linked.insert(id, ino);
    }

    /// Gives a node another name.
    pub fn add_name(&mut self, ino: u64, parent: u64, name: &str) {
        self.nodes
            .get_mut(&parent)
            .expect("parent exists")
            .children
            .insert(name.to_string(), ino, false);
        let node = self.nodes.get_mut(&ino).expect("node exists");
        debug_assert!(node.kind != FileKind::Dir, "a directory has one name");
        node.more_names.push((parent, name.to_string()));
    }

    /// Takes a name out of its directory. A node left without names stays while it is open;
    /// returns whether it still has names.
    pub fn detach(&mut self, parent: u64, name: &str) -> Option<bool> {
        let ino = self.nodes.get_mut(&parent)?.children.remove(name)?;
        let node = self.nodes.get_mut(&ino).expect("child exists");
        if (node.parent, node.name.as_str()) == (parent, name) {
            match node.more_names.pop() {
                Some((p, n)) => (node.parent, node.name) = (p, n),
                None => {
                    if node.handles > 0 {
                        node.unlinked = true;
                    } else {
                        self.drop_node(ino);
                    }
                    return Some(false);
                }
            }
        } else {
            node.more_names
                .retain(|(p, n)| (*p, n.as_str()) != (parent, name));
        }
        Some(true)
    }

    fn drop_node(&mut self, ino: u64) {
        if let Some(id) = self.nodes.remove(&ino).and_then(|n| n.link) {
            self.linked.remove(&id);
        }
        self.release_number(ino);
    }

    /// The kernel was given `ino` in a reply that counts as a lookup (an entry from `lookup`,
    /// `create`, `mkdir`, `mknod`, `symlink`, `link`, or `readdirplus` other than `.` and
    /// `..`). Called before the reply goes out, so a `forget` can never come first.
    pub fn told_kernel(&mut self, ino: u64) {
        if ino != ROOT_INO {
            *self.known.entry(ino).or_default() += 1;
        }
    }

    /// The kernel forgot `ino` `count` times (FUSE `forget`). A number it no longer holds and
    /// no node has is free again.
    pub fn kernel_forgot(&mut self, ino: u64, count: u64) {
        let Some(held) = self.known.get_mut(&ino) else {
            return;
        };
        *held = held.saturating_sub(count);
        if *held == 0 {
            self.known.remove(&ino);
            self.release_number(ino);
        }
    }

    fn release_number(&mut self, ino: u64) {
        if ino != ROOT_INO && !self.nodes.contains_key(&ino) && !self.known.contains_key(&ino) {
            self.given.remove(&ino);
        }
    }

    /// How many numbers are held (by nodes or the kernel): what the mount's memory for numbers
    /// grows with.
    pub fn numbers_held(&self) -> usize {
        self.given.len()
    }

    /// Moves one name of a node to a new parent and name (the target name must be free).
    pub fn move_name(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let ino = self
            .nodes
            .get_mut(&parent)
            .unwrap()
            .children
            .remove(name)
            .expect("name exists");
        let is_dir = self.rename_node(ino, (parent, name), (new_parent, new_name));
        self.nodes
            .get_mut(&new_parent)
            .unwrap()
            .children
            .insert(new_name.to_string(), ino, is_dir);
    }

    /// Swaps two names (`RENAME_EXCHANGE`): each node takes the other's place.
    pub fn exchange(&mut self, parent: u64, name: &str, other_parent: u64, other_name: &str) {
        let mut take = |dir: u64, name: &str| {
            let children = &mut self.nodes.get_mut(&dir).unwrap().children;
            children.remove(name).expect("name exists")
        };
        let (a, b) = (take(parent, name), take(other_parent, other_name));
        let a_dir = self.rename_node(a, (parent, name), (other_parent, other_name));
        let b_dir = self.rename_node(b, (other_parent, other_name), (parent, name));
        let mut put = |dir: u64, name: &str, ino: u64, is_dir: bool| {
            let children = &mut self.nodes.get_mut(&dir).unwrap().children;
            children.insert(name.to_string(), ino, is_dir);
        };
        put(other_parent, other_name, a, a_dir);
        put(parent, name, b, b_dir);
    }

    /// Changes one name of node `ino` from `old` to `new` (its directories' entries aside);
    /// whether it is a directory.
    fn rename_node(&mut self, ino: u64, old: (u64, &str), new: (u64, &str)) -> bool {
        let node = self.nodes.get_mut(&ino).unwrap();
        if (node.parent, node.name.as_str()) == old {
            node.parent = new.0;
            node.name = new.1.to_string();
        } else {
            for other in &mut node.more_names {
                if (other.0, other.1.as_str()) == old {
                    *other = (new.0, new.1.to_string());
                }
            }
        }
        node.kind == FileKind::Dir
    }

    /// Drops a node left without names once nothing holds it.
    pub fn forget_if_unused(&mut self, ino: u64) {
        if self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.unlinked && n.handles == 0)
        {
            self.drop_node(ino);
        }
    }

    /// Whether `ino` is `ancestor` or lies below it.
    pub fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match self.nodes.get(&ino) {
                Some(node) => ino = node.parent,
                None => return false,
            }
        }
    }

    /// The index keys of the name `key` of node `ino` and of every name below it, the node's
    /// first: what moves when a directory is renamed.
    pub fn keys_below(&self, ino: u64, key: &str) -> Vec<String> {
        let mut out = vec![key.to_string()];
        let mut stack = vec![(ino, key.to_string())];
        while let Some((dir, dir_key)) = stack.pop() {
            let Some(node) = self.nodes.get(&dir) else {
                continue;
            };
            for (_, name, child) in node.children.after(0) {
                let child_key = join(&dir_key, name);
                out.push(child_key.clone());
                if self
                    .nodes
                    .get(&child)
                    .is_some_and(|n| n.kind == FileKind::Dir)
                {
                    stack.push((child, child_key));
                }
            }
        }
        out
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    fn new(parent: u64, name: String, kind: FileKind) -> Self {
        Node {
            parent,
            name,
            kind,
            children: Children::default(),
            open: None,
            handles: 0,
            unlinked: false,
            link: None,
            more_names: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str, kind: FileKind, link: Option<u64>) -> KeyInfo {
        KeyInfo {
            key: key.into(),
            kind,
            link,
        }
    }

    #[test]
    fn builds_paths_and_moves_subtrees() {
        let (mut ns, stray) = Namespace::build(vec![
            key("a", FileKind::Dir, None),
            key("a/b", FileKind::File, None),
            key("a/c", FileKind::Dir, None),
            key("a/c/d", FileKind::File, None),
            key("x/y", FileKind::File, None),
        ]);
        assert_eq!(stray, vec!["x/y".to_string()]);
        let a = ns.child(ROOT_INO, "a").unwrap();
        let c = ns.child(a, "c").unwrap();
        let d = ns.child(c, "d").unwrap();
        assert_eq!(ns.key(d).unwrap(), "a/c/d");
        ns.move_name(a, "c", ROOT_INO, "moved");
        assert_eq!(ns.key(d).unwrap(), "moved/d");
        assert!(ns.is_within(d, c));
        assert!(!ns.is_within(a, c));
        assert_eq!(ns.keys_below(c, "moved"), vec!["moved", "moved/d"]);
    }

    #[test]
    fn names_of_one_file_share_an_inode_until_the_last_goes() {
        let (mut ns, _) = Namespace::build(vec![
            key("d", FileKind::Dir, None),
            key("d/one", FileKind::File, Some(7)),
            key("two", FileKind::File, Some(7)),
        ]);
        let d = ns.child(ROOT_INO, "d").unwrap();
        let ino = ns.child(d, "one").unwrap();
        assert_eq!(ns.child(ROOT_INO, "two"), Some(ino));
        assert_eq!(ns.get(ino).unwrap().nlink(), 2);
        assert_eq!(ns.key(ino).unwrap(), inode_key(7));
        assert_eq!(ns.keys_below(d, "d"), vec!["d", "d/one"]);
        ns.move_name(d, "one", ROOT_INO, "three");
        assert_eq!(ns.detach(ROOT_INO, "two"), Some(true));
        assert_eq!(ns.get(ino).unwrap().nlink(), 1);
        assert_eq!(ns.child(ROOT_INO, "three"), Some(ino));
        assert_eq!(ns.detach(ROOT_INO, "three"), Some(false));
        assert!(ns.get(ino).is_none() && ns.linked(7).is_none());
    }

    #[test]
    fn a_file_keeps_its_number_across_mounts_and_no_number_is_given_twice() {
        let keys = || {
            vec![
                key("d", FileKind::Dir, None),
                key("d/f", FileKind::File, None),
                key("d/one", FileKind::File, Some(7)),
                key("two", FileKind::File, Some(7)),
            ]
        };
        let (first, _) = Namespace::build(keys());
        let mut reversed = keys();
        reversed.reverse();
        let (mut ns, _) = Namespace::build(reversed);
        let d = ns.child(ROOT_INO, "d").unwrap();
        let f = ns.child(d, "f").unwrap();
        for (parent, name) in [(ROOT_INO, "d"), (d, "f"), (d, "one"), (ROOT_INO, "two")] {
            let other_parent = match parent {
                ROOT_INO => ROOT_INO,
                _ => first.child(ROOT_INO, "d").unwrap(),
            };
            assert_eq!(ns.child(parent, name), first.child(other_parent, name));
        }
        let numbers: HashSet<u64> = [d, f, ns.child(d, "one").unwrap(), ROOT_INO].into();
        assert_eq!(numbers.len(), 4);

        // Gone and made again in the same mount while the kernel still holds the old number:
        // a new number. Renamed: the same number.
        ns.told_kernel(f);
        ns.told_kernel(f);
        assert_eq!(ns.detach(d, "f"), Some(false));
        let again = ns.insert(d, "f", FileKind::File);
        assert_ne!(again, f);
        ns.move_name(d, "f", ROOT_INO, "g");
        assert_eq!(ns.child(ROOT_INO, "g"), Some(again));
        // Once the kernel has forgotten it as often as it was told, the number is free: the
        // name made again gets it back, and no number is kept for the file that went.
        let held = ns.numbers_held();
        ns.kernel_forgot(f, 1);
        assert_ne!(ns.insert(d, "f", FileKind::File), f);
        assert_eq!(ns.detach(d, "f"), Some(false));
        ns.kernel_forgot(f, 1);
        assert_eq!(ns.numbers_held(), held - 1);
        assert_eq!(ns.insert(d, "f", FileKind::File), f);
        // A node still in the tree keeps its number whatever the kernel forgets.
        ns.told_kernel(again);
        ns.kernel_forgot(again, 5);
        assert!(ns.given.contains(&again));
        // A number's neighbours taken, the next free one is given.
        let mut crowded = Namespace::new();
        let wanted = crowded.number_for("k");
        let mut fresh = Namespace::new();
        fresh.given.extend([wanted, wanted + 1]);
        assert_eq!(fresh.number_for("k"), wanted + 2);
    }
}
