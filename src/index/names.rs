//! Names as the kernel gives them (any bytes but `/` and NUL, as on ext4) and as the index
//! keeps them (UTF-8 strings). A name that is valid UTF-8 is kept as it is. In one that is not,
//! each byte that is not part of a valid character is kept as NUL and two hex digits: no name
//! from the kernel holds a NUL, so the mapping is one-to-one, and every name stored before it
//! existed reads as it did. The keys the index keeps for itself start with NUL and a letter
//! that is not a hex digit ([`is_internal_key`](super::is_internal_key)), so a top-level name
//! whose first byte is escaped does not clash with them.

use std::borrow::Cow;

const ESCAPE: char = '\0';

/// The index's form of a name the kernel gave.
pub fn to_key_name(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(name) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push(ESCAPE);
            out.push_str(&format!("{byte:02x}"));
        }
    }
    Cow::Owned(out)
}

/// The bytes the kernel sees for a name kept in the index, or `None` if `name` is not the
/// index's form of any name (a NUL not followed by two hex digits).
pub fn from_key_name(name: &str) -> Option<Cow<'_, [u8]>> {
    if !name.contains(ESCAPE) {
        return Some(Cow::Borrowed(name.as_bytes()));
    }
    let mut out = Vec::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find(ESCAPE) {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let hex = rest.get(at + 1..at + 3)?;
        if !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        out.push(u8::from_str_radix(hex, 16).ok()?);
        rest = &rest[at + 3..];
    }
    out.extend_from_slice(rest.as_bytes());
    Some(Cow::Owned(out))
}

/// The kernel's bytes of `name` if it is the index's form of a name, exactly as
/// [`to_key_name`] makes it (an escaped byte that a valid character could have held is not).
pub fn canonical_bytes(name: &str) -> Option<Cow<'_, [u8]>> {
    let bytes = from_key_name(name)?;
    (to_key_name(&bytes) == name).then_some(bytes)
}

/// A key or name for a message, as Rust writes a string literal: control characters escaped,
/// and bytes that are not UTF-8 as `\xNN`.
pub fn display(name: &str) -> String {
    let Some(bytes) = from_key_name(name) else {
        return name.escape_debug().to_string();
    };
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.extend(chunk.valid().chars().flat_map(char::escape_debug));
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Whether `part` (one component of a key) is the index's form of a name a file may have.
pub fn is_valid_name(part: &str) -> bool {
    canonical_bytes(part).is_some_and(|bytes| {
        !bytes.is_empty()
            && part != "."
            && part != ".."
            && !bytes.contains(&b'/')
            && !bytes.contains(&0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_names_are_kept_as_they_are() {
        for name in ["a", "résumé.txt", "日本語", "emoji 😀", "x\u{10FFFF}00"] {
            assert_eq!(to_key_name(name.as_bytes()), name);
            assert_eq!(from_key_name(name).unwrap(), name.as_bytes());
        }
    }

    #[test]
    fn other_bytes_are_escaped_and_come_back() {
        let latin1 = b"caf\xe9.txt";
        assert_eq!(to_key_name(latin1), "caf\u{0}e9.txt");
        assert_eq!(from_key_name("caf\u{0}e9.txt").unwrap(), &latin1[..]);
        assert_eq!(display("caf\u{0}e9.txt\n"), "caf\\xe9.txt\\n");
        // A truncated character: only its bytes are escaped, the valid ones around stay.
        let cut = b"\xe6\x97\xa5\xe6\x9c";
        assert_eq!(to_key_name(cut), "日\u{0}e6\u{0}9c");
    }

    #[test]
    fn what_no_name_maps_to_is_refused() {
        assert_eq!(from_key_name("a\u{0}"), None);
        assert_eq!(from_key_name("a\u{0}zz"), None);
        assert_eq!(from_key_name("a\u{0}E9"), None);
        // "A" escaped: decodes, but is not the form a name is kept in.
        assert!(from_key_name("\u{0}41").is_some());
        assert_eq!(canonical_bytes("\u{0}41"), None);
        assert_eq!(canonical_bytes("\u{0}ff").unwrap(), &b"\xff"[..]);
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip_and_distinct_names_stay_distinct(
            a in proptest::collection::vec(1u8.., 0..40),
            b in proptest::collection::vec(1u8.., 0..40),
        ) {
            let key = to_key_name(&a);
            prop_assert_eq!(canonical_bytes(&key).unwrap(), &a[..]);
            prop_assert_eq!(a == b, key == to_key_name(&b));
        }
    }
}
