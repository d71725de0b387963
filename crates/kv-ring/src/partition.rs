//! Key -> partition: the one hash every node and client must agree on.

use xxhash_rust::xxh3::xxh3_64;

use crate::id::PartitionId;

/// The partition that owns `key`: `xxh3_64(key, seed 0) mod partitions`.
///
/// This function is part of the on-disk and on-wire contract: every node and
/// every client must compute the same value, forever, for a cluster's data to
/// stay findable. Changing the hash means migrating every key.
///
/// # Panics
///
/// If `partitions` is 0. A [`crate::Placement`] never has 0 partitions, so
/// [`crate::Placement::partition_of`] is the non-panicking way to call this.
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    assert!(partitions > 0, "partition_of called with 0 partitions");
    // The remainder is < partitions <= u32::MAX, so the cast is lossless.
    PartitionId((xxh3_64(key) % u64::from(partitions)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: computed once and pinned. If one of these fails, the key
    // -> partition mapping changed, and existing clusters would lose keys.
    #[test]
    fn key_hash_is_pinned_to_xxh3_64_seed_0() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(xxh3_64(b"a"), 0xe6c6_32b6_1e96_4e1f);
        assert_eq!(xxh3_64(b"hello"), 0x9555_e855_5c62_dcfd);
    }

    #[test]
    fn partition_of_golden_vectors() {
        assert_eq!(partition_of(b"", 64), PartitionId(2));
        assert_eq!(partition_of(b"a", 64), PartitionId(31));
        assert_eq!(partition_of(b"a", 16), PartitionId(15));
        assert_eq!(partition_of(b"a", 7), PartitionId(1));
        assert_eq!(partition_of(b"hello", 64), PartitionId(61));
        assert_eq!(partition_of(b"user:1001", 64), PartitionId(16));
        assert_eq!(partition_of(b"user:1001", 16), PartitionId(0));
        assert_eq!(partition_of(b"\x00\xff binary", 64), PartitionId(59));
        assert_eq!(partition_of(b"\x00\xff binary", 7), PartitionId(6));
    }

    #[test]
    fn partition_of_one_partition_is_always_zero() {
        assert_eq!(partition_of(b"anything", 1), PartitionId(0));
    }

    #[test]
    #[should_panic(expected = "0 partitions")]
    fn partition_of_zero_partitions_panics() {
        partition_of(b"k", 0);
    }
}
