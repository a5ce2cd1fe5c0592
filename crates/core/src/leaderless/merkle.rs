//! Merkle trees over the ring, for anti-entropy: two replicas of a range each summarise
//! their keys (a digest of each key's versions, at the key's token) in a tree of fixed
//! shape, compare, and transfer only the keys of the leaves that differ, instead of the
//! whole range.
//!
//! A leaf covers an equal slice of the 64-bit ring (by the token's top `depth` bits).
//! Its hash is a sum of its keys' mixed digests, so it does not depend on the order keys
//! are added in and can be updated one key at a time; an inner node hashes its two
//! children.

/// Spreads a key's token and digest over 64 bits (splitmix64's finalizer), so sums of
/// unrelated keys do not cancel.
fn mix(mut hash: u64) -> u64 {
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MerkleTree {
    depth: u32,
    /// Level by level from the root: `levels[0]` is the root alone, `levels[depth]` the
    /// `2^depth` leaves.
    levels: Vec<Vec<u64>>,
}

impl MerkleTree {
    /// The tree of the keys `(token, digest)` (any order); `depth` from 0 (one leaf) to 20.
    pub fn build(depth: u32, keys: impl IntoIterator<Item = (u64, u64)>) -> MerkleTree {
        let depth = depth.min(20);
        let mut leaves = vec![0u64; 1 << depth];
        for (token, digest) in keys {
            let leaf = Self::leaf_of(depth, token);
            leaves[leaf] = leaves[leaf].wrapping_add(mix(token ^ mix(digest)));
        }
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().expect("checked above");
            let above: Vec<u64> = below.chunks(2).map(|pair| mix(pair[0] ^ mix(pair[1].wrapping_add(0x9e37_79b9_7f4a_7c15)))).collect();
            levels.push(above);
        }
        levels.reverse();
        MerkleTree { depth, levels }
    }

    fn leaf_of(depth: u32, token: u64) -> usize {
        if depth == 0 {
            0
        } else {
            (token >> (64 - depth)) as usize
        }
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether the tree has the shape `build` gives it: one from a peer may not.
    pub fn is_well_formed(&self) -> bool {
        self.depth <= 20 && self.levels.len() == self.depth as usize + 1 && self.levels.iter().enumerate().all(|(level, hashes)| hashes.len() == 1 << level)
    }

    /// Whether two trees of one depth hold the same keys and digests.
    pub fn same_as(&self, other: &MerkleTree) -> bool {
        self.depth == other.depth && self.root() == other.root()
    }

    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// The tokens leaf `leaf` covers, `start..=end`.
    pub fn leaf_range(&self, leaf: usize) -> (u64, u64) {
        if self.depth == 0 {
            return (0, u64::MAX);
        }
        let width = 1u64 << (64 - self.depth);
        let start = (leaf as u64) * width;
        (start, start + (width - 1))
    }

    /// The leaves whose keys differ between two trees of one depth, found by descending
    /// only into subtrees whose hashes differ; as token ranges `start..=end`.
    pub fn differing_ranges(&self, other: &MerkleTree) -> Vec<(u64, u64)> {
        if self.depth != other.depth {
            return vec![(0, u64::MAX)];
        }
        let mut differing = vec![0usize];
        for level in 1..self.levels.len() {
            differing = differing
                .into_iter()
                .flat_map(|parent| [2 * parent, 2 * parent + 1])
                .filter(|child| self.levels[level][*child] != other.levels[level][*child])
                .collect();
        }
        if self.levels.len() == 1 && self.root() == other.root() {
            differing.clear();
        }
        differing.into_iter().map(|leaf| self.leaf_range(leaf)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(count: u64) -> Vec<(u64, u64)> {
        (0..count).map(|key| (mix(key), key * 7)).collect()
    }

    #[test]
    fn identical_key_sets_agree_whatever_the_order_and_one_changed_key_shows_as_one_range() {
        let all = keys(5_000);
        let mut shuffled = all.clone();
        shuffled.reverse();
        let (a, b) = (MerkleTree::build(10, all.clone()), MerkleTree::build(10, shuffled));
        assert_eq!(a, b);
        assert!(a.differing_ranges(&b).is_empty());

        let mut changed = all.clone();
        changed[1234].1 += 1;
        let c = MerkleTree::build(10, changed);
        let ranges = a.differing_ranges(&c);
        let token = all[1234].0;
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        assert!(ranges[0].0 <= token && token <= ranges[0].1);

        let mut missing = all;
        let gone = missing.remove(42);
        let d = MerkleTree::build(10, missing);
        assert!(a.differing_ranges(&d).iter().any(|(start, end)| *start <= gone.0 && gone.0 <= *end), "a missing key shows too");
    }

    #[test]
    fn leaves_tile_the_ring() {
        let tree = MerkleTree::build(3, []);
        let mut next = 0u64;
        for leaf in 0..8 {
            let (start, end) = tree.leaf_range(leaf);
            assert_eq!(start, next);
            next = end.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last leaf ends at u64::MAX");
        assert_eq!(MerkleTree::build(0, [(5, 5)]).differing_ranges(&MerkleTree::build(0, [])), vec![(0, u64::MAX)]);
    }
}
