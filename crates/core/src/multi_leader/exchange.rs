//! The exchange between regions, run by each region's leader: it ships every write this
//! region holds (its own and, relayed, other regions') to each region that lacks it, and
//! releases incoming writes for applying in causal order. A region's writes thus reach
//! every region as long as one region that holds them is up.
//!
//! Durability is the driver's: it keeps every write it applied or made in a per-origin
//! log, applies a released write with the new per-origin cursor in one transaction, and
//! restarts the exchange from those cursors. Regions tell each other their durable
//! cursors (`RegionMessage::Status`), and a region resends what another has not confirmed
//! after `resend_us`, so losses and crashes cost time, never a write.

use super::causal::{CausalQueue, Received, VersionVector};
use super::register::Dot;
use crate::protocol::Protocol;
use crate::quorum::{self, Settled};
use crate::types::Micros;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// A write as it travels between regions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment<W> {
    pub dot: Dot,
    /// What its origin had applied when it was made.
    pub seen: VersionVector,
    pub write: W,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionMessage<W> {
    Ship {
        writes: Vec<Shipment<W>>,
    },
    /// The sender's durable cursors: every write it holds, per origin.
    Status {
        holds: VersionVector,
    },
}

#[derive(Clone, Debug)]
pub enum ExchangeEvent<W> {
    /// Timers: status messages and resends.
    Tick,
    Message {
        from: String,
        message: RegionMessage<W>,
    },
    /// A write made in this region committed durably: the next of its stream, as
    /// [`Exchange::next_local`] named it.
    Committed {
        dot: Dot,
    },
    /// The writes asked for by `ExchangeOutput::ReadWrites` (fewer if the log holds fewer).
    WritesRead {
        to: String,
        writes: Vec<Shipment<W>>,
    },
    /// A write handed out by `ExchangeOutput::Apply` is applied durably, cursor included.
    Applied {
        dot: Dot,
    },
    /// A device's own writes, pushed to this region when it synced (issue 15): released
    /// for applying in causal order like a region's shipment, then shipped on to every
    /// region like any write this region holds. A device is no peer: it is told nothing.
    FromDevice {
        writes: Vec<Shipment<W>>,
    },
    /// A client asked that its write `dot` (made here) be held by `regions` regions, this
    /// one included (`w=regions:k`), before it is answered; `ExchangeOutput::Reached`
    /// answers, by `deadline` at the latest.
    WaitForRegions {
        tag: u64,
        dot: Dot,
        regions: usize,
        deadline: Micros,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeOutput<W> {
    Send {
        to: String,
        message: RegionMessage<W>,
    },
    /// Apply this write (in this order) with its origin's cursor in one transaction, then
    /// hand in `ExchangeEvent::Applied`.
    Apply(Shipment<W>),
    /// Read `origin`'s writes numbered `after + 1 ..= up_to` from the durable log and hand
    /// them in with `ExchangeEvent::WritesRead`.
    ReadWrites {
        to: String,
        origin: String,
        after: u64,
        up_to: u64,
    },
    /// A `WaitForRegions` is settled: `Ok` once enough regions hold the write, else how
    /// many did by the deadline (the write stays: it will reach the others later).
    Reached {
        tag: u64,
        result: Result<(), usize>,
    },
}

#[derive(Clone, Debug)]
pub struct ExchangeConfig {
    pub region: String,
    /// Every region, this one included.
    pub regions: Vec<String>,
    /// How often each region's cursors are told to the others.
    pub status_interval_us: Micros,
    /// How long a shipment may go unconfirmed before it is sent again.
    pub resend_us: Micros,
}

/// The most writes asked for in one `ReadWrites` (one message).
const MAX_BATCH: u64 = 256;

/// What this region knows of another.
#[derive(Clone, Debug, Default)]
struct Peer {
    /// The peer's durable cursors, as it last told them (or as its shipments showed).
    holds: VersionVector,
    /// Per origin, what was shipped and not yet confirmed.
    shipped: BTreeMap<String, Outstanding>,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// Shipped (or being read for shipping) up to here.
    up_to: u64,
    /// Since when the peer's confirmation has not moved while something was outstanding,
    /// and where it stood then.
    since: Micros,
    confirmed_then: u64,
}

pub struct Exchange<W> {
    config: ExchangeConfig,
    queue: CausalQueue<W>,
    /// Every write durably held here, per origin (own writes included).
    durable: VersionVector,
    peers: BTreeMap<String, Peer>,
    next_status_at: Micros,
    waiters: Vec<RegionWaiter>,
    outputs: VecDeque<ExchangeOutput<W>>,
}

struct RegionWaiter {
    tag: u64,
    dot: Dot,
    regions: usize,
    deadline: Micros,
}

impl<W: Clone> Exchange<W> {
    /// Starts from the durable cursors (every write held, per origin, own included).
    pub fn new(config: ExchangeConfig, durable: VersionVector, now: Micros) -> Exchange<W> {
        let peers = config.regions.iter().filter(|region| **region != config.region).map(|region| (region.clone(), Peer::default())).collect();
        Exchange { queue: CausalQueue::new(durable.clone()), durable, peers, next_status_at: now, waiters: Vec::new(), outputs: VecDeque::new(), config }
    }

    /// Every write durably held here, per origin.
    pub fn holds(&self) -> &VersionVector {
        &self.durable
    }

    /// Per other region, what it holds as far as this region knows.
    pub fn peers(&self) -> impl Iterator<Item = (&str, &VersionVector)> {
        self.peers.iter().map(|(region, peer)| (region.as_str(), &peer.holds))
    }

    /// The next own write's dot, and what it will have seen (what is applied here).
    pub fn next_local(&self) -> (Dot, VersionVector) {
        (Dot::new(self.config.region.clone(), self.durable.get(&self.config.region) + 1), self.queue.applied().clone())
    }

    /// Answers the `w=regions:k` waiters that enough regions now hold, and those whose
    /// deadline passed.
    fn settle_waiters(&mut self, now: Micros) {
        let (durable, peers) = (&self.durable, &self.peers);
        let held_by = |waiter: &RegionWaiter| regions_holding(durable, peers, &waiter.dot);
        for settled in quorum::settle(&mut self.waiters, now, |waiter| waiter.deadline, |waiter| held_by(waiter) >= waiter.regions) {
            let (tag, result) = match settled {
                Settled::Done(waiter) => (waiter.tag, Ok(())),
                Settled::Expired(waiter) => (waiter.tag, Err(held_by(&waiter))),
            };
            self.outputs.push_back(ExchangeOutput::Reached { tag, result });
        }
    }

    fn on_event(&mut self, event: ExchangeEvent<W>, now: Micros) {
        match event {
            ExchangeEvent::Tick => {
                if now >= self.next_status_at {
                    self.next_status_at = now + self.config.status_interval_us;
                    for region in self.peers.keys() {
                        self.outputs.push_back(ExchangeOutput::Send { to: region.clone(), message: RegionMessage::Status { holds: self.durable.clone() } });
                    }
                }
                self.ship(now);
            }
            ExchangeEvent::Message { from, message: RegionMessage::Status { holds } } => {
                let Some(peer) = self.peers.get_mut(&from) else { return };
                peer.holds.merge(&holds);
                self.ship(now);
            }
            ExchangeEvent::Message { from, message: RegionMessage::Ship { writes } } => {
                if !self.peers.contains_key(&from) {
                    return;
                }
                for shipment in writes {
                    if self.queue.receive(shipment.dot.clone(), shipment.seen.clone(), shipment.write.clone()) == Received::Queued {
                        // Held by the sender, whatever becomes of this copy.
                        if let Some(peer) = self.peers.get_mut(&from) {
                            peer.holds.advance(&shipment.dot);
                        }
                    }
                }
                self.release();
            }
            ExchangeEvent::FromDevice { writes } => {
                for shipment in writes {
                    // A region's writes come from the region alone.
                    if !self.config.regions.contains(&shipment.dot.region) {
                        self.queue.receive(shipment.dot, shipment.seen, shipment.write);
                    }
                }
                self.release();
            }
            ExchangeEvent::Committed { dot } => {
                let expected = self.durable.get(&self.config.region) + 1;
                if dot.region != self.config.region || dot.seq != expected {
                    // Not the next of this region's stream: a driver bug, refused whole.
                    return;
                }
                self.queue.record_local(&dot);
                self.durable.advance(&dot);
                self.ship(now);
            }
            ExchangeEvent::Applied { dot } => {
                self.durable.advance(&dot);
                self.ship(now);
            }
            ExchangeEvent::WritesRead { to, writes } => {
                if !writes.is_empty() {
                    self.outputs.push_back(ExchangeOutput::Send { to, message: RegionMessage::Ship { writes } });
                }
            }
            ExchangeEvent::WaitForRegions { tag, dot, regions, deadline } => {
                self.waiters.push(RegionWaiter { tag, dot, regions, deadline });
            }
        }
        self.settle_waiters(now);
    }

    /// Hands out every write the causal queue can release now, for applying in order.
    fn release(&mut self) {
        while let Some((dot, seen, write)) = self.queue.release() {
            self.outputs.push_back(ExchangeOutput::Apply(Shipment { dot, seen, write }));
        }
    }

    /// Asks for every write some peer lacks and was not shipped to it recently. What a
    /// peer has not confirmed within `resend_us` of its confirmation last moving is
    /// shipped again (lost, or the peer restarted without it).
    fn ship(&mut self, now: Micros) {
        for (region, peer) in &mut self.peers {
            for (origin, held) in self.durable.iter() {
                let confirmed = peer.holds.get(origin);
                let outstanding = peer.shipped.entry(origin.to_string()).or_insert(Outstanding { up_to: 0, since: now, confirmed_then: confirmed });
                if outstanding.up_to <= confirmed || outstanding.confirmed_then != confirmed {
                    outstanding.since = now;
                    outstanding.confirmed_then = confirmed;
                }
                let stalled = outstanding.up_to > confirmed && now >= outstanding.since + self.config.resend_us;
                let from = if stalled { confirmed } else { outstanding.up_to.max(confirmed) };
                if held > from {
                    let up_to = held.min(from + MAX_BATCH);
                    if stalled {
                        outstanding.since = now;
                    }
                    outstanding.up_to = up_to;
                    self.outputs.push_back(ExchangeOutput::ReadWrites { to: region.clone(), origin: origin.to_string(), after: from, up_to });
                }
            }
        }
    }
}

/// How many regions hold `dot`, this one (`durable`) included, as far as it knows.
fn regions_holding(durable: &VersionVector, peers: &BTreeMap<String, Peer>, dot: &Dot) -> usize {
    usize::from(durable.contains(dot)) + peers.values().filter(|peer| peer.holds.contains(dot)).count()
}

impl<W: Clone> Protocol for Exchange<W> {
    type Event = ExchangeEvent<W>;
    type Output = ExchangeOutput<W>;

    fn handle(&mut self, event: ExchangeEvent<W>, now: Micros) {
        self.on_event(event, now);
    }

    fn poll_output(&mut self) -> Option<ExchangeOutput<W>> {
        self.outputs.pop_front()
    }

    /// The next status message, the next resend due, or a waiter's deadline.
    fn poll_timeout(&self) -> Option<Micros> {
        let resends = self.peers.values().flat_map(|peer| {
            peer.shipped
                .iter()
                .filter(|(origin, outstanding)| outstanding.up_to > peer.holds.get(origin))
                .map(|(_, outstanding)| outstanding.since + self.config.resend_us)
        });
        let waiters = self.waiters.iter().map(|waiter| waiter.deadline);
        std::iter::once(self.next_status_at).chain(resends).chain(waiters).min()
    }
}
