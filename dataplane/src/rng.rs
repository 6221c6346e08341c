//! A small seedable PRNG (SplitMix64). Load balancers take randomness from here so
//! tests can fix the seed; production seeds it from the OS.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from the process's hasher keys, which the standard library draws from
    /// the OS; good enough for load balancing, not for cryptography.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self(RandomState::new().hash_one(std::time::SystemTime::now()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must be non-zero.
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift keeps the bias below 2^-64 per draw for the n we use.
        let n = n as u128;
        #[allow(clippy::cast_possible_truncation)] // the product's high half is < n
        let r = ((u128::from(self.next_u64()) * n) >> 64) as usize;
        r
    }
}
