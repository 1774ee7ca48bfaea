//! The directory tree in memory: inode numbers, names and parents. The index keys are paths
//! (`dir/sub/file`, the root is the empty key); the tree is rebuilt from them at mount, and inode
//! numbers are stable for the life of a mount.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::open_file::OpenFile;
use crate::index::FileKind;

pub const ROOT_INO: u64 = 1;

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
    pub parent: u64,
    pub name: String,
    pub kind: FileKind,
    pub children: BTreeMap<String, u64>,
    /// Shared state of the open handles of a regular file.
    pub open: Option<Arc<OpenFile>>,
    pub handles: usize,
    /// Removed from the tree while open: it lives under its orphan key.
    pub unlinked: bool,
}

pub struct Namespace {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl Namespace {
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, Node::new(ROOT_INO, String::new(), FileKind::Dir));
        Namespace {
            nodes,
            next_ino: ROOT_INO + 1,
        }
    }

    /// Builds the tree from index keys (sorted, so a parent comes before its children). Keys
    /// whose parent is missing are returned, not placed.
    pub fn build(keys: impl IntoIterator<Item = (String, FileKind)>) -> (Self, Vec<String>) {
        let mut ns = Namespace::new();
        let mut by_path: HashMap<String, u64> = HashMap::from([(String::new(), ROOT_INO)]);
        let mut stray = Vec::new();
        let mut keys: Vec<_> = keys.into_iter().filter(|(k, _)| !k.is_empty()).collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, kind) in keys {
            let (parent_path, name) = match key.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), key.clone()),
            };
            match by_path.get(&parent_path) {
                Some(&parent) if ns.nodes[&parent].kind == FileKind::Dir => {
                    let ino = ns.insert(parent, &name, kind);
                    by_path.insert(key, ino);
                }
                _ => stray.push(key),
            }
        }
        (ns, stray)
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.nodes.get(&parent)?.children.get(name).copied()
    }

    /// The index key of a node.
    pub fn key(&self, ino: u64) -> Option<String> {
        let node = self.nodes.get(&ino)?;
        if node.unlinked {
            return Some(orphan_key(ino));
        }
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

    pub fn insert(&mut self, parent: u64, name: &str, kind: FileKind) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, Node::new(parent, name.to_string(), kind));
        self.nodes
            .get_mut(&parent)
            .expect("parent exists")
            .children
            .insert(name.to_string(), ino);
        ino
    }

    /// Takes a name out of its directory; the node stays if it is open.
    pub fn detach(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.nodes.get_mut(&parent)?.children.remove(name)?;
        let node = self.nodes.get_mut(&ino).expect("child exists");
        if node.handles > 0 {
            node.unlinked = true;
        } else {
            self.nodes.remove(&ino);
        }
        Some(ino)
    }

    /// Moves a node to a new parent and name (the target name must be free).
    pub fn move_node(&mut self, ino: u64, new_parent: u64, new_name: &str) {
        let (old_parent, old_name) = {
            let node = &self.nodes[&ino];
            (node.parent, node.name.clone())
        };
        self.nodes
            .get_mut(&old_parent)
            .unwrap()
            .children
            .remove(&old_name);
        let node = self.nodes.get_mut(&ino).unwrap();
        node.parent = new_parent;
        node.name = new_name.to_string();
        self.nodes
            .get_mut(&new_parent)
            .unwrap()
            .children
            .insert(new_name.to_string(), ino);
    }

    /// Drops an unlinked node once nothing holds it.
    pub fn forget_if_unused(&mut self, ino: u64) {
        if self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.unlinked && n.handles == 0)
        {
            self.nodes.remove(&ino);
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

    /// Every node at or below `ino`, the node first.
    pub fn subtree(&self, ino: u64) -> Vec<u64> {
        let mut out = vec![ino];
        let mut i = 0;
        while i < out.len() {
            if let Some(node) = self.nodes.get(&out[i]) {
                out.extend(node.children.values().copied());
            }
            i += 1;
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
            children: BTreeMap::new(),
            open: None,
            handles: 0,
            unlinked: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_paths_and_moves_subtrees() {
        let (mut ns, stray) = Namespace::build(vec![
            ("a".into(), FileKind::Dir),
            ("a/b".into(), FileKind::File),
            ("a/c".into(), FileKind::Dir),
            ("a/c/d".into(), FileKind::File),
            ("x/y".into(), FileKind::File),
        ]);
        assert_eq!(stray, vec!["x/y".to_string()]);
        let a = ns.child(ROOT_INO, "a").unwrap();
        let c = ns.child(a, "c").unwrap();
        let d = ns.child(c, "d").unwrap();
        assert_eq!(ns.key(d).unwrap(), "a/c/d");
        ns.move_node(c, ROOT_INO, "moved");
        assert_eq!(ns.key(d).unwrap(), "moved/d");
        assert!(ns.is_within(d, c));
        assert!(!ns.is_within(a, c));
        assert_eq!(ns.subtree(c), vec![c, d]);
    }
}
