//! The names in one directory, each with a listing cookie: the directory offset a reader resumes
//! after. Cookies are handed out in increasing order as names are added and are never reused
//! within a mount, so a listing that resumes from a cookie returns every name neither added nor
//! removed meanwhile exactly once, however many names were removed before the cookie (positions
//! would shift, and a one-pass `rm -r` would skip half the directory).

use std::collections::BTreeMap;

/// Directory offsets 1 and 2 are taken by `.` and `..`; names get the cookies after them.
pub const FIRST_COOKIE: u64 = 3;

#[derive(Debug)]
pub struct Children {
    /// Name -> (inode, cookie, whether it is a directory).
    by_name: BTreeMap<String, (u64, u64, bool)>,
    /// Cookie -> name, in listing order.
    by_cookie: BTreeMap<u64, String>,
    next_cookie: u64,
    /// How many of the names are directories: a directory's link count, which `stat` asks
    /// for after every change to it, must not cost a walk over a huge directory.
    dirs: usize,
}

impl Default for Children {
    fn default() -> Self {
        Children {
            by_name: BTreeMap::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
            dirs: 0,
        }
    }
}

impl Children {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|&(ino, ..)| ino)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// How many of the names are directories.
    pub fn dirs(&self) -> usize {
        self.dirs
    }

    /// Adds a name (replacing any entry of that name) with a new cookie.
    pub fn insert(&mut self, name: String, ino: u64, is_dir: bool) {
        self.remove(&name);
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.by_cookie.insert(cookie, name.clone());
        self.by_name.insert(name, (ino, cookie, is_dir));
        self.dirs += usize::from(is_dir);
    }

    pub fn remove(&mut self, name: &str) -> Option<u64> {
        let (ino, cookie, is_dir) = self.by_name.remove(name)?;
        self.by_cookie.remove(&cookie);
        self.dirs -= usize::from(is_dir);
        Some(ino)
    }

    /// The names whose cookies come after `cookie`, in cookie order: (cookie, name, inode).
    pub fn after(&self, cookie: u64) -> impl Iterator<Item = (u64, &str, u64)> + '_ {
        self.by_cookie
            .range(cookie.saturating_add(1)..)
            .map(|(&c, name)| (c, name.as_str(), self.by_name[name].0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A reader listing in batches while names come and go sees every name that was there
        /// throughout exactly once, and never a name that was never there.
        #[test]
        fn a_resumed_listing_sees_every_stable_name_once(
            initial in 0usize..60,
            batch in 1usize..8,
            changes in proptest::collection::vec((any::<bool>(), 0usize..80), 0..120),
        ) {
            let mut dir = Children::default();
            for i in 0..initial {
                dir.insert(format!("n{i}"), i as u64, i % 3 == 0);
            }
            let mut touched = std::collections::HashSet::new();
            let mut seen: Vec<String> = Vec::new();
            let mut cookie = FIRST_COOKIE - 1;
            let mut changes = changes.into_iter();
            loop {
                let got: Vec<(u64, String)> = dir
                    .after(cookie)
                    .take(batch)
                    .map(|(c, n, _)| (c, n.to_string()))
                    .collect();
                if got.is_empty() {
                    break;
                }
                for (c, name) in got {
                    prop_assert!(c > cookie);
                    cookie = c;
                    seen.push(name);
                }
                // Between batches, some names are removed and some added.
                for (add, n) in changes.by_ref().take(3) {
                    let name = format!("n{n}");
                    touched.insert(name.clone());
                    if add {
                        dir.insert(name, n as u64, n % 3 == 0);
                    } else {
                        dir.remove(&name);
                    }
                }
            }
            let dirs = dir.after(0).filter(|(_, name, _)| name[1..].parse::<usize>().unwrap() % 3 == 0);
            prop_assert_eq!(dir.dirs(), dirs.count());
            for i in 0..initial {
                let name = format!("n{i}");
                if !touched.contains(&name) {
                    prop_assert_eq!(seen.iter().filter(|s| **s == name).count(), 1, "{}", name);
                }
            }
            for name in &seen {
                let initial_name = name[1..].parse::<usize>().is_ok_and(|i| i < initial);
                prop_assert!(initial_name || touched.contains(name), "{} was never there", name);
            }
        }
    }
}
