//! A hash map keyed by file descriptor, hashed with one multiplication.
//!
//! The loop looks its fd watches up once per readiness event. The standard library's
//! SipHash, built to resist chosen keys, costs some seventy instructions for one `i32`;
//! fds are small numbers the kernel hands out, not keys an attacker picks, so rustc's
//! Fx multiplication (odd constant: a bijection on the low bits that choose the bucket,
//! and spreads into the high bits hashbrown keeps as tags) does.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;

/// A map from fds to `V`.
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

/// rustc's FxHasher constant.
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The hasher of [`FdMap`]: keys are `i32`s, hashed by [`Hasher::write_i32`].
#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    #[inline]
    fn write_i32(&mut self, n: i32) {
        self.0 = (self.0.rotate_left(5) ^ n as u32 as u64).wrapping_mul(SEED);
    }

    /// Other keys than `i32` do not occur; hashed bytewise all the same.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(SEED);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn map_behaves_as_a_map() {
        let mut m: FdMap<i32> = FdMap::default();
        for fd in 0..10_000 {
            m.insert(fd, fd * 2);
        }
        for fd in 0..10_000 {
            assert_eq!(m.get(&fd), Some(&(fd * 2)));
        }
        assert_eq!(m.get(&-1), None);
        assert_eq!(m.remove(&5), Some(10));
        assert_eq!(m.len(), 9_999);
    }

    #[test]
    fn consecutive_fds_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<FdHasher>::default();
        let hashes: Vec<u64> = (0..128).map(|fd: i32| build.hash_one(fd)).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 127).collect();
        let top: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        // Low bits: a bijection for an odd multiplier. Top seven bits (tags only filter
        // the keys compared): spread over many values, not a few.
        assert_eq!(low.len(), 128);
        assert!(top.len() > 48, "{} distinct tags", top.len());
    }
}
