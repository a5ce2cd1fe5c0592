//! The write path: admission control, forwarding from followers to the leader, membership and leadership changes.

use super::*;

/// How many times a request follows its rows' home before it is refused (a row moved
/// while the request travelled; each move is rare, so more hops mean a key moving
/// back and forth faster than a request crosses regions).
const HOME_HOPS: usize = 3;

impl Node {
    /// Executes a write on the leader (forwarding it there from a follower) and waits
    /// for the acknowledgement the request asked for.
    /// Multi-leader: with `regions`, the answer waits until that many regions hold the
    /// write (`w=regions:k`).
    ///
    /// Multi-leader, with `to_home`: a request whose rows are homed in another region is
    /// sent on to that region and answered from there (else it is refused with a 409).
    ///
    /// A row may move while its request travels: the region sent to then names the new
    /// home, and the request follows it, up to [`HOME_HOPS`] times (nothing was written
    /// on the way: a region that is not a row's home undoes the request).
    pub async fn write(&self, request: WriteRequest, requirement: Option<AckRequirement>, regions: Option<usize>, to_home: bool) -> WriteReply {
        let started = Instant::now();
        let ack = if regions.is_some() { "regions" } else { crate::metrics::ack_label(requirement.unwrap_or(self.config.ack.requirement())) };
        let reply = self.write_following_home(request, requirement, regions, to_home).await;
        let failed = reply.results.iter().any(|result| result.error.is_some());
        crate::metrics::write_answered(&self.config.id, ack, crate::metrics::outcome(reply.error.as_ref(), failed), started.elapsed());
        reply
    }

    async fn write_following_home(&self, request: WriteRequest, requirement: Option<AckRequirement>, regions: Option<usize>, to_home: bool) -> WriteReply {
        let multi_leader = self.config.topology == tern_core::Topology::MultiLeader;
        let kept = (to_home && multi_leader).then(|| request.clone());
        let mut reply = self.write_in_region(request, requirement, regions).await;
        let Some(request) = kept else { return reply };
        for _ in 0..HOME_HOPS {
            let Some(home) = reply.error.as_ref().and_then(|error| error.home.clone()) else { break };
            reply = if home == self.config.region {
                // The row moved here while the request was on its way: this region may
                // have applied the move by now.
                self.write_in_region(request.clone(), requirement, regions).await
            } else {
                self.write_at_home(&home, request.clone(), requirement, regions).await
            };
        }
        reply
    }

    /// Sends a request to `home`, the region its rows' home is, and waits for its answer.
    async fn write_at_home(&self, home: &str, request: WriteRequest, requirement: Option<AckRequirement>, regions: Option<usize>) -> WriteReply {
        let Some(target) = self.node_of_region(home) else {
            return WriteReply { results: Vec::new(), position: None, error: Some(RequestError::homed_in(home)), region_write: None };
        };
        let wait = self.config.write_timeout * 2 + Duration::from_secs(5);
        let user = crate::auth::acting_user();
        match self.forward_to(&target, wait, false, |id| Frame::ForwardWrite { id, request, requirement, regions, to_home: true, user }).await {
            Some(ForwardReply::Write(reply)) => reply,
            _ => {
                let message = format!("region {home}, this request's rows' home, did not answer in time: its outcome is unknown");
                WriteReply { results: Vec::new(), position: None, error: Some(RequestError::new(503, message)), region_write: None }
            }
        }
    }

    /// In this node's region: here if it leads, else at its region's leader.
    pub(crate) async fn write_in_region(&self, request: WriteRequest, requirement: Option<AckRequirement>, regions: Option<usize>) -> WriteReply {
        let published = self.published();
        let leader = match &published.leader {
            Some(leader) if *leader != self.config.id => leader.clone(),
            _ => return self.write_local(request, requirement, regions).await,
        };
        let wait = self.config.write_timeout * if regions.is_some() { 2 } else { 1 } + Duration::from_secs(5);
        let user = crate::auth::acting_user();
        match self.forward(&leader, wait, |id| Frame::ForwardWrite { id, request, requirement, regions, to_home: false, user }).await {
            Some(ForwardReply::Write(reply)) => reply,
            _ => {
                let mut error = RequestError::new(503, format!("leader {leader} did not answer the forwarded write in time: its outcome is unknown"));
                error.leader = Some(leader);
                WriteReply { results: Vec::new(), position: None, error: Some(error), region_write: None }
            }
        }
    }

    /// Why this node cannot start a write now, for a 503: the leader to go to, or that
    /// an election is under way.
    pub(super) fn not_accepting(&self, published: &Published) -> RequestError {
        let mut error = match &published.leader {
            Some(leader) if *leader != self.config.id => RequestError::new(503, tern_core::single_leader::not_leader(Some(leader))),
            Some(_) => RequestError::new(503, "this node leads but cannot confirm its lease with a majority: retry shortly"),
            None => RequestError::new(503, tern_core::single_leader::not_leader(None)),
        };
        error.leader = published.leader.clone().filter(|leader| *leader != self.config.id);
        error
    }

    /// Sends a request frame to `leader` and waits up to `wait` for the matching reply
    /// frame (`None` if none came; the request's outcome is then unknown).
    pub(super) async fn forward(&self, leader: &str, wait: Duration, frame: impl FnOnce(u64) -> Frame) -> Option<ForwardReply> {
        self.forward_to(leader, wait, true, frame).await
    }

    /// Sends a request frame to node `to` and waits up to `wait` for its reply; with
    /// `follows`, `to` is this node's leader, and the wait ends as soon as it is not.
    pub(super) async fn forward_to(&self, to: &str, wait: Duration, follows: bool, frame: impl FnOnce(u64) -> Frame) -> Option<ForwardReply> {
        let id = self.next_forward_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.forwards.lock().expect("forwards lock").insert(id, tx);
        // Unregistered however this ends: the reply came, the wait ran out, or the caller
        // stopped waiting (a client's own `timeout=`).
        let _slot = ForwardSlot { forwards: &self.forwards, id };
        self.send_to(to, frame(id));
        // Give up as soon as this node stops following that leader (it died or was
        // replaced): the client hears "outcome unknown" now, not after the timeout.
        let mut watcher = self.published.clone();
        let leader_gone = async {
            if follows {
                let _ = watcher.wait_for(|published| published.leader.as_deref() != Some(to)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            reply = tokio::time::timeout(wait, rx) => reply.ok().and_then(Result::ok),
            () = leader_gone => None,
        }
    }

    pub(crate) async fn write_local(&self, request: WriteRequest, requirement: Option<AckRequirement>, regions: Option<usize>) -> WriteReply {
        let published = self.published();
        if !published.accepting_writes {
            return WriteReply { results: Vec::new(), position: None, error: Some(self.not_accepting(&published)), region_write: None };
        }
        let mut regions = regions;
        if self.config.topology == tern_core::Topology::MultiLeader && tern_storage::changes_schema(&request) {
            if let Err(error) = self.schema_change_allowed().await {
                return WriteReply { results: Vec::new(), position: None, error: Some(error), region_write: None };
            }
            // Answered once every region has it: no region writes to a table another lacks.
            regions = Some(regions.unwrap_or(self.config.all_regions().len()));
        }
        let requirement = requirement.unwrap_or(self.config.ack.requirement());
        let members = published.membership.voters.len();
        if let AckRequirement::Nodes(requested) = requirement {
            if requested > members {
                let message = WriteError::Unsatisfiable { requested, members }.to_string();
                return WriteReply { results: Vec::new(), position: None, error: Some(RequestError::new(400, message)), region_write: None };
            }
        }
        // Admission control: past this many writes in flight, refuse new ones at once
        // rather than queue them without bound.
        let pending = PendingCount::enter(&self.pending_writes);
        if pending.count > MAX_PENDING_WRITES {
            let message = format!("this node has {} writes in flight, over its limit of {MAX_PENDING_WRITES}: retry shortly", pending.count - 1);
            return WriteReply { results: Vec::new(), position: None, error: Some(RequestError::new(503, message)), region_write: None };
        }
        let (reply, rx) = oneshot::channel();
        if !self.storage_send(StorageCommand::Execute { request, requirement, epoch: published.epoch, reply }) {
            return WriteReply { results: Vec::new(), position: None, error: Some(storage_gone()), region_write: None };
        }
        let reply = rx.await.unwrap_or_else(|_| WriteReply { results: Vec::new(), position: None, error: Some(storage_gone()), region_write: None });
        match regions {
            Some(regions) if reply.error.is_none() => self.wait_for_regions(reply, regions).await,
            _ => reply,
        }
    }

    // ---- reads ----

    /// Asks this node, which must lead, to hand leadership to `to`.
    ///
    /// # Errors
    /// Why it cannot (not the leader, unknown node, failover off).
    pub async fn transfer_leadership(&self, to: String) -> Result<(), RequestError> {
        self.ask_leader(
            |reply| Event::TransferLeader { to, reply },
            |error| match error {
                TransferError::NotLeader { leader } => (503, leader.clone()),
                TransferError::FailoverOff | TransferError::NotAnotherMember { .. } | TransferError::NeverLeads { .. } => (400, None),
                TransferError::NotHeardFrom { .. } => (503, None),
            },
        )
        .await
    }

    /// Asks this node, which must lead, to add or remove a member. Returns once raft has
    /// the proposal; the change applies when a quorum agrees (watch `/cluster`).
    ///
    /// # Errors
    /// Why it cannot (not the leader, a change already under way, nonsense request).
    pub async fn change_membership(&self, request: MembershipRequest) -> Result<(), RequestError> {
        self.ask_leader(
            |reply| Event::ChangeMembership { request, reply },
            |error| match error {
                MembershipError::NotLeader { leader } => (503, leader.clone()),
                MembershipError::ChangePending => (503, None),
                MembershipError::FailoverOff | MembershipError::BadName { .. } => (400, None),
                MembershipError::AlreadyMember { .. }
                | MembershipError::NotMember { .. }
                | MembershipError::RemovingLeader { .. }
                | MembershipError::LastVoter { .. } => (409, None),
            },
        )
        .await
    }

    /// Posts a leader-only request to the replica loop and turns the core's refusal into
    /// an HTTP error: `status_of` gives its status and the leader to name, if any.
    pub(super) async fn ask_leader<E: std::fmt::Display>(
        &self,
        event: impl FnOnce(oneshot::Sender<Result<(), E>>) -> Event,
        status_of: impl FnOnce(&E) -> (u16, Option<String>),
    ) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.post(event(reply));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                let (status, leader) = status_of(&error);
                let mut request_error = RequestError::new(status, error.to_string());
                request_error.leader = leader;
                Err(request_error)
            }
            Err(_) => Err(RequestError::new(503, "replica loop stopped")),
        }
    }
}

/// A forwarded request's entry in `Node::forwards`, removed when its wait ends.
struct ForwardSlot<'node> {
    forwards: &'node Mutex<HashMap<u64, oneshot::Sender<ForwardReply>>>,
    id: u64,
}

impl Drop for ForwardSlot<'_> {
    fn drop(&mut self) {
        self.forwards.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.id);
    }
}

/// Most writes a node holds in flight (executing or waiting for acknowledgements).
pub(super) const MAX_PENDING_WRITES: usize = 16_384;

/// One write counted in flight until dropped.
pub(super) struct PendingCount<'counter> {
    pub(super) counter: &'counter AtomicUsize,
    /// How many were in flight with this one.
    pub(super) count: usize,
}

impl<'counter> PendingCount<'counter> {
    pub(super) fn enter(counter: &'counter AtomicUsize) -> PendingCount<'counter> {
        PendingCount { counter, count: counter.fetch_add(1, Ordering::AcqRel) + 1 }
    }
}

impl Drop for PendingCount<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}
