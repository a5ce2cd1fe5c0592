//! Node-to-node frames: a little-endian `u32` length, then a postcard-encoded [`Frame`].

use serde::{Deserialize, Serialize};
use tern_core::multi_leader::{Dot, RegionMessage};
use tern_core::{AckRequirement, Message, NodeId, Position, Preference, ReadLevel, Topology};
use tern_storage::{Statement, StatementResult, WriteRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Frames larger than this are refused (snapshot chunks and appends stay far below).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub id: NodeId,
    pub region: String,
    pub http_addr: String,
    /// Where the sender listens for peers: a node that is joining answers there before
    /// the membership has told it anyone's address.
    pub peer_addr: String,
    /// The sender's topology: a node of another topology is refused.
    pub topology: Topology,
    /// The sender's leader priority and whether it votes (`/nodes` shows them).
    pub preference: Preference,
}

/// The outcome of a write, as the HTTP layer reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteReply {
    pub results: Vec<StatementResult>,
    /// Set when the request changed something and was acknowledged as asked.
    pub position: Option<Position>,
    /// Set when the request as a whole failed (not per statement): not leader, timeout.
    pub error: Option<RequestError>,
    /// Multi-leader: the write of the region's stream that holds this request's changes.
    pub region_write: Option<Dot>,
}

/// A failure of a whole request, with the HTTP status it maps to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestError {
    pub status: u16,
    pub message: String,
    /// Known leader, for clients to retry against.
    pub leader: Option<NodeId>,
    /// Multi-leader: the request writes rows homed in this region, which alone writes them.
    pub home: Option<String>,
}

impl RequestError {
    pub fn new(status: u16, message: impl Into<String>) -> RequestError {
        RequestError { status, message: message.into(), leader: None, home: None }
    }

    /// A request undone because its rows' home is `region` (409).
    pub fn homed_in(region: &str) -> RequestError {
        let message = format!("this request writes rows whose home is region {region}: only {region} writes them; send it to a node of {region}");
        RequestError { home: Some(region.to_string()), ..RequestError::new(409, message) }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadReply {
    pub results: Vec<StatementResult>,
    pub error: Option<RequestError>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    Replica(Message),
    ForwardWrite {
        id: u64,
        request: WriteRequest,
        requirement: Option<AckRequirement>,
        /// Multi-leader (`w=regions:k`): answer once this many regions hold the write.
        regions: Option<usize>,
        /// Multi-leader: sent on by another region to this region, the rows' home; not sent
        /// on again.
        to_home: bool,
        /// The user the forwarding node served it for (`--auth`): the receiver checks that
        /// user's permission in its own file. `None`: no login (no `--auth` there, or the
        /// node's own work), trusted as the authenticated peer's.
        user: Option<String>,
    },
    ForwardWriteReply {
        id: u64,
        reply: WriteReply,
    },
    ForwardRead {
        id: u64,
        statements: Vec<Statement>,
        level: ReadLevel,
        /// As `ForwardWrite`'s.
        user: Option<String>,
    },
    ForwardReadReply {
        id: u64,
        reply: ReadReply,
    },
    /// Device sync: a device's own writes, pushed to a follower, for its region's leader
    /// (answered with a `ForwardWriteReply`).
    ForwardDevicePush {
        id: u64,
        writes: Vec<(tern_core::multi_leader::Dot, tern_core::multi_leader::VersionVector, Vec<u8>)>,
    },
    /// Multi-leader: from one region's leader to another region's (writes, cursors).
    Region(RegionMessage<Vec<u8>>),
    /// Leaderless: everything nodes say to each other.
    Leaderless(crate::leaderless::LeaderlessFrame),
    /// A piece of a snapshot file; `done` on the last one, which names its position.
    /// `rollback_after`: the receiver's log diverged after that index (see
    /// `Output::SendSnapshot`).
    SnapshotChunk {
        offset: u64,
        #[serde(with = "tern_core::byte_buf")]
        bytes: Vec<u8>,
        done: Option<Position>,
        rollback_after: Option<u64>,
    },
}

/// # Errors
/// On a socket error.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(writer: &mut W, frame: &Frame) -> std::io::Result<()> {
    let encode = || postcard::to_stdvec(frame).expect("encoding a frame to memory cannot fail");
    let bytes = if entry_bytes(frame) > OFF_THE_WORKER_BYTES { crate::blocking(encode) } else { encode() };
    writer.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    writer.write_all(&bytes).await
}

/// `Ok(None)` on a clean end of stream.
///
/// # Errors
/// On a socket error, an oversized frame or undecodable bytes.
pub async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R, buffer: &mut Vec<u8>) -> std::io::Result<Option<Frame>> {
    read_frame_up_to(reader, buffer, MAX_FRAME_BYTES).await
}

/// A `Hello` is small: a connection's first frame may not be larger than this, so an
/// unknown client cannot make a node allocate a full-size frame before saying who it is.
pub const MAX_HELLO_BYTES: usize = 64 << 10;

/// `read_frame` with a lower size limit.
///
/// # Errors
/// As `read_frame`.
pub async fn read_frame_up_to<R: AsyncReadExt + Unpin>(reader: &mut R, buffer: &mut Vec<u8>, max_bytes: usize) -> std::io::Result<Option<Frame>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > max_bytes {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("peer frame of {length} bytes is over the limit")));
    }
    // Grow the buffer with the bytes that actually arrive: a peer that announces a large
    // frame and sends nothing costs no memory.
    buffer.clear();
    let received = reader.take(length as u64).read_to_end(buffer).await?;
    if received < length {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("peer frame cut off after {received} of {length} bytes")));
    }
    let decode = || {
        postcard::from_bytes(buffer).map(Some).map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("undecodable peer frame: {error}")))
    };
    if length > OFF_THE_WORKER_BYTES {
        crate::blocking(decode)
    } else {
        decode()
    }
}

/// Frames larger than this are encoded and decoded off the async worker: copying 100 MB
/// takes a worker for a tenth of a second or more here, and with two workers the replica
/// loop, and the heartbeats it sends, waited behind two such copies.
const OFF_THE_WORKER_BYTES: usize = 1 << 20;

/// The bytes of log entries a frame carries (the bulk of any large frame).
fn entry_bytes(frame: &Frame) -> usize {
    match frame {
        Frame::Replica(Message::Append { entries, .. }) => entries.iter().map(|entry| entry.payload.len()).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8], max_bytes: usize) -> Vec<std::io::Result<Option<Frame>>> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let mut reader = bytes;
            let mut buffer = Vec::new();
            let mut outcomes = Vec::new();
            loop {
                let outcome = read_frame_up_to(&mut reader, &mut buffer, max_bytes).await;
                let stop = !matches!(outcome, Ok(Some(_)));
                outcomes.push(outcome);
                if stop {
                    return outcomes;
                }
            }
        })
    }

    #[test]
    fn a_frame_round_trips_and_an_oversized_or_cut_one_is_an_error() {
        let frame = Frame::Hello(Hello {
            id: "n1".into(),
            region: "antarctica".into(),
            http_addr: "127.0.0.1:1".into(),
            peer_addr: "127.0.0.1:2".into(),
            topology: Topology::MultiLeader,
            preference: Preference { leader_priority: 0, voter: false, yielding: true },
        });
        let mut bytes = Vec::new();
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(write_frame(&mut bytes, &frame)).unwrap();
        let outcomes = read_all(&bytes, MAX_HELLO_BYTES);
        assert!(matches!(&outcomes[0], Ok(Some(Frame::Hello(hello))) if hello.region == "antarctica"));
        assert!(matches!(outcomes[1], Ok(None)), "a clean end of stream");
        let announced_huge = (u32::MAX).to_le_bytes();
        assert!(read_all(&announced_huge, MAX_FRAME_BYTES)[0].as_ref().is_err_and(|error| error.to_string().contains("over the limit")));
        let cut = [&bytes[..4], &bytes[4..8]].concat();
        assert!(read_all(&cut, MAX_FRAME_BYTES)[0].as_ref().is_err_and(|error| error.to_string().contains("cut off")));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes from a peer: frames, a clean end, or an error; never a panic.
        #[test]
        fn any_bytes_from_a_peer_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_all(&bytes, MAX_FRAME_BYTES);
            let _ = postcard::from_bytes::<Frame>(&bytes);
        }

        /// A well-formed length in front of arbitrary bytes reaches the decoder itself.
        #[test]
        fn any_body_behind_a_valid_length_decodes_or_is_refused(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let outcomes = read_all(&bytes, MAX_FRAME_BYTES);
            prop_assert!(!outcomes.is_empty());
        }
    }
}
