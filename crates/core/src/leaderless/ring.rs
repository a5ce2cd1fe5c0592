//! Consistent hashing with virtual nodes: where each key lives under leaderless
//! replication. Every node owns many points (tokens) on a 64-bit ring; a key's token is a
//! hash of its table and primary key, and its replicas are the first N distinct nodes
//! met clockwise from it, spread over as many regions as there are (a region lost takes
//! one replica, not all). The nodes after them, in the same walk, are where a write goes
//! when a replica is down (sloppy quorum, with a hint for the replica).
//!
//! Adding a node changes only the keys it becomes a replica of, and removing one only the
//! keys it was a replica of: the rest stay where they are.

use crate::types::Fnv1a;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingNode {
    pub id: String,
    pub region: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<RingNode>,
    /// `(token, index into nodes)`, sorted by token.
    tokens: Vec<(u64, usize)>,
}

/// Spreads FNV's output over the whole ring (splitmix64's finalizer): FNV alone leaves
/// similar inputs (`n1#0`, `n1#1`) near one another.
fn mix(mut hash: u64) -> u64 {
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

impl Ring {
    /// A ring of `nodes`, each with `vnodes` tokens.
    pub fn new(nodes: Vec<RingNode>, vnodes: usize) -> Ring {
        let mut tokens = Vec::with_capacity(nodes.len() * vnodes);
        for (index, node) in nodes.iter().enumerate() {
            for point in 0..vnodes.max(1) {
                let mut hash = Fnv1a::default();
                hash.write(node.id.as_bytes());
                hash.write(&(point as u64).to_le_bytes());
                tokens.push((mix(hash.finish()), index));
            }
        }
        tokens.sort_unstable();
        Ring { nodes, tokens }
    }

    /// Every token on the ring, in order: the ends of the arcs whose keys share replicas.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.tokens.iter().map(|(token, _)| *token)
    }

    pub fn nodes(&self) -> &[RingNode] {
        &self.nodes
    }

    /// A row's token: its table and its primary key's encoded bytes.
    pub fn token_of(table: &str, key: &[u8]) -> u64 {
        let mut hash = Fnv1a::default();
        hash.write(table.as_bytes());
        hash.write(&[0]);
        hash.write(key);
        mix(hash.finish())
    }

    /// Every node, in the order a key at `token` uses them: its `replicas` replicas
    /// first (the first distinct nodes clockwise, taking a node of a region not yet
    /// chosen before a second node of one that is), then every other node clockwise, the
    /// fallbacks of a sloppy quorum.
    pub fn preference(&self, token: u64, replicas: usize) -> Vec<&str> {
        let start = self.tokens.partition_point(|(point, _)| *point < token);
        let mut walk: Vec<usize> = Vec::with_capacity(self.nodes.len());
        for (_, index) in self.tokens[start..].iter().chain(&self.tokens[..start]) {
            if !walk.contains(index) {
                walk.push(*index);
                if walk.len() == self.nodes.len() {
                    break;
                }
            }
        }
        let wanted = replicas.min(walk.len());
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
        for index in &walk {
            if chosen.len() < wanted && !chosen.iter().any(|other| self.nodes[*other].region == self.nodes[*index].region) {
                chosen.push(*index);
            }
        }
        for index in &walk {
            if chosen.len() < wanted && !chosen.contains(index) {
                chosen.push(*index);
            }
        }
        let rest = walk.iter().filter(|index| !chosen.contains(index));
        chosen.iter().chain(rest).map(|index| self.nodes[*index].id.as_str()).collect()
    }

    /// The `replicas` nodes that hold a key at `token`.
    pub fn replicas(&self, token: u64, replicas: usize) -> Vec<&str> {
        let mut nodes = self.preference(token, replicas);
        nodes.truncate(replicas);
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str) -> RingNode {
        RingNode { id: id.to_string(), region: region.to_string() }
    }

    fn five() -> Vec<RingNode> {
        vec![node("n1", "us-east"), node("n2", "us-east"), node("n3", "eu-west"), node("n4", "eu-west"), node("n5", "antarctica")]
    }

    #[test]
    fn a_keys_replicas_are_distinct_nodes_in_as_many_regions_as_there_are() {
        let ring = Ring::new(five(), 64);
        for key in 0..2_000u32 {
            let token = Ring::token_of("t", &key.to_le_bytes());
            let preference = ring.preference(token, 3);
            assert_eq!(preference.len(), 5, "every node, each once");
            let mut distinct = preference.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 5);
            let regions: Vec<&str> =
                preference[..3].iter().map(|id| ring.nodes().iter().find(|node| node.id == *id).map_or("", |node| node.region.as_str())).collect();
            let mut spread = regions.clone();
            spread.sort_unstable();
            spread.dedup();
            assert_eq!(spread.len(), 3, "key {key}: replicas {preference:?} in {regions:?}");
        }
        assert_eq!(ring.replicas(Ring::token_of("t", b"x"), 9).len(), 5, "no more replicas than nodes");
    }

    #[test]
    fn keys_spread_evenly_and_a_new_node_takes_only_keys_it_becomes_a_replica_of() {
        let ring = Ring::new(five(), 128);
        let mut grown = five();
        grown.push(node("n6", "antarctica"));
        let bigger = Ring::new(grown, 128);
        let mut per_node = std::collections::BTreeMap::new();
        let mut moved = 0;
        let keys = 10_000u32;
        for key in 0..keys {
            let token = Ring::token_of("orders", &key.to_le_bytes());
            let before = ring.replicas(token, 3);
            let after = bigger.replicas(token, 3);
            for id in &before {
                *per_node.entry(id.to_string()).or_insert(0u32) += 1;
            }
            if before != after {
                moved += 1;
                assert!(after.contains(&"n6"), "key {key} moved from {before:?} to {after:?} without n6");
            }
        }
        // 30,000 replicas over five nodes: 6,000 each if even; the region rule gives the
        // lone antarctica node a replica of every key.
        assert_eq!(per_node["n5"], keys, "{per_node:?}");
        for id in ["n1", "n2", "n3", "n4"] {
            assert!((4_000..6_000).contains(&per_node[id]), "{id}: {per_node:?}");
        }
        assert!(moved > 0 && moved < keys, "{moved} keys moved");
    }
}
