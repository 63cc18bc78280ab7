//! Frames: the unit on the wire, for client requests, responses and node-to-node traffic.
//!
//! ```text
//! off size field
//!   0   4  magic "QRRA"
//!   4   1  version (1)
//!   5   1  flags: bit 0 response, bit 1 error response
//!   6   2  kind (see `ApiKind`)
//!   8   8  correlation id (chosen by the requester, echoed in the response)
//!  16   4  archive_len: bytes of the rkyv archive that follows the header
//!  20   4  payload_len: bytes of raw payload (record batches) after the archive
//!  24   4  body CRC32C over archive ++ payload
//!  28   4  header CRC32C over bytes [0, 28)
//! ```
//!
//! The header CRC lets a receiver reject garbage before trusting the length fields (a corrupt
//! length would otherwise make it wait for bytes that never come). The archive is read into a
//! 16-byte-aligned buffer and validated with bytecheck before use; the payload carries record
//! batches as raw bytes, each with its own CRC, so they are never re-encoded.

use bytes::Bytes;
use rkyv::util::AlignedVec;
use thiserror::Error;

use crate::limits::{FRAME_HEADER_BYTES, MAX_ARCHIVE_BYTES};

pub const FRAME_MAGIC: [u8; 4] = *b"QRRA";
pub const PROTOCOL_VERSION: u8 = 1;
pub const FLAG_RESPONSE: u8 = 0b01;
pub const FLAG_ERROR: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_RESPONSE | FLAG_ERROR;

/// Buffer type of frame bodies: aligned so that the archive at its start can be accessed in place.
pub type BodyBuf = AlignedVec<16>;

/// Why a frame was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("frame header CRC mismatch")]
    HeaderCrc,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("archive of {0} bytes exceeds the limit")]
    ArchiveTooLarge(u32),
    #[error("frame body CRC mismatch")]
    BodyCrc,
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub flags: u8,
    pub kind: u16,
    pub correlation_id: u64,
    pub archive_len: u32,
    pub payload_len: u32,
    pub body_crc: u32,
}

impl FrameHeader {
    /// Total body bytes (archive and payload).
    pub fn body_len(&self) -> usize {
        self.archive_len as usize + self.payload_len as usize
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Encodes the header; the header CRC is computed here.
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4] = PROTOCOL_VERSION;
        h[5] = self.flags;
        h[6..8].copy_from_slice(&self.kind.to_le_bytes());
        h[8..16].copy_from_slice(&self.correlation_id.to_le_bytes());
        h[16..20].copy_from_slice(&self.archive_len.to_le_bytes());
        h[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        h[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header; `max_frame_bytes` bounds header + body.
    pub fn decode(h: &[u8; FRAME_HEADER_BYTES], max_frame_bytes: usize) -> Result<FrameHeader, FrameError> {
        let magic: [u8; 4] = h[0..4].try_into().expect("4 bytes");
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let stored_crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
        if crc32c::crc32c(&h[0..28]) != stored_crc {
            return Err(FrameError::HeaderCrc);
        }
        if h[4] != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(h[4]));
        }
        if h[5] & !KNOWN_FLAGS != 0 {
            return Err(FrameError::BadFlags(h[5]));
        }
        let header = FrameHeader {
            flags: h[5],
            kind: u16::from_le_bytes([h[6], h[7]]),
            correlation_id: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            archive_len: u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")),
            payload_len: u32::from_le_bytes(h[20..24].try_into().expect("4 bytes")),
            body_crc: u32::from_le_bytes(h[24..28].try_into().expect("4 bytes")),
        };
        if header.archive_len as usize > MAX_ARCHIVE_BYTES {
            return Err(FrameError::ArchiveTooLarge(header.archive_len));
        }
        let size = FRAME_HEADER_BYTES as u64 + header.archive_len as u64 + header.payload_len as u64;
        if size > max_frame_bytes as u64 {
            return Err(FrameError::TooLarge { size, limit: max_frame_bytes });
        }
        Ok(header)
    }
}

/// A received frame whose header and body CRC have been checked.
pub struct Frame {
    pub header: FrameHeader,
    body: BodyBuf,
    /// Not on the wire: set by the server when the frame came over a node-to-node link
    /// (the connection began with a valid hello), i.e. from another node of the cluster.
    pub from_node: Option<u32>,
    /// Not on the wire: the user the connection authenticated as (client authentication).
    pub principal: Option<std::sync::Arc<str>>,
    /// Not on the wire: how long the connection's reader held this request back (quotas).
    pub throttle_ms: u32,
}

impl Frame {
    /// Checks the body against the header's CRC and wraps it.
    pub fn from_parts(header: FrameHeader, body: BodyBuf) -> Result<Frame, FrameError> {
        debug_assert_eq!(body.len(), header.body_len());
        if crc32c::crc32c(&body) != header.body_crc {
            return Err(FrameError::BodyCrc);
        }
        Ok(Frame { header, body, from_node: None, principal: None, throttle_ms: 0 })
    }

    /// A request made inside the broker (the Kafka listener's, one per partition): the
    /// archive followed by `payload`, with its body CRC, as if it had been read.
    pub fn local(kind: u16, correlation_id: u64, archive: &[u8], payload: &[u8]) -> Frame {
        let mut body = BodyBuf::with_capacity(archive.len() + payload.len());
        body.extend_from_slice(archive);
        body.extend_from_slice(payload);
        let header = FrameHeader {
            flags: 0,
            kind,
            correlation_id,
            archive_len: archive.len() as u32,
            payload_len: payload.len() as u32,
            body_crc: crc32c::crc32c(&body),
        };
        Frame { header, body, from_node: None, principal: None, throttle_ms: 0 }
    }

    /// The rkyv archive, 16-byte aligned.
    pub fn archive(&self) -> &[u8] {
        &self.body[..self.header.archive_len as usize]
    }

    /// The raw payload after the archive.
    pub fn payload(&self) -> &[u8] {
        &self.body[self.header.archive_len as usize..]
    }

    /// The payload, mutable (the leader stamps offsets into record batches in place).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header.archive_len as usize;
        &mut self.body[start..]
    }

    /// Turns the frame into a shared byte buffer of its payload, without copying.
    pub fn into_payload(self) -> Bytes {
        let start = self.header.archive_len as usize;
        let end = self.body.len();
        Bytes::from_owner(OwnedBody(self.body)).slice(start..end)
    }
}

/// Lets an aligned body be owned by a [`Bytes`].
struct OwnedBody(BodyBuf);

impl AsRef<[u8]> for OwnedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A frame ready to be written: header, archive and payload chunks, never concatenated.
pub struct OutFrame {
    pub header: [u8; FRAME_HEADER_BYTES],
    pub archive: BodyBuf,
    pub payload: Vec<Bytes>,
}

impl OutFrame {
    /// Builds a frame and computes both CRCs.
    pub fn new(kind: u16, flags: u8, correlation_id: u64, archive: BodyBuf, payload: Vec<Bytes>) -> OutFrame {
        let mut crc = crc32c::crc32c(&archive);
        let mut payload_len: usize = 0;
        for chunk in &payload {
            crc = crc32c::crc32c_append(crc, chunk);
            payload_len += chunk.len();
        }
        let header = FrameHeader {
            flags,
            kind,
            correlation_id,
            archive_len: archive.len() as u32,
            payload_len: payload_len as u32,
            body_crc: crc,
        };
        OutFrame { header: header.encode(), archive, payload }
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.header.len() + self.archive.len() + self.payload.iter().map(Bytes::len).sum::<usize>()
    }

    /// Appends the whole frame to `out` (tests, fuzzing and small-frame coalescing).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.archive);
        for chunk in &self.payload {
            out.extend_from_slice(chunk);
        }
    }
}

/// Parses one complete frame from the start of `bytes` (tests and fuzzing; the network code
/// reads header and body separately). Returns the frame and the bytes it used.
pub fn parse_frame(bytes: &[u8], max_frame_bytes: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let header = FrameHeader::decode(bytes[..FRAME_HEADER_BYTES].try_into().expect("header"), max_frame_bytes)?;
    let end = FRAME_HEADER_BYTES + header.body_len();
    if bytes.len() < end {
        return Ok(None);
    }
    let mut body = BodyBuf::with_capacity(header.body_len());
    body.extend_from_slice(&bytes[FRAME_HEADER_BYTES..end]);
    Ok(Some((Frame::from_parts(header, body)?, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(archive: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut a = BodyBuf::new();
        a.extend_from_slice(archive);
        let f = OutFrame::new(6, 0, 99, a, vec![Bytes::copy_from_slice(payload)]);
        let mut out = Vec::new();
        f.write_to(&mut out);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sample(b"0123456789abcdef", b"payload");
        let (f, used) = parse_frame(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.header.kind, 6);
        assert_eq!(f.header.correlation_id, 99);
        assert_eq!(f.archive(), b"0123456789abcdef");
        assert_eq!(f.payload(), b"payload");
        assert_eq!(&f.into_payload()[..], b"payload");
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut bytes = sample(b"", &[1u8; 100]);
        let mut h: [u8; 32] = bytes[..32].try_into().unwrap();
        h[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes[..32].copy_from_slice(&h);
        assert!(matches!(parse_frame(&bytes, 1 << 20), Err(FrameError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn any_corruption_is_detected(archive in prop::collection::vec(any::<u8>(), 0..64),
                                      payload in prop::collection::vec(any::<u8>(), 0..256),
                                      pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut bytes = sample(&archive, &payload);
            let pos = pos.index(bytes.len());
            bytes[pos] ^= x;
            // Either an error, or (when a length grew) a frame still incomplete: never a frame.
            prop_assert!(!matches!(parse_frame(&bytes, 1 << 20), Ok(Some(_))));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_frame(&bytes, 1 << 20);
        }
    }
}
