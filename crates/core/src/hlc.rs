//! A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014): timestamps
//! that follow the wall clock when it moves, never go backwards, and order every event
//! after every event it could have seen (a message's send before its receipt), across
//! nodes whose clocks disagree.
//!
//! Multi-leader and leaderless replication stamp each row change with one, to decide
//! which of two concurrent writes is newer (last writer wins) and to carry a causal
//! order between regions. Pure: the driver passes the wall clock in as `now`.

use crate::types::Micros;
use serde::{Deserialize, Serialize};

/// A point in hybrid time: the largest wall-clock reading (µs) known when it was made,
/// then a counter ordering events that share it. Ordered by `(wall_us, logical)`; ties
/// between nodes are broken by the caller (e.g. by origin node id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub wall_us: Micros,
    pub logical: u32,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp { wall_us: 0, logical: 0 };

    pub fn new(wall_us: Micros, logical: u32) -> Timestamp {
        Timestamp { wall_us, logical }
    }

    /// The next timestamp after this one at the same wall time (the counter's end moves
    /// to the next microsecond, so order is kept even then).
    fn successor(self) -> Timestamp {
        match self.logical.checked_add(1) {
            Some(logical) => Timestamp { wall_us: self.wall_us, logical },
            None => Timestamp { wall_us: self.wall_us + 1, logical: 0 },
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_us, self.logical)
    }
}

/// A remote timestamp too far ahead of this node's wall clock to be taken in: adopting it
/// would drag this node's clock (and every write it stamps) into the future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockDrift {
    pub remote: Timestamp,
    pub now: Micros,
    pub max_drift_us: Micros,
}

impl std::fmt::Display for ClockDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a timestamp {} µs ahead of this node's clock (over the {} µs allowed): check the clocks",
            self.remote.wall_us.saturating_sub(self.now),
            self.max_drift_us
        )
    }
}

impl std::error::Error for ClockDrift {}

/// One node's hybrid clock.
#[derive(Clone, Debug)]
pub struct HybridClock {
    last: Timestamp,
    max_drift_us: Micros,
}

impl HybridClock {
    /// `max_drift_us`: how far ahead of the local wall clock a remote timestamp may be and
    /// still be taken in.
    pub fn new(max_drift_us: Micros) -> HybridClock {
        HybridClock { last: Timestamp::ZERO, max_drift_us }
    }

    /// Resumes after a restart from the largest timestamp this node is known to have
    /// issued (persisted with what it stamped), so it never issues one again.
    pub fn resume(max_drift_us: Micros, issued: Timestamp) -> HybridClock {
        HybridClock { last: issued, max_drift_us }
    }

    /// The newest timestamp issued or taken in so far.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A timestamp for a local event (a write, a message sent) at wall time `now`: later
    /// than every timestamp before it.
    pub fn now(&mut self, now: Micros) -> Timestamp {
        self.last = if now > self.last.wall_us { Timestamp::new(now, 0) } else { self.last.successor() };
        self.last
    }

    /// Takes in `remote` (from a message or a replicated change) at wall time `now`, and
    /// returns the timestamp of the receipt: later than both `remote` and everything this
    /// node issued before.
    ///
    /// # Errors
    /// If `remote` is more than `max_drift_us` ahead of `now`; the clock is unchanged.
    pub fn observe(&mut self, remote: Timestamp, now: Micros) -> Result<Timestamp, ClockDrift> {
        if remote.wall_us > now.saturating_add(self.max_drift_us) {
            return Err(ClockDrift { remote, now, max_drift_us: self.max_drift_us });
        }
        let newest = self.last.max(remote);
        self.last = if now > newest.wall_us { Timestamp::new(now, 0) } else { newest.successor() };
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_events_follow_the_wall_clock_and_count_within_a_microsecond() {
        let mut clock = HybridClock::new(1_000);
        assert_eq!(clock.now(100), Timestamp::new(100, 0));
        assert_eq!(clock.now(100), Timestamp::new(100, 1));
        assert_eq!(clock.now(100), Timestamp::new(100, 2));
        assert_eq!(clock.now(250), Timestamp::new(250, 0));
        // The wall clock stepped back (NTP): time does not.
        assert_eq!(clock.now(90), Timestamp::new(250, 1));
        assert_eq!(clock.last(), Timestamp::new(250, 1));
    }

    #[test]
    fn a_receipt_is_after_the_send_even_from_a_clock_ahead() {
        let mut behind = HybridClock::new(1_000);
        assert_eq!(behind.now(100), Timestamp::new(100, 0));
        // A message stamped 500.3 by a node whose clock is 400 µs ahead.
        assert_eq!(behind.observe(Timestamp::new(500, 3), 110), Ok(Timestamp::new(500, 4)));
        assert_eq!(behind.now(120), Timestamp::new(500, 5), "local events stay after what was received");
        assert_eq!(behind.now(600), Timestamp::new(600, 0), "until the wall clock passes it");
        // From a clock behind: the local clock wins, the counter restarts.
        assert_eq!(behind.observe(Timestamp::new(300, 9), 700), Ok(Timestamp::new(700, 0)));
        // Same wall time on both sides: after both counters.
        assert_eq!(behind.observe(Timestamp::new(700, 5), 700), Ok(Timestamp::new(700, 6)));
    }

    #[test]
    fn a_timestamp_too_far_ahead_is_refused_and_changes_nothing() {
        let mut clock = HybridClock::new(1_000);
        clock.now(5_000);
        let refused = clock.observe(Timestamp::new(7_000, 0), 5_000);
        assert_eq!(refused, Err(ClockDrift { remote: Timestamp::new(7_000, 0), now: 5_000, max_drift_us: 1_000 }));
        assert_eq!(clock.last(), Timestamp::new(5_000, 0));
        assert_eq!(clock.observe(Timestamp::new(6_000, 0), 5_000), Ok(Timestamp::new(6_000, 1)), "exactly at the bound is taken in");
        assert!(refused.unwrap_err().to_string().contains("2000 µs ahead"));
    }

    #[test]
    fn the_counter_running_out_moves_to_the_next_microsecond() {
        let mut clock = HybridClock::resume(1_000, Timestamp::new(10, u32::MAX - 1));
        assert_eq!(clock.now(5), Timestamp::new(10, u32::MAX));
        assert_eq!(clock.now(5), Timestamp::new(11, 0));
    }

    #[test]
    fn timestamps_order_by_wall_time_then_counter() {
        let mut stamps = vec![Timestamp::new(2, 0), Timestamp::new(1, 5), Timestamp::new(1, 7), Timestamp::ZERO];
        stamps.sort();
        assert_eq!(stamps, vec![Timestamp::ZERO, Timestamp::new(1, 5), Timestamp::new(1, 7), Timestamp::new(2, 0)]);
        assert_eq!(Timestamp::new(1, 7).to_string(), "1.7");
    }
}
