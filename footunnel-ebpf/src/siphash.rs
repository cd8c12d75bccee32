//! SipHash-2-4 (Aumasson & Bernstein), the heartbeat tag. Small enough for
//! the eBPF program: control messages hash a fixed 32 bytes, so the loop
//! unrolls to straight-line code.

/// A 128-bit SipHash key, as the two little-endian words the reference
/// implementation reads from its 16 key bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SipKey {
    pub k0: u64,
    pub k1: u64,
}

impl SipKey {
    pub const fn from_bytes(key: &[u8; 16]) -> Self {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            lo[i] = key[i];
            hi[i] = key[i + 8];
            i += 1;
        }
        SipKey { k0: u64::from_le_bytes(lo), k1: u64::from_le_bytes(hi) }
    }
}

/// SipHash-2-4's state: a key's, before any input, or one partway through a
/// message (a tunnel's heartbeats all begin with the same 16 bytes, so the
/// broker hashes those once per tunnel: see `wire::HeartbeatKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SipState {
    pub v: [u64; 4],
}

impl SipState {
    #[inline(always)]
    pub const fn new(key: SipKey) -> Self {
        SipState {
            v: [
                key.k0 ^ 0x736f_6d65_7073_6575,
                key.k1 ^ 0x646f_7261_6e64_6f6d,
                key.k0 ^ 0x6c79_6765_6e65_7261,
                key.k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    /// Takes in the next 8 bytes of the message, as a little-endian word.
    #[inline(always)]
    pub fn compress(&mut self, m: u64) {
        let v = &mut self.v;
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    }

    /// The hash of a `len`-byte message whose last `len % 8` bytes (none
    /// when `len` is a multiple of 8) are `tail`'s low bytes, little-endian.
    #[inline(always)]
    pub fn finish(mut self, len: usize, tail: u64) -> u64 {
        self.compress(tail | (len as u64) << 56);
        let v = &mut self.v;
        v[2] ^= 0xff;
        round(v);
        round(v);
        round(v);
        round(v);
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `data` under `key`.
#[inline(always)]
pub fn siphash24(key: SipKey, data: &[u8]) -> u64 {
    let mut state = SipState::new(key);
    let mut blocks = data.chunks_exact(8);
    for block in &mut blocks {
        let mut word = [0u8; 8];
        word.copy_from_slice(block);
        state.compress(u64::from_le_bytes(word));
    }
    let mut tail = [0u8; 8];
    let rest = blocks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    state.finish(data.len(), u64::from_le_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper_key() -> SipKey {
        SipKey::from_bytes(&core::array::from_fn(|i| i as u8))
    }

    /// The SipHash paper, appendix A: key 00..0f, message 00..0e.
    #[test]
    fn paper_appendix_a_vector() {
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash24(paper_key(), &msg), 0xa129_ca61_49be_45e5);
    }

    /// The reference implementation's first and last 64-bit vectors
    /// (vectors.h: key 00..0f, message 00..len-1), as output bytes.
    #[test]
    fn reference_implementation_vectors() {
        assert_eq!(siphash24(paper_key(), &[]).to_le_bytes(), [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]);
        let msg: Vec<u8> = (0u8..63).collect();
        assert_eq!(siphash24(paper_key(), &msg).to_le_bytes(), [0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95]);
    }

    /// Every length 0..64 and a few keys, against an independent implementation.
    #[test]
    fn agrees_with_the_siphasher_crate() {
        use core::hash::Hasher;
        for seed in [0u8, 7, 255] {
            let key_bytes: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seed));
            let key = SipKey::from_bytes(&key_bytes);
            let data: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(seed | 1)).collect();
            for len in 0..=64 {
                let mut h = siphasher::sip::SipHasher24::new_with_key(&key_bytes);
                h.write(&data[..len]);
                assert_eq!(siphash24(key, &data[..len]), h.finish(), "seed {seed} len {len}");
            }
        }
    }
}
