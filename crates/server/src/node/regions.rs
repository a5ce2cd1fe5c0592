//! Multi-leader on a node: while this node leads its region (and its write lease holds),
//! it runs the core's `Exchange` beside its `Replica`. The exchange's writes are read from
//! and applied through the storage thread (an applied write is one entry of the region's
//! own log, so the region's followers get it), a region write counts as held once the
//! region has committed it, and the exchange's messages go to the other regions' leaders.

use super::*;
use std::collections::VecDeque;
use tern_core::multi_leader::{Dot, Exchange, ExchangeConfig, ExchangeEvent, ExchangeOutput, RegionMessage, Shipment, VersionVector};
use tern_core::Protocol;
use tern_storage::region_log::LoggedWrite;

pub(crate) type RegionExchange = Exchange<Vec<u8>>;

/// How often a region leader tells the others what it holds.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// A shipment unconfirmed this long is sent again.
const RESEND_AFTER: Duration = Duration::from_millis(400);

/// A schema change waits this long for every region to be heard from before it is refused.
const SCHEMA_WAIT: Duration = Duration::from_secs(3);

/// A region counts as reachable for a schema change if its leader spoke this recently.
const REACHABLE_WITHIN: Duration = Duration::from_millis(1000);

/// A region whose leader has not spoken for this long is written to at every node.
const LEADER_HINT_TTL: Duration = Duration::from_millis(1000);

/// What `/status` shows of the exchange.
#[derive(Clone, Debug, Default)]
pub struct RegionStatus {
    /// Whether this node runs its region's exchange now.
    pub exchanging: bool,
    /// Every write this region holds, per origin.
    pub holds: VersionVector,
    /// Per other region: what it last said it holds, and when it last spoke (ms ago).
    pub regions: Vec<(String, VersionVector, Option<f64>)>,
    /// Per other region lacking here some of its own writes it says it holds: for how
    /// long (ms) this region has lacked some.
    pub behind_ms: BTreeMap<String, f64>,
    /// Per origin, how far this leader has compacted the region log.
    pub compacted: BTreeMap<String, u64>,
}

/// An operator's change to conflict handling, made by a region leader and carried to
/// every region.
#[derive(Clone, Debug)]
pub enum RegionChange {
    /// `table`'s rows written from now on are settled under `policy`.
    Policy { table: String, policy: tern_core::multi_leader::Policy },
    /// `table`'s rows have a home region, named by `column`: only it writes them.
    HomeRule { table: String, column: String, directory: bool },
    /// Settles the conflicts of `table`'s row `key`, keeping `values` (the whole row), or
    /// the version shown now.
    Resolve { table: String, key: Vec<tern_storage::SqlValue>, values: Option<Vec<tern_storage::SqlValue>> },
    /// Drops each origin's writes up to its floor from this region's log (every region
    /// holds them); made by the region's leader on its own, not carried to other regions.
    CompactLog { floors: Vec<(String, u64)> },
}

/// How often a region leader looks for region log writes to compact.
const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// A move of a homed row (or directory key) asked of this node, shown in `/status` until
/// it is answered: made at the old home, then held by every region.
#[derive(Clone, Debug)]
pub struct MoveInProgress {
    pub id: u64,
    pub table: String,
    pub key: Vec<tern_storage::SqlValue>,
    /// The home as this node saw it when the move was asked (`None`: none yet).
    pub from: Option<String>,
    pub to: String,
    pub started: Instant,
}

/// Takes a move off the list when its request ends, however it ends.
struct MoveListed<'a> {
    node: &'a Node,
    id: u64,
}

impl Drop for MoveListed<'_> {
    fn drop(&mut self) {
        self.node.moves.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).retain(|listed| listed.id != self.id);
    }
}

/// The replica loop's multi-leader state.
pub(super) struct RegionLink {
    exchange: Option<RegionExchange>,
    /// A new exchange waits for the region's cursors from the storage thread.
    starting: bool,
    /// Region writes in the local log, by log index, until the region commits them.
    uncommitted: VecDeque<(u64, Dot)>,
    /// The writes logged here most recently, to ship without reading them back.
    recent: RecentWrites,
    /// Per other region: since when this region lacks some of that region's own writes.
    behind_since: BTreeMap<String, Instant>,
    /// `w=regions:k` writes waiting for other regions.
    waiters: HashMap<u64, oneshot::Sender<Result<(), usize>>>,
    /// Waits asked for while no exchange runs (it is starting): handed to the next one.
    early: Vec<EarlyWait>,
    next_tag: u64,
    /// Per origin, how far this leader has compacted the region log, and when it looks next.
    compacted: BTreeMap<String, u64>,
    next_compaction: Option<Instant>,
}

impl RegionLink {
    pub(super) fn new() -> RegionLink {
        RegionLink {
            exchange: None,
            starting: false,
            uncommitted: VecDeque::new(),
            waiters: HashMap::new(),
            early: Vec::new(),
            recent: RecentWrites::default(),
            behind_since: BTreeMap::new(),
            next_tag: 1,
            compacted: BTreeMap::new(),
            next_compaction: None,
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<u64> {
        let early = self.early.iter().map(|(_, _, deadline, _)| *deadline).min();
        match (self.exchange.as_ref().and_then(Protocol::poll_timeout), early) {
            (Some(exchange), Some(early)) => Some(exchange.min(early)),
            (exchange, early) => exchange.or(early),
        }
    }

    /// An entry of the local log holds a region write.
    pub(super) fn on_appended(&mut self, index: u64, write: LoggedWrite) {
        self.uncommitted.push_back((index, write.dot.clone()));
        self.recent.keep(Shipment { dot: write.dot, seen: write.seen, write: write.payload });
    }

    /// The region's cursors, read for a new exchange.
    pub(super) fn on_holds(&mut self, node: &Node, holds: VersionVector, leading: bool, now: u64) {
        self.starting = false;
        if !leading {
            return;
        }
        let config = ExchangeConfig {
            region: node.config.region.clone(),
            regions: node.config.all_regions(),
            status_interval_us: STATUS_INTERVAL.as_micros() as u64,
            resend_us: RESEND_AFTER.as_micros() as u64,
        };
        tracing::info!("exchanging writes with the other regions from {holds:?}");
        self.exchange = Some(Exchange::new(config, holds, now));
        for (dot, regions, deadline, reply) in std::mem::take(&mut self.early) {
            self.wait_for_regions(dot, regions, deadline, reply, now);
        }
    }

    /// The exchange cannot go on as it stands (a write failed to apply, or leadership
    /// wavered under it): it starts again from the durable cursors.
    pub(super) fn restart(&mut self, why: &str) {
        if self.exchange.take().is_some() {
            tracing::warn!("restarting the exchange with the other regions: {why}");
        }
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Err(1));
        }
    }

    pub(super) fn on_message(&mut self, region: &str, message: RegionMessage<Vec<u8>>, now: u64) {
        if let Some(exchange) = &mut self.exchange {
            exchange.handle(ExchangeEvent::Message { from: region.to_string(), message }, now);
        }
    }

    pub(super) fn on_writes_read(&mut self, to: String, writes: Vec<Shipment<Vec<u8>>>, now: u64) {
        if let Some(exchange) = &mut self.exchange {
            exchange.handle(ExchangeEvent::WritesRead { to, writes }, now);
        }
    }

    /// A client's write `dot` waits until `regions` regions hold it.
    pub(super) fn wait_for_regions(&mut self, dot: Dot, regions: usize, deadline: u64, reply: oneshot::Sender<Result<(), usize>>, now: u64) {
        let Some(exchange) = &mut self.exchange else {
            self.early.push((dot, regions, deadline, reply));
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.waiters.insert(tag, reply);
        exchange.handle(ExchangeEvent::WaitForRegions { tag, dot, regions, deadline }, now);
    }

    /// A device's own writes, pushed when it synced: into the exchange (which applies
    /// them in causal order and ships them on), answered once this region holds the last.
    pub(super) fn device_push(&mut self, shipments: Vec<Shipment<Vec<u8>>>, deadline: u64, reply: oneshot::Sender<Result<(), usize>>, now: u64) {
        let (Some(exchange), Some(last)) = (&mut self.exchange, shipments.iter().map(|shipment| shipment.dot.clone()).max_by_key(|dot| dot.seq)) else {
            let _ = reply.send(Err(0));
            return;
        };
        exchange.handle(ExchangeEvent::FromDevice { writes: shipments }, now);
        self.wait_for_regions(last, 1, deadline, reply, now);
    }

    pub(super) fn status(&self, node: &Node) -> RegionStatus {
        let leaders = node.region_leaders.lock().expect("region leaders lock");
        let Some(exchange) = &self.exchange else { return RegionStatus::default() };
        let regions = exchange
            .peers()
            .map(|(region, holds)| {
                let heard = leaders.get(region).map(|(_, at)| at.elapsed().as_secs_f64() * 1000.0);
                (region.to_string(), holds.clone(), heard)
            })
            .collect();
        let behind_ms = self.behind_since.iter().map(|(region, since)| (region.clone(), since.elapsed().as_secs_f64() * 1000.0)).collect();
        RegionStatus { exchanging: true, holds: exchange.holds().clone(), regions, behind_ms, compacted: self.compacted.clone() }
    }

    /// After the replica loop handled events: starts or stops the exchange as this node
    /// gains or loses the right to write, hands in what the region committed and the
    /// timers that came due, and carries out the exchange's outputs.
    pub(super) fn drive(&mut self, node: &Node, replica: &Replica, now: u64) {
        let leading = replica.accepting_writes(now).is_ok();
        if !leading {
            if self.exchange.is_some() {
                self.restart("this node no longer leads its region");
            }
        } else if self.exchange.is_none() && !self.starting {
            self.starting = node.storage_send(StorageCommand::RegionHolds);
        }
        let committed = replica.commit_index().min(replica.last().index);
        while self.uncommitted.front().is_some_and(|(index, _)| *index <= committed) {
            let Some((_, dot)) = self.uncommitted.pop_front() else { break };
            if let Some(exchange) = &mut self.exchange {
                let event = if dot.region == node.config.region { ExchangeEvent::Committed { dot } } else { ExchangeEvent::Applied { dot } };
                exchange.handle(event, now);
            }
        }
        if self.uncommitted.len() > 1 << 20 {
            // Not leading and never committing: what the log holds is read afresh anyway.
            self.uncommitted.clear();
        }
        let Some(exchange) = &mut self.exchange else {
            // No exchange to count regions with: those past their deadline get what is
            // known, that this region holds the write.
            for (_, _, _, reply) in extract_expired(&mut self.early, now) {
                let _ = reply.send(Err(1));
            }
            return;
        };
        if exchange.poll_timeout().is_some_and(|deadline| deadline <= now) {
            exchange.handle(ExchangeEvent::Tick, now);
        }
        for (region, holds) in exchange.peers() {
            if holds.get(region) > exchange.holds().get(region) {
                self.behind_since.entry(region.to_string()).or_insert_with(Instant::now);
            } else {
                self.behind_since.remove(region);
            }
        }
        // Writes released together are applied in one transaction.
        let mut applies = Vec::new();
        while let Some(output) = exchange.poll_output() {
            match output {
                ExchangeOutput::Send { to, message } => send_to_region(node, &to, message),
                ExchangeOutput::Apply(shipment) => applies.push(shipment),
                ExchangeOutput::ReadWrites { to, origin, after, up_to } => match self.recent.range(&origin, after, up_to) {
                    Some(writes) => exchange.handle(ExchangeEvent::WritesRead { to, writes }, now),
                    None => {
                        node.storage_send(StorageCommand::ReadRegionWrites { to, origin, after, up_to });
                    }
                },
                ExchangeOutput::Reached { tag, result } => {
                    if let Some(waiter) = self.waiters.remove(&tag) {
                        let _ = waiter.send(result);
                    }
                }
            }
        }
        if !applies.is_empty() {
            node.storage_send(StorageCommand::ApplyRegionWrites { shipments: applies, epoch: replica.epoch() });
        }
        self.compact(node, replica.epoch());
    }

    /// Now and then: drops from the region log what every region holds, beyond the
    /// writes kept per origin (`--region-log-retain`). A region that has not told what it
    /// holds holds nothing as far as this one knows, so nothing it may need is dropped.
    fn compact(&mut self, node: &Node, epoch: u64) {
        let Some(exchange) = &self.exchange else { return };
        if self.next_compaction.is_some_and(|next| Instant::now() < next) {
            return;
        }
        self.next_compaction = Some(Instant::now() + COMPACT_EVERY);
        let retain = node.config.region_log_retain;
        let mut floors = Vec::new();
        for (origin, held) in exchange.holds().iter() {
            let everywhere = exchange.peers().map(|(_, holds)| holds.get(origin)).fold(held, u64::min);
            let floor = everywhere.saturating_sub(retain);
            if floor > self.compacted.get(origin).copied().unwrap_or(0) {
                floors.push((origin.to_string(), floor));
            }
        }
        if floors.is_empty() {
            return;
        }
        let (reply, _) = oneshot::channel();
        if node.storage_send(StorageCommand::RegionAdmin { change: RegionChange::CompactLog { floors: floors.clone() }, epoch, reply }) {
            tracing::debug!("compacting the region log through {floors:?}");
            self.compacted.extend(floors);
        }
    }
}

/// The region writes logged here most recently (own and applied), by origin: a shipment
/// of fresh writes is made from memory instead of a read through the busy storage thread.
#[derive(Default)]
struct RecentWrites {
    writes: BTreeMap<String, VecDeque<Shipment<Vec<u8>>>>,
    bytes: usize,
}

impl RecentWrites {
    /// Kept per origin, in stream order.
    const MAX_BYTES: usize = 64 << 20;
    const MAX_PER_ORIGIN: usize = 4096;

    fn keep(&mut self, write: Shipment<Vec<u8>>) {
        let stream = self.writes.entry(write.dot.region.clone()).or_default();
        if stream.back().is_some_and(|last| last.dot.seq + 1 != write.dot.seq) {
            // Not the next of its stream (a restart of the exchange, a rollback): start over.
            self.bytes -= stream.iter().map(|kept| kept.write.len()).sum::<usize>();
            stream.clear();
        }
        self.bytes += write.write.len();
        stream.push_back(write);
        while stream.len() > Self::MAX_PER_ORIGIN || (self.bytes > Self::MAX_BYTES && stream.len() > 1) {
            if let Some(dropped) = stream.pop_front() {
                self.bytes -= dropped.write.len();
            }
        }
    }

    /// `origin`'s writes `after + 1 ..= up_to`, if all of them are kept.
    fn range(&self, origin: &str, after: u64, up_to: u64) -> Option<Vec<Shipment<Vec<u8>>>> {
        let stream = self.writes.get(origin)?;
        let first = stream.front()?.dot.seq;
        let last = stream.back()?.dot.seq;
        if after + 1 < first || up_to > last || up_to <= after {
            return None;
        }
        let start = usize::try_from(after + 1 - first).ok()?;
        let count = usize::try_from(up_to - after).ok()?;
        Some(stream.iter().skip(start).take(count).cloned().collect())
    }
}

type EarlyWait = (Dot, usize, u64, oneshot::Sender<Result<(), usize>>);

fn extract_expired(waits: &mut Vec<EarlyWait>, now: u64) -> Vec<EarlyWait> {
    let (expired, kept) = std::mem::take(waits).into_iter().partition(|(_, _, deadline, _)| *deadline <= now);
    *waits = kept;
    expired
}

/// To the region's leader if one spoke lately, else to each of its nodes (only its leader
/// listens).
fn send_to_region(node: &Node, region: &str, message: RegionMessage<Vec<u8>>) {
    let leader =
        node.region_leaders.lock().expect("region leaders lock").get(region).filter(|(_, at)| at.elapsed() < LEADER_HINT_TTL).map(|(leader, _)| leader.clone());
    if let Some(leader) = leader {
        node.send_to(&leader, Frame::Region(message));
        return;
    }
    for (id, _) in node.remote_regions.iter().filter(|(_, of)| *of == region) {
        node.send_to(id, Frame::Region(message.clone()));
    }
}

impl Node {
    /// A node of `region` to send its writes to: the one that last spoke for it (its
    /// leader), else its first node.
    pub(crate) fn node_of_region(&self, region: &str) -> Option<String> {
        if let Some((leader, _)) = self.region_leaders.lock().expect("region leaders lock").get(region) {
            return Some(leader.clone());
        }
        self.remote_regions.iter().find(|(_, of)| *of == region).map(|(id, _)| id.clone())
    }

    /// Multi-leader: moves `table`'s row `key` to region `to`. The move is an update of the
    /// row's home column made at its current home (sent there from here), so the old home
    /// stops writing the row as it makes it, and `to` starts only once it holds it and
    /// every earlier write of the row; answered once every region holds the move. With the
    /// old home unreachable, the move cannot be made, and the answer says so.
    ///
    /// # Errors
    /// An unknown region, a table without a home rule, a key that fits no row (400/404).
    pub async fn move_home(&self, table: String, key: Vec<tern_storage::SqlValue>, to: String) -> Result<WriteReply, RequestError> {
        if !self.config.all_regions().contains(&to) {
            return Err(RequestError::new(400, format!("no region {to:?} in this cluster (regions: {})", self.config.all_regions().join(", "))));
        }
        let asked = (table.clone(), key.clone(), to.clone());
        let (statement, from) = self
            .with_reader(move |reader| reader.home_move(&table, &key, &to).map_err(|error| error.to_string()))
            .await
            .and_then(|made| made)
            .map_err(|error| RequestError::new(400, error))?;
        let (table, key, to) = asked;
        let id = self.next_forward_id.fetch_add(1, Ordering::Relaxed);
        self.moves.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(MoveInProgress { id, table, key, from, to, started: Instant::now() });
        let _listed = MoveListed { node: self, id };
        let request = WriteRequest { statements: vec![statement], transaction: false };
        let reply = self.write(request, None, Some(self.config.all_regions().len()), true).await;
        if reply.error.is_none() && reply.results.first().is_some_and(|result| result.error.is_none() && result.rows_affected == 0) {
            return Err(RequestError::new(404, "no row has that key: nothing was moved"));
        }
        Ok(reply)
    }

    /// Multi-leader: per homed table, how many rows each region is home to.
    ///
    /// # Errors
    /// If they cannot be read.
    pub async fn home_counts(&self) -> Result<Vec<(String, Vec<(Option<String>, u64)>)>, RequestError> {
        let counted = self.with_reader(|reader| reader.home_counts().map_err(|error| error.to_string())).await;
        counted.and_then(|counted| counted).map_err(|error| RequestError::new(500, error))
    }

    /// Whether `id` is a node of another region (multi-leader).
    pub(crate) fn is_remote_node(&self, id: &str) -> bool {
        self.remote_regions.contains_key(id)
    }

    /// The region of a node of another region, from the configuration.
    pub(crate) fn region_of_remote(&self, id: &str) -> Option<String> {
        self.remote_regions.get(id).cloned()
    }

    /// `w=regions:k`: holds a committed write's answer until `regions` regions hold it,
    /// or until the write timeout, when it says how many did (the write stays; it will
    /// reach the others).
    pub(super) async fn wait_for_regions(&self, mut reply: WriteReply, regions: usize) -> WriteReply {
        // A request that changed nothing is in no region's stream: nothing to wait for.
        let Some(dot) = reply.region_write.clone() else { return reply };
        if let Err(held) = self.regions_hold(&dot, regions).await {
            let message = format!(
                "write {dot} is committed in region {}, but {held} of the {regions} regions asked for (w=regions) held it within {} ms; \
                 it stays, and will reach the others when they are reachable",
                self.config.region,
                self.config.write_timeout.as_millis()
            );
            reply.error = Some(RequestError::new(503, message));
        }
        reply
    }

    /// Waits (up to the write timeout) until `regions` regions hold region write `dot`;
    /// else how many did.
    async fn regions_hold(&self, dot: &tern_core::multi_leader::Dot, regions: usize) -> Result<(), usize> {
        let (answer, answered) = oneshot::channel();
        let deadline = self.now_us() + self.config.write_timeout.as_micros() as u64;
        self.post(Event::WaitForRegions { dot: dot.clone(), regions, deadline, reply: answer });
        match answered.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(held)) => Err(held),
            Err(_) => Err(1),
        }
    }

    /// Multi-leader: a schema change may be made here only in the schema region, and only
    /// while every other region's leader is heard from (waiting a few seconds for one not
    /// heard yet), so that every region applies schema changes in one order and none is
    /// applied on one side of a partition only.
    ///
    /// # Errors
    /// Another region (400, naming the schema region), or a region unreachable (503).
    pub(super) async fn schema_change_allowed(&self) -> Result<(), RequestError> {
        let schema_region = self.config.schema_region();
        if self.config.region != schema_region {
            return Err(RequestError::new(
                400,
                format!(
                    "schema changes (CREATE, DROP, ALTER) are made in region {schema_region}, the first in --cluster, so that every region \
                     applies them in one order: send this one to a node of {schema_region}"
                ),
            ));
        }
        let deadline = Instant::now() + SCHEMA_WAIT;
        loop {
            let status = self.region_status().await.unwrap_or_default();
            let others = self.config.all_regions().into_iter().filter(|region| *region != self.config.region);
            let unreachable: Vec<String> = others
                .filter(|region| {
                    let heard = status.regions.iter().find(|(known, _, _)| known == region).and_then(|(_, _, heard)| *heard);
                    heard.is_none_or(|ms_ago| ms_ago > REACHABLE_WITHIN.as_secs_f64() * 1000.0)
                })
                .collect();
            if unreachable.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RequestError::new(
                    503,
                    format!(
                        "schema changes need every region reachable, and {} not heard from within {} ms: nothing was changed; retry once it is back",
                        unreachable.join(", "),
                        REACHABLE_WITHIN.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Multi-leader: what the exchange with the other regions stands at.
    pub async fn region_status(&self) -> Option<RegionStatus> {
        let (reply, answer) = oneshot::channel();
        self.post(Event::RegionStatus { reply });
        answer.await.ok()
    }

    /// Multi-leader: sets a policy or settles a conflict; this node must lead its region.
    ///
    /// # Errors
    /// Single-leader; not the region's leader (503, naming it); a change that does not
    /// fit the database (400).
    ///
    /// A home rule or a policy is answered once every region holds it: until a region
    /// does, it writes the table's rows as before (a homed row there as its own), so a
    /// client that starts writing on the answer could otherwise make the very conflicts
    /// the rule is for. (`tern lab --real`'s conflicts experiment found that window.)
    pub async fn region_change(&self, change: RegionChange) -> Result<Position, RequestError> {
        if self.config.topology != tern_core::Topology::MultiLeader {
            return Err(RequestError::new(400, "conflict policies and resolutions need --topology multi-leader"));
        }
        let published = self.published();
        if !published.accepting_writes {
            return Err(self.not_accepting(&published));
        }
        let rule = match &change {
            RegionChange::HomeRule { table, .. } => Some(format!("the home rule of {table}")),
            RegionChange::Policy { table, .. } => Some(format!("the conflict policy of {table}")),
            RegionChange::Resolve { .. } | RegionChange::CompactLog { .. } => None,
        };
        let (reply, answer) = oneshot::channel();
        if !self.storage_send(StorageCommand::RegionAdmin { change, epoch: published.epoch, reply }) {
            return Err(storage_gone());
        }
        let (position, dot) = answer.await.map_err(|_| storage_gone())??;
        let regions = self.config.all_regions().len();
        if let (Some(rule), Some(dot)) = (rule, dot) {
            if let Err(held) = self.regions_hold(&dot, regions).await {
                let message = format!(
                    "{rule} is in force in region {}, but only {held} of the {regions} regions held it within {} ms; a region \
                     without it writes the table as before until it arrives (it will, once that region is reachable)",
                    self.config.region,
                    self.config.write_timeout.as_millis()
                );
                return Err(RequestError::new(503, message));
            }
        }
        Ok(position)
    }

    /// Multi-leader: every row holding losing versions, per table.
    ///
    /// # Errors
    /// If the storage thread has stopped or cannot read them.
    pub async fn conflicts(&self) -> Result<Vec<tern_storage::TableConflicts>, RequestError> {
        // On a read-only connection: listing conflicts never waits behind writes.
        let listed = self.with_reader(|reader| reader.region_conflicts().map_err(|error| error.to_string())).await;
        listed.and_then(|listed| listed).map_err(|error| RequestError::new(500, error))
    }
}
