//! The load generator's message payload: who sent it, its sequence number, when, and a
//! checksum, so the checker can prove every message arrived once, in order, intact.
//!
//! ```text
//! magic "QLD1" | producer id u32 | seq u64 | send time ns u64 | crc32c u32 | filler
//! ```
//! The CRC covers everything but itself, filler included.

pub const HEADER_BYTES: usize = 28;
const MAGIC: &[u8; 4] = b"QLD1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Fills `buf` (of the wanted size, at least `HEADER_BYTES`) with a payload.
pub fn encode(buf: &mut [u8], stamp: Stamp) {
    debug_assert!(buf.len() >= HEADER_BYTES);
    buf[0..4].copy_from_slice(MAGIC);
    buf[4..8].copy_from_slice(&stamp.producer.to_le_bytes());
    buf[8..16].copy_from_slice(&stamp.seq.to_le_bytes());
    buf[16..24].copy_from_slice(&stamp.sent_ns.to_le_bytes());
    buf[24..28].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..24]), &buf[HEADER_BYTES..]);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// Checks and decodes a payload; `None` when it is not an intact load-generator message.
pub fn decode(buf: &[u8]) -> Option<Stamp> {
    if buf.len() < HEADER_BYTES || &buf[0..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(buf[24..28].try_into().ok()?);
    if crc32c::crc32c_append(crc32c::crc32c(&buf[..24]), &buf[HEADER_BYTES..]) != crc {
        return None;
    }
    Some(Stamp {
        producer: u32::from_le_bytes(buf[4..8].try_into().ok()?),
        seq: u64::from_le_bytes(buf[8..16].try_into().ok()?),
        sent_ns: u64::from_le_bytes(buf[16..24].try_into().ok()?),
    })
}

/// Wall-clock nanoseconds (producer and consumer share the machine's clock).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut buf = vec![7u8; 100];
        let stamp = Stamp { producer: 3, seq: 99, sent_ns: 12345 };
        encode(&mut buf, stamp);
        assert_eq!(decode(&buf), Some(stamp));
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 1;
            assert_eq!(decode(&b), None, "flip at {i}");
        }
        assert_eq!(decode(&buf[..50]), None);
    }
}
