//! Tunnel secrets.

use std::io::Read;

use anyhow::{Context, Result};

/// Bytes of randomness in a generated secret (≥ 128 bits, DESIGN.md §2).
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
