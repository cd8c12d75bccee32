//! Tunnel secrets, and the key and id derived from them (docs/protocol.md).

use std::io::Read;

use anyhow::{Context, Result};
use footunnel_ebpf::siphash::SipKey;
use sha2::{Digest, Sha256};

/// Shorter secrets get a warning: a captured heartbeat allows offline guessing.
pub const RECOMMENDED_MIN_LEN: usize = 16;

/// What a secret stands for on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelIdentity {
    /// `SHA-256("footunnel-v1 id" || 0 || secret)[0..8]`, big-endian.
    pub id: u64,
    /// `SHA-256("footunnel-v1 key" || 0 || secret)[0..16]`.
    pub key: [u8; 16],
}

impl TunnelIdentity {
    pub fn derive(secret: &str) -> Self {
        let digest = |label: &[u8]| Sha256::new().chain_update(label).chain_update([0]).chain_update(secret).finalize();
        let id = digest(b"footunnel-v1 id");
        let key = digest(b"footunnel-v1 key");
        TunnelIdentity {
            id: u64::from_be_bytes(id[..8].try_into().expect("8 bytes")),
            key: key[..16].try_into().expect("16 bytes"),
        }
    }

    pub fn sip_key(&self) -> SipKey {
        SipKey::from_bytes(&self.key)
    }
}

/// The id the data plane records a tunnel under: from its name, so that it
/// stays the same when the tunnel's secret is rotated.
pub fn record_id(tunnel_name: &str) -> u64 {
    let digest =
        Sha256::new().chain_update(b"footunnel-v1 record").chain_update([0]).chain_update(tunnel_name).finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A warning for a secret too short to resist offline guessing, if it is.
pub fn weakness(secret: &str) -> Option<String> {
    (secret.chars().count() < RECOMMENDED_MIN_LEN).then(|| {
        format!(
            "the secret has fewer than {RECOMMENDED_MIN_LEN} characters: a captured heartbeat lets an attacker \
             guess it offline; `footunnel keygen` makes a strong one"
        )
    })
}

/// Bytes of randomness in a generated secret (≥ 128 bits, docs/protocol.md).
pub const GENERATED_SECRET_BYTES: usize = 24;

/// A fresh random secret: URL-safe base64 of 192 random bits, 32 characters.
pub fn generate() -> Result<String> {
    let mut raw = [0u8; GENERATED_SECRET_BYTES];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw)).context("cannot read /dev/urandom")?;
    Ok(base64url(&raw))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed with Python's hashlib from the formulas in
    /// docs/protocol.md, not with this code.
    #[test]
    fn key_and_id_derivation_match_independent_values() {
        let t = TunnelIdentity::derive("SECRET");
        assert_eq!(t.key, hex16("92a3ba0e41a4563fc9e6a12e770c0a7d"));
        assert_eq!(t.id, 0x34298331bbfa8ae5);
        let t = TunnelIdentity::derive("correct horse battery staple");
        assert_eq!(t.key, hex16("18a02a67e791a3b9e5a411606c729031"));
        assert_eq!(t.id, 0xccda048e620b500e);
    }

    fn hex16(s: &str) -> [u8; 16] {
        core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
    }

    #[test]
    fn short_secrets_are_flagged() {
        assert!(weakness("SECRET").is_some());
        assert!(weakness(&generate().unwrap()).is_none());
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        // RFC 4648 §10, unpadded, with the URL-safe alphabet.
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
