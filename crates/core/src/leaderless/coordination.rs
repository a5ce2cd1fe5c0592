//! What a coordinator decides for one request, as pure functions the node protocol will
//! call: where a write goes when some replicas are down (sloppy quorum, hinted copies on
//! fallback nodes), when enough acknowledgements have come (`w`, strict or not), and,
//! after a read, the merged versions and which replicas need repairing.

use super::dvv::Versions;

/// One copy of a write: the node it goes to, and the replica it stands in for when that
/// replica is down (the copy is then a hint, to be handed over when it returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub node: String,
    pub hint_for: Option<String>,
}

/// Where a write of a key goes: to each of its `replicas` replicas (the first of
/// `preference`, the ring's order) that is up, and for each that is down, to the next
/// fallback in `preference` that is up, as a hint. A replica with no fallback left gets
/// no copy (the write may then miss its `w`).
pub fn plan_write(preference: &[&str], replicas: usize, is_down: &dyn Fn(&str) -> bool) -> Vec<Destination> {
    let replicas = replicas.min(preference.len());
    let mut fallbacks = preference[replicas..].iter().filter(|node| !is_down(node));
    let mut copies = Vec::with_capacity(replicas);
    for replica in &preference[..replicas] {
        if !is_down(replica) {
            copies.push(Destination { node: replica.to_string(), hint_for: None });
        } else if let Some(fallback) = fallbacks.next() {
            copies.push(Destination { node: fallback.to_string(), hint_for: Some(replica.to_string()) });
        }
    }
    copies
}

/// A write's acknowledgements so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteTally {
    wanted: usize,
    /// Only the key's own replicas count (`strict`), or hinted copies too.
    strict: bool,
    replicas: usize,
    hints: usize,
    /// Copies sent and not yet answered, by kind.
    waiting_replicas: usize,
    waiting_hints: usize,
}

/// Where a write stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Enough copies are durable: answer the client.
    Done,
    /// Not yet; more answers may come.
    Waiting,
    /// Even if every copy still out answers, `w` cannot be met.
    Short,
}

impl WriteTally {
    /// A write that wants `wanted` acknowledgements, sent to `destinations`.
    pub fn new(wanted: usize, strict: bool, destinations: &[Destination]) -> WriteTally {
        let waiting_hints = destinations.iter().filter(|copy| copy.hint_for.is_some()).count();
        WriteTally { wanted, strict, replicas: 0, hints: 0, waiting_replicas: destinations.len() - waiting_hints, waiting_hints }
    }

    /// An acknowledgement (`hinted`: from a fallback holding a hint) or a failure of one copy.
    pub fn answered(&mut self, hinted: bool, stored: bool) -> WriteOutcome {
        if hinted {
            self.waiting_hints = self.waiting_hints.saturating_sub(1);
            self.hints += usize::from(stored);
        } else {
            self.waiting_replicas = self.waiting_replicas.saturating_sub(1);
            self.replicas += usize::from(stored);
        }
        self.outcome()
    }

    /// How many acknowledgements count toward `w`.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// Copies stored on the key's own replicas.
    pub fn replicas_stored(&self) -> usize {
        self.replicas
    }

    pub fn wanted(&self) -> usize {
        self.wanted
    }

    pub fn counted(&self) -> usize {
        if self.strict {
            self.replicas
        } else {
            self.replicas + self.hints
        }
    }

    pub fn outcome(&self) -> WriteOutcome {
        let possible = self.counted() + self.waiting_replicas + if self.strict { 0 } else { self.waiting_hints };
        if self.counted() >= self.wanted {
            WriteOutcome::Done
        } else if possible < self.wanted {
            WriteOutcome::Short
        } else {
            WriteOutcome::Waiting
        }
    }
}

/// After a read: the versions of every answer merged (what the client is given), and the
/// replicas whose answer lacked some of them (to be sent the merged versions: read repair).
pub fn merge_answers<V: Clone + PartialEq>(answers: &[(String, Versions<V>)]) -> (Versions<V>, Vec<String>) {
    let mut merged = Versions::new();
    for (_, versions) in answers {
        merged.merge(versions);
    }
    let stale = answers.iter().filter(|(_, versions)| !versions.covers(&merged)).map(|(node, _)| node.clone()).collect();
    (merged, stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaderless::Context;

    #[test]
    fn a_down_replicas_copy_goes_to_the_next_fallback_that_is_up_as_a_hint() {
        let preference = ["a", "b", "c", "d", "e"];
        let down = |node: &str| node == "b" || node == "d";
        let copies = plan_write(&preference, 3, &down);
        let expected = [("a", None), ("e", Some("b")), ("c", None)];
        let got: Vec<(&str, Option<&str>)> = copies.iter().map(|copy| (copy.node.as_str(), copy.hint_for.as_deref())).collect();
        assert_eq!(got, expected);
        let all_down = |_: &str| true;
        assert!(plan_write(&preference, 3, &all_down).is_empty());
    }

    #[test]
    fn hints_count_toward_w_unless_it_is_strict_and_a_write_that_cannot_reach_w_says_so() {
        let copies = vec![
            Destination { node: "a".into(), hint_for: None },
            Destination { node: "e".into(), hint_for: Some("b".into()) },
            Destination { node: "c".into(), hint_for: None },
        ];
        let mut sloppy = WriteTally::new(2, false, &copies);
        assert_eq!(sloppy.answered(true, true), WriteOutcome::Waiting);
        assert_eq!(sloppy.answered(false, true), WriteOutcome::Done);
        assert_eq!(sloppy.counted(), 2);

        let mut strict = WriteTally::new(2, true, &copies);
        assert_eq!(strict.answered(true, true), WriteOutcome::Waiting, "a hint does not count");
        assert_eq!(strict.answered(false, true), WriteOutcome::Waiting);
        assert_eq!(strict.answered(false, false), WriteOutcome::Short, "c failed: only a counts");

        let all = WriteTally::new(3, true, &copies);
        assert_eq!(all.outcome(), WriteOutcome::Short, "three strict replicas wanted, two sent");
    }

    #[test]
    fn a_read_returns_every_answer_merged_and_names_the_replicas_to_repair() {
        let mut fresh: Versions<&str> = Versions::new();
        fresh.write("a", &Context::new(), "v1");
        let seen = fresh.context();
        fresh.write("a", &seen, "v2");
        let mut old: Versions<&str> = Versions::new();
        old.write("a", &Context::new(), "v1");
        let (merged, stale) = merge_answers(&[("a".to_string(), fresh.clone()), ("b".to_string(), old), ("c".to_string(), fresh)]);
        let shown: Vec<&str> = merged.siblings().into_iter().map(|(_, value)| *value).collect();
        assert_eq!(shown, ["v2"]);
        assert_eq!(stale, ["b"]);
    }
}
