//! Device sync on a node (issue 15): a device pulls, from any node, the writes it lacks
//! (read from the region log on a read-only connection), and pushes its own writes to
//! its region's leader, whose exchange applies them in causal order and ships them on to
//! every region like any write the region holds. Both sides resume from their durable
//! per-origin cursors, so an interrupted sync costs a resend, never a write.

use super::*;
use tern_storage::engine::SyncPage;
use tern_storage::region_log::LoggedWrite;

/// The most writes one push may carry.
pub const MAX_PUSH_WRITES: usize = 10_000;

impl Node {
    fn devices_allowed(&self) -> Result<(), RequestError> {
        if self.config.topology != tern_core::Topology::MultiLeader {
            return Err(RequestError::new(400, "devices sync only with a multi-leader cluster (--topology multi-leader; one region is enough)"));
        }
        Ok(())
    }

    /// A page of the writes a device holding `holds` lacks, in an order it can apply them.
    ///
    /// # Errors
    /// Not multi-leader, or the database cannot be read.
    pub async fn device_pull(&self, holds: VersionVector, max_writes: usize, max_bytes: usize) -> Result<SyncPage, RequestError> {
        self.devices_allowed()?;
        let pulled = self.with_reader(move |reader| reader.sync_pull(&holds, max_writes, max_bytes).map_err(|error| error.to_string())).await;
        pulled.and_then(|page| page).map_err(|error| RequestError::new(500, error))
    }

    /// A consistent copy of this node's database, for a device that lacks writes the
    /// region log no longer keeps.
    ///
    /// # Errors
    /// Not multi-leader, or the copy cannot be made.
    pub async fn device_snapshot(&self) -> Result<Vec<u8>, RequestError> {
        self.devices_allowed()?;
        let database = self.config.data_dir.join(tern_storage::DATABASE_FILE);
        let target = self.config.data_dir.join(format!("device-snapshot-{}.db", self.next_forward_id.fetch_add(1, Ordering::Relaxed)));
        let made = tokio::task::spawn_blocking(move || {
            let made = tern_storage::write_logical_snapshot(&database, &target)
                .map_err(|error| error.to_string())
                .and_then(|_| std::fs::read(&target).map_err(|error| error.to_string()));
            let _ = std::fs::remove_file(&target);
            made
        })
        .await
        .map_err(|error| error.to_string())
        .and_then(|made| made);
        made.map_err(|error| RequestError::new(500, format!("cannot make a snapshot: {error}")))
    }

    /// Device `device`'s own writes, checked here and applied by its region's leader;
    /// answered once the region holds them all.
    pub async fn device_push(&self, device: String, writes: Vec<LoggedWrite>) -> WriteReply {
        let refused = |error: RequestError| WriteReply { results: Vec::new(), position: None, error: Some(error), region_write: None };
        if let Err(error) = self.devices_allowed() {
            return refused(error);
        }
        if self.config.all_regions().contains(&device) {
            return refused(RequestError::new(400, format!("{device} is a region of this cluster, not a device")));
        }
        if writes.len() > MAX_PUSH_WRITES {
            return refused(RequestError::new(413, format!("{} writes in one push, over the limit of {MAX_PUSH_WRITES}: push them in pages", writes.len())));
        }
        let checked = {
            let writes = writes.clone();
            self.with_reader(move |reader| reader.check_device_writes(&device, &writes).map_err(|error| error.to_string())).await
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return refused(RequestError::new(400, error)),
            Err(error) => return refused(RequestError::new(500, error)),
        }
        let published = self.published();
        match &published.leader {
            Some(leader) if *leader != self.config.id => {
                let wait = self.config.write_timeout + Duration::from_secs(5);
                let frame = |id| Frame::ForwardDevicePush { id, writes: writes.into_iter().map(|write| (write.dot, write.seen, write.payload)).collect() };
                match self.forward(&leader.clone(), wait, frame).await {
                    Some(ForwardReply::Write(reply)) => reply,
                    _ => refused(RequestError::new(503, format!("this region's leader {leader} did not answer the push in time: sync again"))),
                }
            }
            _ => self.device_push_here(writes).await,
        }
    }

    /// On the region's leader: into the exchange, and the answer once the region holds
    /// the last write (earlier ones first, by causal order).
    pub(crate) async fn device_push_here(&self, writes: Vec<LoggedWrite>) -> WriteReply {
        let mut reply = WriteReply { results: Vec::new(), position: None, error: None, region_write: None };
        let published = self.published();
        if !published.accepting_writes {
            reply.error = Some(self.not_accepting(&published));
            return reply;
        }
        if writes.is_empty() {
            return reply;
        }
        let shipments = writes.into_iter().map(|write| Shipment { dot: write.dot, seen: write.seen, write: write.payload }).collect();
        let (answer, answered) = oneshot::channel();
        let deadline = self.now_us() + self.config.write_timeout.as_micros() as u64;
        self.post(Event::DevicePush { shipments, deadline, reply: answer });
        if !matches!(answered.await, Ok(Ok(()))) {
            let message = format!(
                "the pushed writes are not all applied in region {} within {} ms (its leader is starting, or they wait for writes this region \
                 lacks, which the device saw elsewhere): sync again; nothing pushed is lost",
                self.config.region,
                self.config.write_timeout.as_millis()
            );
            reply.error = Some(RequestError::new(503, message));
        }
        reply
    }
}
