//! The driving contract every topology's state machine implements, in the manner of
//! quinn-proto and str0m: the driver hands it events with the current time, drains its
//! outputs, and wakes it again by `poll_timeout` even when nothing happens.
//!
//! Rules for drivers (the tokio server and the simulator both follow them):
//! - `now` never goes backwards from one call to the next.
//! - After every `handle`, drain `poll_output` until it returns `None`, and carry the
//!   outputs out in order: an output that persists something comes before any output
//!   that may only be sent once it is durable (each protocol says which in its `Output`).
//! - Call `handle` with the protocol's timer event no later than `poll_timeout()`.

use crate::types::Micros;

pub trait Protocol {
    /// Everything that can happen to the state machine.
    type Event;
    /// What it asks its driver to do.
    type Output;

    /// Reacts to `event` at time `now`.
    fn handle(&mut self, event: Self::Event, now: Micros);

    /// The next thing to do, if any.
    fn poll_output(&mut self) -> Option<Self::Output>;

    /// The latest time by which the driver must deliver the timer event, if any.
    fn poll_timeout(&self) -> Option<Micros>;
}
