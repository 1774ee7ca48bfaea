//! A printable backup of the master key, and the key's fingerprint.
//!
//! The backup is the key's 32 bytes as four lines of four hex groups, each line with a
//! two-digit check of its own (so a typo is reported on its line), and a checksum of the whole
//! key (so a line typed into the wrong place is caught too). Paper and a pen are enough to
//! restore it; `key import` refuses any text that does not check out.

use sha2::{Digest, Sha256};

use crate::keys::MasterKey;

/// Bytes of the key on one backup line: four groups of two bytes.
const LINE_BYTES: usize = 8;
const KEY_BYTES: usize = 32;
const HEADER: &str = "mutant-mount master key backup";

/// A short, stable name for a master key, taken from its public key: safe to show in logs and
/// to compare between machines, it reveals nothing of the secret.
pub fn fingerprint(key: &MasterKey) -> String {
    let digest = Sha256::new()
        .chain_update(b"mutant-mount/fingerprint/v1")
        .chain_update(key.public_key().to_bytes())
        .finalize();
    let hex = hex::encode(&digest[..6]);
    format!("{}-{}-{}", &hex[0..4], &hex[4..8], &hex[8..12])
}

fn line_check(line_no: usize, bytes: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update([line_no as u8])
        .chain_update(bytes)
        .finalize();
    hex::encode(&digest[..1])
}

fn key_checksum(bytes: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"mutant-mount/backup/v1")
        .chain_update(bytes)
        .finalize();
    hex::encode(&digest[..4])
}

fn key_bytes(key: &MasterKey) -> Vec<u8> {
    hex::decode(key.to_hex()).expect("a secret key's hex is hex")
}

/// The backup text of `key`.
pub fn export(key: &MasterKey) -> String {
    let bytes = key_bytes(key);
    let mut out = format!(
        "{HEADER}\n\
         Anyone with these lines can read your files: keep them offline and private.\n\
         Restore with: mutant-mount key import FILE\n\
         fingerprint: {}\n",
        fingerprint(key)
    );
    for (i, line) in bytes.chunks(LINE_BYTES).enumerate() {
        let groups: Vec<String> = line.chunks(2).map(hex::encode).collect();
        out += &format!(
            "{}: {}  {}\n",
            i + 1,
            groups.join(" "),
            line_check(i + 1, line)
        );
    }
    out += &format!("checksum: {}\n", key_checksum(&bytes));
    out
}

/// Why a backup text was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImportError {
    #[error("line {0} of the key is missing (expected lines 1: to 4:)")]
    MissingLine(usize),
    #[error("line {0} of the key does not read as 8 groups of hex digits and a check: {1:?}")]
    Malformed(usize, String),
    #[error("line {0} of the key has a typo: its check does not match")]
    LineCheck(usize),
    #[error(
        "line {0} of the key has a typo its check missed: the checksum names a key one digit away"
    )]
    MissedTypo(usize),
    #[error("the \"checksum:\" line is missing")]
    MissingChecksum,
    #[error("the checksum does not match the key: are the lines in order?")]
    Checksum,
    #[error("the text holds a checksum-valid key that is not a BLS secret key")]
    NotAKey,
}

/// Reads a backup made by [`export`]. Blank lines, the header and the fingerprint are ignored;
/// hex digits may be in either case and groups may be spaced as the reader likes.
pub fn import(text: &str) -> Result<MasterKey, ImportError> {
    let lines = KEY_BYTES / LINE_BYTES;
    let mut rows: Vec<Option<Vec<u8>>> = vec![None; lines];
    let mut checksum = None;
    for raw in text.lines() {
        let Some((label, rest)) = raw.trim().split_once(':') else {
            continue;
        };
        let label = label.trim();
        if label.eq_ignore_ascii_case("checksum") {
            checksum = Some(rest.trim().to_ascii_lowercase());
            continue;
        }
        let Ok(n) = label.parse::<usize>() else {
            continue;
        };
        if !(1..=lines).contains(&n) {
            return Err(ImportError::Malformed(n, raw.to_string()));
        }
        let digits: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        let malformed = || ImportError::Malformed(n, rest.trim().to_string());
        if digits.len() != LINE_BYTES * 2 + 2 {
            return Err(malformed());
        }
        let bytes = hex::decode(&digits[..LINE_BYTES * 2]).map_err(|_| malformed())?;
        if !digits[LINE_BYTES * 2..].eq_ignore_ascii_case(&line_check(n, &bytes)) {
            return Err(ImportError::LineCheck(n));
        }
        rows[n - 1] = Some(bytes);
    }
    let mut bytes = Vec::with_capacity(KEY_BYTES);
    for (i, row) in rows.into_iter().enumerate() {
        bytes.extend(row.ok_or(ImportError::MissingLine(i + 1))?);
    }
    let checksum = checksum.ok_or(ImportError::MissingChecksum)?;
    if checksum != key_checksum(&bytes) {
        return Err(match line_of_missed_typo(&bytes, &checksum) {
            Some(n) => ImportError::MissedTypo(n),
            None => ImportError::Checksum,
        });
    }
    blsttc::SecretKey::from_hex(&hex::encode(&bytes))
        .map(MasterKey::from_secret)
        .map_err(|_| ImportError::NotAKey)
}

/// The line holding a single mistyped digit that its one-byte check let through (one typo in
/// 256 does), found as the only one-digit change that satisfies both that line's check and the
/// whole-key checksum.
fn line_of_missed_typo(bytes: &[u8], checksum: &str) -> Option<usize> {
    let mut found = None;
    for (i, byte) in bytes.iter().enumerate() {
        let line = i / LINE_BYTES;
        let line_bytes = &bytes[line * LINE_BYTES..(line + 1) * LINE_BYTES];
        let check = line_check(line + 1, line_bytes);
        for flip in (1..16u8).flat_map(|d| [d, d << 4]) {
            let mut fixed = bytes.to_vec();
            fixed[i] = byte ^ flip;
            let fixed_line = &fixed[line * LINE_BYTES..(line + 1) * LINE_BYTES];
            if line_check(line + 1, fixed_line) == check && key_checksum(&fixed) == checksum {
                match found {
                    None => found = Some(line + 1),
                    Some(other) if other != line + 1 => return None,
                    Some(_) => {}
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_then_import_gives_the_same_key() {
        let key = MasterKey::generate();
        let text = export(&key);
        assert_eq!(import(&text).unwrap().to_hex(), key.to_hex());
        // Case and spacing do not matter.
        let loose = text.to_uppercase().replace("  ", "   ");
        assert_eq!(import(&loose).unwrap().to_hex(), key.to_hex());
    }

    /// Every way of mistyping one hex digit of the key, on every line, is refused and names
    /// the line, including the one typo in 256 that the line's own check lets through.
    #[test]
    fn every_single_typo_is_refused_and_located() {
        let key = MasterKey::generate();
        let text = export(&key);
        let mut missed_by_line_check = 0;
        for n in 1..=4 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{n}:")))
                .unwrap();
            let digits: Vec<usize> = line
                .char_indices()
                .skip(2)
                .filter(|(_, c)| c.is_ascii_hexdigit())
                .map(|(i, _)| i)
                .take(LINE_BYTES * 2)
                .collect();
            assert_eq!(digits.len(), LINE_BYTES * 2);
            for pos in digits {
                for new in "0123456789abcdef".chars() {
                    if line.as_bytes()[pos] as char == new {
                        continue;
                    }
                    let mut typo = line.to_string();
                    typo.replace_range(pos..pos + 1, &new.to_string());
                    match import(&text.replace(line, &typo)).err() {
                        Some(ImportError::LineCheck(at)) => assert_eq!(at, n),
                        Some(ImportError::MissedTypo(at)) => {
                            assert_eq!(at, n);
                            missed_by_line_check += 1;
                        }
                        other => panic!("line {n}, digit at {pos} -> {new}: {other:?}"),
                    }
                }
            }
        }
        // 960 typos against a one-byte check: a few slip past it, and are still located.
        assert!(missed_by_line_check < 40, "{missed_by_line_check}");
    }

    #[test]
    fn a_mistyped_checksum_is_refused() {
        let key = MasterKey::generate();
        let text = export(&key);
        let sum = text.lines().find(|l| l.starts_with("checksum:")).unwrap();
        let last = sum.chars().last().unwrap();
        let typo = format!(
            "{}{}",
            &sum[..sum.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_eq!(
            import(&text.replace(sum, &typo)).err(),
            Some(ImportError::Checksum)
        );
    }

    #[test]
    fn swapped_or_missing_lines_are_refused() {
        let key = MasterKey::generate();
        let text = export(&key);
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("2:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(import(&without).err(), Some(ImportError::MissingLine(2)));
        let no_sum: String = text
            .lines()
            .filter(|l| !l.starts_with("checksum"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(import(&no_sum).err(), Some(ImportError::MissingChecksum));
    }

    #[test]
    fn fingerprint_is_stable_and_distinct() {
        let key = MasterKey::generate();
        assert_eq!(fingerprint(&key), fingerprint(&key.clone()));
        assert_ne!(fingerprint(&key), fingerprint(&MasterKey::generate()));
        assert_eq!(fingerprint(&key).len(), 14);
    }
}
