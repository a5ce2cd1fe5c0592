//! Byte vectors serialized as one byte string instead of a sequence of numbers.
//!
//! serde's `Vec<u8>` goes through one serializer call per byte. In postcard, what the log
//! and the peer port speak, a byte string is encoded exactly as that sequence is (its
//! length, then the bytes), so both read the same bytes, but a byte string is copied
//! whole: a 54 MB entry of a 200,000-row insert was encoded and decoded a byte at a time
//! five times on its way (payload, frame to each follower, frame and payload on each),
//! and the followers, busy decoding behind it, missed enough heartbeats to elect a new
//! leader. In JSON both are arrays of numbers, and either is read back.
//!
//! Use with `#[serde(with = "tern_core::byte_buf")]` on a `Vec<u8>` field.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// # Errors
/// If the input holds neither a byte string nor a sequence of bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(ByteBufVisitor)
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    /// Formats that write bytes as a sequence (JSON's array of numbers).
    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Vec<u8>, A::Error> {
        // A length read from the input is not trusted for more than a bounded reservation.
        let mut bytes = Vec::with_capacity(sequence.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(byte) = sequence.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

/// `Vec<(u32, Vec<u8>)>` (numbered page images) with each image a byte string.
pub mod numbered {
    use super::*;
    use serde::{Deserialize, Serialize};

    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    #[derive(Deserialize)]
    struct Owned(#[serde(with = "super")] Vec<u8>);

    /// # Errors
    /// Those of the serializer.
    pub fn serialize<S: Serializer>(items: &[(u32, Vec<u8>)], serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(items.len()))?;
        for (number, bytes) in items {
            sequence.serialize_element(&(number, Bytes(bytes)))?;
        }
        sequence.end()
    }

    /// # Errors
    /// If the input is not such a sequence.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(u32, Vec<u8>)>, D::Error> {
        let items: Vec<(u32, Owned)> = Vec::deserialize(deserializer)?;
        Ok(items.into_iter().map(|(number, Owned(bytes))| (number, bytes)).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        number: u64,
        bytes: Vec<u8>,
        pages: Vec<(u32, Vec<u8>)>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Whole {
        number: u64,
        #[serde(with = "crate::byte_buf")]
        bytes: Vec<u8>,
        #[serde(with = "crate::byte_buf::numbered")]
        pages: Vec<(u32, Vec<u8>)>,
    }

    fn both(bytes: Vec<u8>) -> (Plain, Whole) {
        let pages = vec![(1, bytes.clone()), (7, Vec::new()), (300, vec![0, 255])];
        (Plain { number: 300, bytes: bytes.clone(), pages: pages.clone() }, Whole { number: 300, bytes, pages })
    }

    /// Entries logged and frames sent before the change read the same, and the other way round.
    #[test]
    fn postcard_bytes_are_those_of_a_sequence() {
        for length in [0, 1, 127, 128, 300, 70_000] {
            let (plain, whole) = both((0..length).map(|i| (i * 7 % 256) as u8).collect());
            let encoded = postcard::to_stdvec(&plain).unwrap();
            assert_eq!(postcard::to_stdvec(&whole).unwrap(), encoded, "length {length}");
            assert_eq!(postcard::from_bytes::<Whole>(&encoded).unwrap(), whole);
            let back: Plain = postcard::from_bytes(&postcard::to_stdvec(&whole).unwrap()).unwrap();
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn json_reads_and_writes_arrays_of_numbers() {
        let (plain, whole) = both(vec![0, 1, 255]);
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(serde_json::to_string(&whole).unwrap(), json);
        assert_eq!(serde_json::from_str::<Whole>(&json).unwrap(), whole);
        assert!(serde_json::from_str::<Whole>(r#"{"number":1,"bytes":[256],"pages":[]}"#).is_err());
    }

    #[test]
    fn a_truncated_or_lying_length_is_an_error() {
        let (_, whole) = both(vec![9; 1000]);
        let encoded = postcard::to_stdvec(&whole).unwrap();
        for cut in [1, 2, 3, 500, encoded.len() - 1] {
            assert!(postcard::from_bytes::<Whole>(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        // A length of 2^60 in front of three bytes.
        let lying = [1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 1, 2, 3];
        assert!(postcard::from_bytes::<Whole>(&lying).is_err());
    }
}
