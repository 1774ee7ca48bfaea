//! What the engine's model and crash tests share: the keys, generated values and their
//! strategy, the reference model, and a look at the pad files of a local store.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

pub const KEYS: &[&str] = &["a", "b", "dir/c", "dir/sub/d", "with space", "f"];

/// key -> (bytes, mode): what the engine should hold.
pub type Model = HashMap<String, (Vec<u8>, u32)>;

/// A value to store, made concrete once the chunk size is known.
#[derive(Clone, Debug)]
pub struct Value {
    pub len: usize,
    /// 0: all zeros (holes only), 1: random bytes, 2: chunks alternately zero and random.
    pub pattern: u8,
    pub seed: u64,
}

impl Value {
    pub fn bytes(&self, chunk: usize) -> Vec<u8> {
        let mut x = self.seed | 1;
        (0..self.len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let random = (x >> 24) as u8 | 1;
                match self.pattern {
                    0 => 0,
                    1 => random,
                    _ if (self.seed >> ((i / chunk) % 64)) & 1 == 1 => 0,
                    _ => random,
                }
            })
            .collect()
    }
}

/// Values from empty to a little over three chunks, with exact chunk multiples favoured.
pub fn value(chunk: usize) -> impl Strategy<Value = Value> {
    let len = prop_oneof![
        1 => Just(0usize),
        1 => Just(chunk),
        1 => Just(2 * chunk),
        6 => 0..=3 * chunk + 1,
    ];
    (len, 0u8..3, any::<u64>()).prop_map(|(len, pattern, seed)| Value { len, pattern, seed })
}

/// What `fetch_range(offset, len)` should return of `data`.
pub fn slice(data: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(len).min(data.len());
    &data[start..end]
}

/// Every pad file of a local store (the root included; temp files left out).
pub fn pad_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(dir.join("pads")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                found.push(path);
            }
        }
    }
    found
}
