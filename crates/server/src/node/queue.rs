//! rqlite's queued writes (`/db/execute?queue`): a request is accepted at once with a
//! sequence number, and one task per node writes the queue in order, merging what waits
//! into one request per batch (statements of a request without `transaction` stand alone,
//! so merging them changes nothing but the number of round trips). `wait` answers once
//! the batch holding the request was written.

use super::*;

/// Requests the queue holds at most; past it a queued write is refused (503).
const QUEUE_CAPACITY: usize = 1024;
/// Statements merged into one batch at most.
const BATCH_STATEMENTS: usize = 4096;

struct Queued {
    sequence: u64,
    statements: Vec<Statement>,
    requirement: Option<AckRequirement>,
    /// Told the batch's outcome (`wait`): `None` when it was written.
    done: Option<oneshot::Sender<Option<RequestError>>>,
}

pub(crate) struct WriteQueue {
    sender: mpsc::Sender<Queued>,
    next_sequence: AtomicU64,
}

impl Node {
    /// Queues a write (not a transaction): returns its sequence number, and a receiver of
    /// its batch's outcome when `wait` is asked.
    ///
    /// # Errors
    /// When the queue is full.
    pub fn enqueue(
        self: &Arc<Node>,
        statements: Vec<Statement>,
        requirement: Option<AckRequirement>,
        wait: bool,
    ) -> Result<(u64, Option<oneshot::Receiver<Option<RequestError>>>), RequestError> {
        let queue = self.write_queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(drain(Arc::downgrade(self), receiver));
            WriteQueue { sender, next_sequence: AtomicU64::new(1) }
        });
        let sequence = queue.next_sequence.fetch_add(1, Ordering::Relaxed);
        let (done, outcome) = if wait {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        queue.sender.try_send(Queued { sequence, statements, requirement, done }).map_err(|_| {
            RequestError::new(503, format!("this node's write queue holds {QUEUE_CAPACITY} requests, its limit: retry shortly, or write without ?queue"))
        })?;
        Ok((sequence, outcome))
    }
}

/// Writes the queue in order, a batch at a time, until the node is gone.
async fn drain(node: std::sync::Weak<Node>, mut receiver: mpsc::Receiver<Queued>) {
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => match receiver.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
        let requirement = first.requirement;
        let mut batch = vec![first];
        let mut statements = batch[0].statements.len();
        while statements < BATCH_STATEMENTS {
            match receiver.try_recv() {
                // One acknowledgement per batch: a request asking another starts the next one.
                Ok(queued) if queued.requirement != requirement => {
                    carried = Some(queued);
                    break;
                }
                Ok(queued) => {
                    statements += queued.statements.len();
                    batch.push(queued);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        let first_sequence = batch[0].sequence;
        let last_sequence = batch[batch.len() - 1].sequence;
        let mut request = WriteRequest { statements: Vec::with_capacity(statements), transaction: false };
        let mut waiters = Vec::new();
        for queued in batch {
            request.statements.extend(queued.statements);
            waiters.extend(queued.done);
        }
        let reply = node.write(request, requirement, None, true).await;
        drop(node);
        let failed = reply.results.iter().filter(|result| result.error.is_some()).count();
        if let Some(error) = &reply.error {
            tracing::warn!("queued writes {first_sequence}..={last_sequence} failed: {}", error.message);
        } else if failed > 0 {
            tracing::warn!("queued writes {first_sequence}..={last_sequence}: {failed} statements failed");
        }
        for waiter in waiters {
            let _ = waiter.send(reply.error.clone());
        }
    }
}
