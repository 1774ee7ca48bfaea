//! An optional passphrase on the key file: the master key sealed with a key stretched from the
//! passphrase (argon2id) by an AEAD (XChaCha20-Poly1305). A stolen key file is then worth only
//! a passphrase guess at argon2id's cost each.
//!
//! The sealed file is one text line:
//! `mutant-sealed-key v1 argon2id m=KIB t=PASSES p=LANES SALT NONCE CIPHERTEXT` (hex). Everything
//! before SALT is the AEAD's associated data, so its parameters cannot be weakened unnoticed.
//!
//! For unattended mounts the passphrase comes from a file or a command (a secret manager, the
//! system keyring); on a terminal it is asked for.

use std::io::IsTerminal;
use std::path::PathBuf;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

const MAGIC: &str = "mutant-sealed-key v1 argon2id";
/// Argon2id's cost for a new seal: 64 MiB and three passes, the RFC 9106 second recommended
/// option, about a second's work per guess on a small machine.
const MEMORY_KIB: u32 = 64 * 1024;
const PASSES: u32 = 3;
const LANES: u32 = 1;
/// Largest memory cost a sealed file may ask for, so a crafted file cannot exhaust memory.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("the passphrase is wrong (or the sealed key file was changed)")]
    WrongPassphrase,
    #[error("the sealed key file is malformed: {0}")]
    Malformed(String),
}

/// Whether a key file's text is a sealed key.
pub fn is_sealed(text: &str) -> bool {
    text.trim_start().starts_with(MAGIC)
}

fn stretch(passphrase: &[u8], salt: &[u8], params: Params) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, key.as_mut())
        .expect("valid argon2 parameters and output length");
    key
}

/// Seals `secret` (the key file's plain text) with `passphrase`.
pub fn seal(secret: &[u8], passphrase: &[u8]) -> String {
    let salt: [u8; 16] = rand::random();
    let nonce: [u8; 24] = rand::random();
    let header = format!("{MAGIC} m={MEMORY_KIB} t={PASSES} p={LANES}");
    let params = Params::new(MEMORY_KIB, PASSES, LANES, Some(32)).expect("valid parameters");
    let key = stretch(passphrase, &salt, params);
    let cipher = XChaCha20Poly1305::new(key.as_ref().into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: header.as_bytes(),
            },
        )
        .expect("encryption of a short message");
    format!(
        "{header} {} {} {}\n",
        hex::encode(salt),
        hex::encode(nonce),
        hex::encode(sealed)
    )
}

/// Opens a sealed key file's text with `passphrase`, giving the key file's plain text.
pub fn unseal(text: &str, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let bad = |what: &str| SealError::Malformed(what.to_string());
    let rest = text
        .trim()
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("no header"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [m, t, p, salt, nonce, sealed] = fields[..] else {
        return Err(bad("expected 6 fields after the header"));
    };
    let number = |field: &str, name: &str| -> Result<u32, SealError> {
        field
            .strip_prefix(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(&format!("bad {name}")))
    };
    let (m, t, p) = (number(m, "m=")?, number(t, "t=")?, number(p, "p=")?);
    if m > MAX_MEMORY_KIB {
        return Err(bad("memory cost too large"));
    }
    let params = Params::new(m, t, p, Some(32)).map_err(|e| bad(&e.to_string()))?;
    let salt = hex::decode(salt).map_err(|_| bad("salt is not hex"))?;
    let nonce = hex::decode(nonce).map_err(|_| bad("nonce is not hex"))?;
    let sealed = hex::decode(sealed).map_err(|_| bad("ciphertext is not hex"))?;
    if nonce.len() != 24 || salt.len() < 8 {
        return Err(bad("salt or nonce of the wrong length"));
    }
    let header = format!("{MAGIC} m={m} t={t} p={p}");
    let key = stretch(passphrase, &salt, params);
    XChaCha20Poly1305::new(key.as_ref().into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: header.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::WrongPassphrase)
}

/// A key file's plain text: `text` itself, or, if it is sealed, opened with the passphrase from
/// `passphrase`.
pub fn open_key_file(
    text: String,
    path: &std::path::Path,
    passphrase: &PassphraseSource,
) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(text);
    if !is_sealed(&text) {
        return Ok(text);
    }
    let pass = passphrase.read(&format!("the key file {}", path.display()))?;
    let plain = unseal(&text, pass.as_bytes()).map_err(|e| e.to_string())?;
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| "the sealed key is not text".to_string())
}

/// Where a passphrase comes from.
#[derive(Clone, Debug, Default)]
pub enum PassphraseSource {
    /// Asked for on the terminal (refused without one).
    #[default]
    Prompt,
    /// The first line of a file (keep it 0600).
    File(PathBuf),
    /// The first line a shell command prints, e.g. `secret-tool lookup mutant key`.
    Command(String),
    /// The first line of standard input (how a mount hands a passphrase to its background
    /// process).
    Stdin,
}

impl PassphraseSource {
    /// The passphrase, without its line end. `what` says what it is for, in the prompt.
    pub fn read(&self, what: &str) -> Result<Zeroizing<String>, String> {
        let text = match self {
            PassphraseSource::Prompt => {
                if !std::io::stdin().is_terminal() {
                    return Err(format!(
                        "{what} needs a passphrase: give --passphrase-file or \
                         --passphrase-command (no terminal to ask on)"
                    ));
                }
                Zeroizing::new(
                    rpassword::prompt_password(format!("Passphrase for {what}: "))
                        .map_err(|e| format!("cannot read the passphrase: {e}"))?,
                )
            }
            PassphraseSource::File(path) => Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read passphrase file {}: {e}", path.display()))?,
            ),
            PassphraseSource::Command(cmd) => {
                let out = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| format!("cannot run the passphrase command: {e}"))?;
                if !out.status.success() {
                    return Err(format!("the passphrase command failed ({})", out.status));
                }
                Zeroizing::new(
                    String::from_utf8(out.stdout)
                        .map_err(|_| "the passphrase command printed non-UTF-8".to_string())?,
                )
            }
            PassphraseSource::Stdin => {
                let mut line = Zeroizing::new(String::new());
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| format!("cannot read the passphrase: {e}"))?;
                line
            }
        };
        let first = text.lines().next().unwrap_or("");
        if first.is_empty() {
            return Err("the passphrase is empty".into());
        }
        Ok(Zeroizing::new(first.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_with_the_passphrase_only() {
        let secret = b"0123456789abcdef";
        let sealed = seal(secret, b"correct horse");
        assert!(is_sealed(&sealed));
        assert!(!String::from_utf8_lossy(sealed.as_bytes()).contains("0123456789abcdef"));
        assert_eq!(&unseal(&sealed, b"correct horse").unwrap()[..], secret);
        assert_eq!(
            unseal(&sealed, b"wrong horse").err(),
            Some(SealError::WrongPassphrase)
        );
    }

    #[test]
    fn weakened_parameters_are_detected() {
        let sealed = seal(b"secret", b"pw");
        let weakened = sealed.replace(&format!("t={PASSES}"), "t=1");
        assert_eq!(
            unseal(&weakened, b"pw").err(),
            Some(SealError::WrongPassphrase)
        );
        let huge = sealed.replace(&format!("m={MEMORY_KIB}"), "m=999999999");
        assert!(matches!(unseal(&huge, b"pw"), Err(SealError::Malformed(_))));
    }
}
