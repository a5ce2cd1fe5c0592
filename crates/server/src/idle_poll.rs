//! After answering an HTTP read, one async worker keeps polling for the next request for
//! a short while (`--idle-poll-us`) instead of going to sleep at once.
//!
//! Why: on these virtual machines a core with nothing to run halts, and waking it for
//! the next request costs more than serving a read by key. Measured (2 vCPUs, a follower,
//! `rqlite_load --op get --clients 1`): 10.1-10.8k reads/s at 0.10 ms p50 when the
//! worker sleeps, 26.0-26.4k at 0.02 ms when it polls for 100 us after each answer. Go's
//! scheduler does the same (it spins before parking), which is why rqlite's one-client
//! reads were faster than tern's. See docs/performance.md.
//!
//! The cost is bounded: nothing polls on an idle node; after an answer one task yields in
//! a loop for at most the period, giving the worker to any other task and the core to
//! any other thread (`sched_yield`) between polls. Only reads start it: a writer's next
//! request comes a commit later, and polling meanwhile would only take a core from the
//! commit's own threads.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// One node's poller: `answered` after each answer starts (or extends) a polling period.
pub struct IdlePoll {
    answered: Notify,
}

impl IdlePoll {
    /// Starts the polling task on the current runtime; `period` zero: never polls.
    pub fn start(period: Duration) -> Option<Arc<IdlePoll>> {
        if period.is_zero() {
            return None;
        }
        let poll = Arc::new(IdlePoll { answered: Notify::new() });
        let waiting = poll.clone();
        // Lives as long as the runtime (a node's router lives as long as the node).
        tokio::spawn(async move {
            loop {
                waiting.answered.notified().await;
                let until = Instant::now() + period;
                while Instant::now() < until {
                    // The worker polls its sockets without blocking before it resumes a
                    // task that yielded: a request that arrives now is served at once.
                    tokio::task::yield_now().await;
                    std::thread::yield_now();
                }
            }
        });
        Some(poll)
    }

    /// A read's answer went out: poll for the next request for a while.
    pub fn answered(&self) {
        self.answered.notify_one();
    }
}
