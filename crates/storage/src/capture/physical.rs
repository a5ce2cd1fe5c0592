//! Tailing SQLite's write-ahead log on the leader, for the physical log format.
//!
//! SQLite appends each committed transaction to `<db>-wal` as frames (a 24-byte header
//! and one page image each); the last frame of a transaction records the database size
//! after the commit. The leader runs with `wal_autocheckpoint=0` and reads the frames of
//! each transaction right after its commit, checking that every frame carries the WAL
//! header's salts and continues the cumulative checksum, so a torn or stale frame is never
//! shipped. When SQLite restarts the WAL (after a checkpoint, new salts), tailing starts
//! again from the new header. Format: <https://www.sqlite.org/fileformat2.html#walformat>.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const HEADER_BYTES: u64 = 32;
const FRAME_HEADER_BYTES: u64 = 24;
const MAGIC_LITTLE_ENDIAN_CHECKSUMS: u32 = 0x377f_0682;
const MAGIC_BIG_ENDIAN_CHECKSUMS: u32 = 0x377f_0683;

/// The pages of one or more committed transactions, in commit order collapsed to the
/// last image of each page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub page_size: u32,
    /// Database size in pages after the last commit.
    pub database_pages: u32,
    pub pages: BTreeMap<u32, Vec<u8>>,
}

#[derive(Debug)]
struct Header {
    page_size: u32,
    big_endian_checksums: bool,
    salts: [u32; 2],
    checksum: [u32; 2],
}

/// Where tailing stands in the WAL file.
pub struct WalTail {
    path: PathBuf,
    /// Salts of the WAL generation being read; a different header means a restart.
    salts: Option<[u32; 2]>,
    /// Offset of the first frame not yet returned.
    offset: u64,
    /// Cumulative checksum up to `offset`.
    checksum: [u32; 2],
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("four bytes"))
}

/// SQLite's WAL checksum: over 32-bit words in pairs, seeded with `seed`.
fn checksum(big_endian: bool, data: &[u8], seed: [u32; 2]) -> [u32; 2] {
    let (mut s0, mut s1) = (seed[0], seed[1]);
    for pair in data.chunks_exact(8) {
        let word = |bytes: &[u8]| {
            let array: [u8; 4] = bytes.try_into().expect("four bytes");
            if big_endian {
                u32::from_be_bytes(array)
            } else {
                u32::from_le_bytes(array)
            }
        };
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    [s0, s1]
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    let magic = be32(&bytes[0..]);
    let big_endian_checksums = match magic {
        MAGIC_BIG_ENDIAN_CHECKSUMS => true,
        MAGIC_LITTLE_ENDIAN_CHECKSUMS => false,
        _ => return None,
    };
    let stored = [be32(&bytes[24..]), be32(&bytes[28..])];
    if checksum(big_endian_checksums, &bytes[..24], [0, 0]) != stored {
        return None;
    }
    Some(Header { page_size: be32(&bytes[8..]), big_endian_checksums, salts: [be32(&bytes[16..]), be32(&bytes[20..])], checksum: stored })
}

impl WalTail {
    pub fn new(database: &Path) -> WalTail {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        WalTail { path: PathBuf::from(path), salts: None, offset: HEADER_BYTES, checksum: [0, 0] }
    }

    /// Forget the position: the WAL was truncated or will be restarted.
    pub fn reset(&mut self) {
        self.salts = None;
        self.offset = HEADER_BYTES;
        self.checksum = [0, 0];
    }

    /// Reads every transaction committed since the last call. Frames after the last commit
    /// frame (a transaction still being written) are left for the next call.
    ///
    /// # Errors
    /// If the WAL cannot be read.
    pub fn read_committed(&mut self) -> std::io::Result<Option<Committed>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut header_bytes = [0u8; HEADER_BYTES as usize];
        if file.read_exact(&mut header_bytes).is_err() {
            return Ok(None);
        }
        let Some(header) = parse_header(&header_bytes) else { return Ok(None) };
        if self.salts != Some(header.salts) {
            // A new WAL generation: read it from its first frame.
            self.salts = Some(header.salts);
            self.offset = HEADER_BYTES;
            self.checksum = header.checksum;
        }
        let frame_bytes = FRAME_HEADER_BYTES + u64::from(header.page_size);
        file.seek(SeekFrom::Start(self.offset))?;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest)?;

        let mut committed = Committed { page_size: header.page_size, ..Committed::default() };
        let mut pending: Vec<(u32, &[u8])> = Vec::new();
        let mut running = self.checksum;
        let mut position = 0usize;
        // Bytes of `rest` up to the end of the last commit frame, and the checksum there.
        let mut consumed = None;
        while (position as u64) + frame_bytes <= rest.len() as u64 {
            let frame = &rest[position..position + frame_bytes as usize];
            let salts = [be32(&frame[8..]), be32(&frame[12..])];
            if salts != header.salts {
                break;
            }
            let mut next = checksum(header.big_endian_checksums, &frame[..8], running);
            next = checksum(header.big_endian_checksums, &frame[FRAME_HEADER_BYTES as usize..], next);
            if next != [be32(&frame[16..]), be32(&frame[20..])] {
                // Torn or left over from an older generation: the valid log ends here.
                break;
            }
            running = next;
            position += frame_bytes as usize;
            pending.push((be32(frame), &frame[FRAME_HEADER_BYTES as usize..]));
            let database_pages = be32(&frame[4..]);
            if database_pages != 0 {
                for (page, image) in pending.drain(..) {
                    committed.pages.insert(page, image.to_vec());
                }
                committed.database_pages = database_pages;
                committed.pages.retain(|page, _| *page <= database_pages);
                consumed = Some((position, running));
            }
        }
        let Some((bytes, checksum_there)) = consumed else { return Ok(None) };
        self.offset += bytes as u64;
        self.checksum = checksum_there;
        Ok(Some(committed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("tern-wal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        directory.join("data.db")
    }

    fn open(path: &Path) -> Connection {
        let connection = Connection::open(path).unwrap();
        connection.pragma_update(None, "journal_mode", "WAL").unwrap();
        connection.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        connection
    }

    #[test]
    fn each_commit_is_read_once_with_its_pages_and_size() {
        let path = scratch("commits");
        let connection = open(&path);
        let mut tail = WalTail::new(&path);
        connection.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        let first = tail.read_committed().unwrap().unwrap();
        assert_eq!(first.page_size, 4096);
        assert_eq!(first.database_pages, 2);
        assert!(first.pages.contains_key(&1) && first.pages.contains_key(&2));
        assert_eq!(tail.read_committed().unwrap(), None, "nothing new");
        connection.execute_batch("INSERT INTO t VALUES ('x')").unwrap();
        let second = tail.read_committed().unwrap().unwrap();
        assert_eq!(second.pages.keys().copied().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_restarted_wal_is_followed_from_its_new_header() {
        let path = scratch("restart");
        let connection = open(&path);
        let mut tail = WalTail::new(&path);
        connection.execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a');").unwrap();
        tail.read_committed().unwrap().unwrap();
        connection.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(())).unwrap();
        // The next writer restarts the WAL from the start with new salts.
        connection.execute_batch("INSERT INTO t VALUES ('b')").unwrap();
        let after = tail.read_committed().unwrap().unwrap();
        assert_eq!(after.pages.keys().copied().collect::<Vec<_>>(), vec![2]);
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        tail.reset();
        connection.execute_batch("INSERT INTO t VALUES ('c')").unwrap();
        assert_eq!(tail.read_committed().unwrap().unwrap().pages.len(), 1);
    }

    #[test]
    fn checksums_match_sqlites() {
        // Frames SQLite wrote are accepted, and a flipped byte is not.
        let path = scratch("checksum");
        let connection = open(&path);
        connection.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        let wal = format!("{}-wal", path.display());
        let mut bytes = std::fs::read(&wal).unwrap();
        assert!(parse_header(&bytes[..32]).is_some());
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&wal, &bytes).unwrap();
        let mut tail = WalTail::new(&path);
        let read = tail.read_committed().unwrap();
        assert!(read.is_none() || read.unwrap().database_pages == 0, "a corrupted commit frame must not be shipped");
    }
}
