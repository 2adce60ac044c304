//! The one stable hash behind every identifier disksynth derives (GPT disk and partition GUIDs,
//! MBR signatures, the ISO's hybrid seed, `build`'s seeds): FNV-1a with a 128-bit state
//! (<http://www.isthe.com/chongo/tech/comp/fnv/>, the 128-bit offset basis and prime).
//!
//! Identifiers must be the same on every machine and every Rust release, which `std`'s hasher
//! does not promise, and distinct inputs must give distinct identifiers with all 128 bits in
//! play. (Four CRC-32s with different initial values, used before, are one CRC-32 in disguise:
//! CRC is affine in its initial value, so the other three follow from the first and the length,
//! and two seeds collided with 32-bit odds.) Not cryptographic: a seed is not a secret.

/// FNV-1a, 128 bits.
#[derive(Debug, Clone)]
pub struct StableHasher(u128);

const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(OFFSET_BASIS)
    }
}

impl StableHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// The 16 bytes (big-endian state). FNV's last bytes mix weakly into the high bits, so
    /// the state is run through one more round of eight zero bytes first.
    pub fn finish(mut self) -> [u8; 16] {
        self.update(&[0; 8]);
        self.0.to_be_bytes()
    }
}

/// The hash of several byte strings, each length-prefixed so that `["ab", "c"]` and
/// `["a", "bc"]` differ.
pub fn hash128(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = StableHasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_the_reference_vectors() {
        // FNV-1a 128 of "" is the offset basis; of "a" (from the FNV reference test suite).
        let mut h = StableHasher::new();
        h.update(b"");
        assert_eq!(h.0, OFFSET_BASIS);
        h.update(b"a");
        assert_eq!(h.0, 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn parts_are_separated_and_every_byte_counts() {
        assert_ne!(hash128(&[b"ab", b"c"]), hash128(&[b"a", b"bc"]));
        assert_ne!(hash128(&[b"seed-1"]), hash128(&[b"seed-2"]));
        // A one-bit change in the seed flips about half of the 128 bits, in every quarter.
        let a = u128::from_be_bytes(hash128(&[b"ci-build-42"]));
        let b = u128::from_be_bytes(hash128(&[b"ci-build-43"]));
        let diff = a ^ b;
        assert!((40..=88).contains(&diff.count_ones()), "{diff:032x}");
        for q in 0..4 {
            assert_ne!((diff >> (32 * q)) as u32, 0, "quarter {q} unchanged");
        }
    }
}
