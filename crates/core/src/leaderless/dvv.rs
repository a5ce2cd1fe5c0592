//! A dotted version vector set (Preguiça, Baquero et al.; Riak's `dvvset`): one key's
//! versions under leaderless replication, where writes reach replicas in any order, more
//! than once, or not at all until repaired.
//!
//! Each replica that coordinates writes of the key numbers them 1, 2, 3, … for that key.
//! The set keeps, per coordinator, how many of its writes it has seen (`counter`) and the
//! newest of them no later write has seen past (`values`, newest first: the value at
//! position `i` is write `counter - i`). So it says exactly which writes it has seen —
//! all of a coordinator's writes up to `counter` — with no per-write bookkeeping, and a
//! version that another has superseded is dropped wherever the two meet, whatever order
//! they arrive in. (A version vector alone cannot tell a write a replica missed from one
//! it superseded; a set of every dot ever seen grows without bound.)
//!
//! - [`Versions::write`]: a coordinator's new write, replacing what its context covers;
//!   versions outside the context (concurrent writes) stay beside it, as siblings.
//! - [`Versions::merge`]: two replicas' states combined (a write arriving at a replica,
//!   read repair, anti-entropy). Commutative, associative and idempotent.
//! - [`Versions::context`]: what a client (or the coordinator, for a blind write) has
//!   seen, to pass to the next write.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per coordinator, how many of its writes of this key have been seen.
pub type Context = BTreeMap<String, u64>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry<V> {
    counter: u64,
    /// The newest writes of this coordinator still standing, newest first: position `i`
    /// is write `counter - i`; older writes up to `counter - values.len()` were seen and
    /// superseded.
    values: Vec<V>,
}

/// One key's standing versions, per coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions<V> {
    entries: BTreeMap<String, Entry<V>>,
}

impl<V> Default for Versions<V> {
    fn default() -> Versions<V> {
        Versions { entries: BTreeMap::new() }
    }
}

impl<V: Clone> Versions<V> {
    pub fn new() -> Versions<V> {
        Versions::default()
    }

    /// Every write seen, per coordinator.
    pub fn context(&self) -> Context {
        self.entries.iter().map(|(node, entry)| (node.clone(), entry.counter)).collect()
    }

    /// The standing versions (siblings), each with its write `(coordinator, number)`.
    pub fn siblings(&self) -> Vec<((String, u64), &V)> {
        self.entries
            .iter()
            .flat_map(|(node, entry)| {
                entry.values.iter().enumerate().map(move |(place, value)| ((node.clone(), entry.counter.saturating_sub(place as u64)), value))
            })
            .collect()
    }

    /// Whether the versions have the shape this module gives them: no coordinator with
    /// more standing versions than writes. Versions from a peer may not.
    pub fn is_well_formed(&self) -> bool {
        self.entries.values().all(|entry| entry.values.len() as u64 <= entry.counter)
    }

    /// How many of `node`'s writes these versions have seen.
    pub fn seen_of(&self, node: &str) -> u64 {
        self.entries.get(node).map_or(0, |entry| entry.counter)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.values().all(|entry| entry.values.is_empty())
    }

    /// At coordinator `node` (a replica of the key, holding these versions): a new write
    /// of `value` by a client that had seen `context`. The versions `context` covers are
    /// replaced; the others stay, as siblings. Returns the write's number.
    pub fn write(&mut self, node: &str, context: &Context, value: V) -> u64 {
        for (coordinator, seen) in context {
            let entry = self.entries.entry(coordinator.clone()).or_insert(Entry { counter: 0, values: Vec::new() });
            if *seen >= entry.counter {
                // The client saw writes this replica has not got yet: they are superseded
                // too, wherever they come from later.
                entry.counter = *seen;
                entry.values.clear();
            } else {
                // Keep the writes numbered above what the client saw.
                let standing = (entry.counter - seen).min(entry.values.len() as u64) as usize;
                entry.values.truncate(standing);
            }
        }
        let entry = self.entries.entry(node.to_string()).or_insert(Entry { counter: 0, values: Vec::new() });
        entry.counter = entry.counter.saturating_add(1);
        entry.values.insert(0, value);
        entry.counter
    }

    /// Combines another replica's versions of the key into these: a version stands if
    /// either side has it and the other has not seen past it.
    pub fn merge(&mut self, other: &Versions<V>) {
        for (node, theirs) in &other.entries {
            let Some(ours) = self.entries.get_mut(node) else {
                self.entries.insert(node.clone(), theirs.clone());
                continue;
            };
            let counter = ours.counter.max(theirs.counter);
            // Writes above both sides' superseded ranges stand.
            let floor = ours.counter.saturating_sub(ours.values.len() as u64).max(theirs.counter.saturating_sub(theirs.values.len() as u64));
            let longer = if ours.counter >= theirs.counter { &ours.values } else { &theirs.values };
            let values: Vec<V> = longer.iter().take(counter.saturating_sub(floor) as usize).cloned().collect();
            *ours = Entry { counter, values };
        }
    }

    /// Whether these versions have seen every write `other` has (merging it changes nothing).
    pub fn covers(&self, other: &Versions<V>) -> bool
    where
        V: PartialEq,
    {
        let mut merged = self.clone();
        merged.merge(other);
        merged == *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(versions: &Versions<&'static str>) -> Vec<&'static str> {
        let mut shown: Vec<&str> = versions.siblings().into_iter().map(|(_, value)| *value).collect();
        shown.sort_unstable();
        shown
    }

    #[test]
    fn a_write_that_saw_the_versions_replaces_them_and_concurrent_ones_become_siblings() {
        let mut a: Versions<&str> = Versions::new();
        assert_eq!(a.write("a", &Context::new(), "v1"), 1);
        let seen = a.context();
        a.write("a", &seen, "v2");
        assert_eq!(values(&a), ["v2"], "v2 saw v1");
        // b, another replica, got v1 only; a client writes there having seen nothing.
        let mut b: Versions<&str> = Versions::new();
        b.write("a", &Context::new(), "v1");
        b.write("b", &Context::new(), "w1");
        assert_eq!(values(&b), ["v1", "w1"], "a blind write is concurrent with v1");
        a.merge(&b);
        assert_eq!(values(&a), ["v2", "w1"], "v1 was superseded on a, so it does not come back from b");
        let everything = a.context();
        a.write("b", &everything, "resolved");
        assert_eq!(values(&a), ["resolved"]);
    }

    #[test]
    fn writes_of_one_coordinator_that_did_not_see_each_other_both_stand() {
        let mut a: Versions<&str> = Versions::new();
        a.write("a", &Context::new(), "x");
        a.write("a", &Context::new(), "y");
        assert_eq!(values(&a), ["x", "y"]);
        let mut late: Versions<&str> = Versions::new();
        late.write("a", &Context::new(), "x");
        late.merge(&a);
        assert_eq!(values(&late), ["x", "y"]);
    }

    /// A replica's history: writes at coordinators, each with the context of a replica's state.
    #[derive(Clone, Debug)]
    enum Step {
        /// Replica `at` coordinates a write with the context of replica `context_of`'s state.
        Write { at: usize, context_of: usize, value: u8 },
        /// Replica `to` merges replica `from`'s state.
        Merge { from: usize, to: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..3usize, any::<u8>()).prop_map(|(at, context_of, value)| Step::Write { at, context_of, value }),
            (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Merge { from, to }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Merge is commutative, associative and idempotent over any states a history of
        /// writes and merges makes; a merged state covers both; after everyone merges,
        /// every replica has the same versions.
        #[test]
        fn merging_states_in_any_order_converges(steps in prop::collection::vec(step(), 0..40)) {
            let names = ["a", "b", "c"];
            let mut replicas: Vec<Versions<(usize, u8)>> = vec![Versions::new(); 3];
            let mut made = 0usize;
            for step in &steps {
                match step {
                    Step::Write { at, context_of, value } => {
                        let context = replicas[*context_of].context();
                        made += 1;
                        replicas[*at].write(names[*at], &context, (made, *value));
                    }
                    Step::Merge { from, to } => {
                        let from = replicas[*from].clone();
                        replicas[*to].merge(&from);
                    }
                }
            }
            let (x, y, z) = (&replicas[0], &replicas[1], &replicas[2]);
            let mut xy = x.clone();
            xy.merge(y);
            let mut yx = y.clone();
            yx.merge(x);
            prop_assert_eq!(&xy, &yx, "commutative");
            prop_assert!(xy.covers(x) && xy.covers(y));
            let mut xy_z = xy.clone();
            xy_z.merge(z);
            let mut yz = y.clone();
            yz.merge(z);
            let mut x_yz = x.clone();
            x_yz.merge(&yz);
            prop_assert_eq!(&xy_z, &x_yz, "associative");
            let mut again = xy_z.clone();
            again.merge(&xy_z);
            prop_assert_eq!(&again, &xy_z, "idempotent");
        }

        /// A version stands after everyone merges unless some write that had seen it was
        /// made: nothing is dropped silently.
        #[test]
        fn a_version_disappears_only_under_a_write_that_saw_it(steps in prop::collection::vec(step(), 0..40)) {
            let names = ["a", "b", "c"];
            let mut replicas: Vec<Versions<usize>> = vec![Versions::new(); 3];
            // Per write made: its (coordinator, number) and the context it was made with.
            let mut writes: Vec<((String, u64), Context)> = Vec::new();
            for step in &steps {
                match step {
                    Step::Write { at, context_of, .. } => {
                        let context = replicas[*context_of].context();
                        let made = writes.len();
                        let number = replicas[*at].write(names[*at], &context, made);
                        writes.push(((names[*at].to_string(), number), context));
                    }
                    Step::Merge { from, to } => {
                        let from = replicas[*from].clone();
                        replicas[*to].merge(&from);
                    }
                }
            }
            let mut all = Versions::new();
            for replica in &replicas {
                all.merge(replica);
            }
            let standing: Vec<usize> = all.siblings().into_iter().map(|(_, made)| *made).collect();
            for (made, ((node, number), _)) in writes.iter().enumerate() {
                let superseded = writes.iter().any(|(_, context)| context.get(node).is_some_and(|seen| seen >= number));
                prop_assert_eq!(standing.contains(&made), !superseded, "write {} ({}#{}): {:?}", made, node, number, all);
            }
        }
    }
}
