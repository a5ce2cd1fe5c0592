//! Quorum counting and deadline waiters: pure helpers every topology uses (a leader
//! counting acknowledgements today; a leaderless coordinator counting `w=`/`r=` replies
//! next).

use crate::types::{AckRequirement, Micros};

/// The largest value that at least `quorum` of `values` have reached: the `quorum`-th
/// largest. With each voter's matched index, the index a quorum holds.
pub fn reached_by(mut values: Vec<u64>, quorum: usize) -> u64 {
    debug_assert!(quorum >= 1 && quorum <= values.len(), "a quorum of {quorum} among {} values", values.len());
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[quorum - 1]
}

/// Whether `copies` durable copies (the writer's own included) satisfy `requirement`
/// among `members` voters. `in_sync_hold_it`: every in-sync voter holds the write (only
/// asked for `AllInSync`, which also never settles for less than a majority).
pub fn requirement_met(requirement: AckRequirement, copies: usize, majority: usize, members: usize, in_sync_hold_it: impl FnOnce() -> bool) -> bool {
    match requirement {
        AckRequirement::Nodes(count) => copies >= count,
        AckRequirement::Majority => copies >= majority,
        AckRequirement::All => copies >= members,
        AckRequirement::AllInSync => copies >= majority && in_sync_hold_it(),
    }
}

/// A waiter taken out of its list: its condition held, or its deadline passed first.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<W> {
    Done(W),
    Expired(W),
}

/// Takes out of `waiters` every one that `done` says is satisfied, or else whose
/// `deadline` is at or before `now`, in the order they are found (a removed waiter's
/// place is taken by the last one, which is looked at next); the rest stay.
pub fn settle<W>(waiters: &mut Vec<W>, now: Micros, deadline: impl Fn(&W) -> Micros, done: impl Fn(&W) -> bool) -> Vec<Settled<W>> {
    let mut settled = Vec::new();
    let mut index = 0;
    while index < waiters.len() {
        if done(&waiters[index]) {
            settled.push(Settled::Done(waiters.swap_remove(index)));
        } else if now >= deadline(&waiters[index]) {
            settled.push(Settled::Expired(waiters.swap_remove(index)));
        } else {
            index += 1;
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_a_quorum_reached_is_the_quorum_th_largest() {
        assert_eq!(reached_by(vec![7, 3, 9], 2), 7);
        assert_eq!(reached_by(vec![7, 3, 9], 3), 3);
        assert_eq!(reached_by(vec![5, 5, 1, 0, 9], 3), 5);
        assert_eq!(reached_by(vec![4], 1), 4);
    }

    #[test]
    fn requirements_count_copies_and_all_in_sync_needs_a_majority_too() {
        let met = |requirement, copies, in_sync| requirement_met(requirement, copies, 2, 3, || in_sync);
        assert!(met(AckRequirement::Nodes(1), 1, false));
        assert!(!met(AckRequirement::Nodes(3), 2, true));
        assert!(met(AckRequirement::Majority, 2, false));
        assert!(!met(AckRequirement::All, 2, true));
        assert!(met(AckRequirement::All, 3, false));
        assert!(!met(AckRequirement::AllInSync, 1, true), "one copy is never enough, however few are in sync");
        assert!(!met(AckRequirement::AllInSync, 2, false));
        assert!(met(AckRequirement::AllInSync, 2, true));
    }

    #[test]
    fn settle_takes_out_the_done_and_the_expired_in_swap_remove_order() {
        // (value, deadline): done when value is even.
        let mut waiters = vec![(2, 100), (3, 50), (5, 200), (4, 10), (7, 40)];
        let settled = settle(&mut waiters, 45, |waiter| waiter.1, |waiter| waiter.0 % 2 == 0);
        assert_eq!(settled, vec![Settled::Done((2, 100)), Settled::Expired((7, 40)), Settled::Done((4, 10))]);
        assert_eq!(waiters, vec![(5, 200), (3, 50)]);
    }
}
