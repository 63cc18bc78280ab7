//! Frames on a raw connection (plain or TLS): what an attacker, or a test posing as a
//! node, sends and gets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use quorra::protocol::messages::ErrorResponse;
use quorra::protocol::{decode, BodyBuf};

/// An answer on a raw connection.
#[derive(Debug)]
pub enum Answer {
    Ok(BodyBuf),
    Error(ErrorResponse),
    Closed,
}

impl Answer {
    pub fn ok(self) -> BodyBuf {
        match self {
            Answer::Ok(a) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    pub fn error(self) -> ErrorResponse {
        match self {
            Answer::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// One frame on a raw connection, and its answer.
pub fn exchange(s: &mut impl RawStream, kind: u16, archive: &[u8], payload: &[u8]) -> Answer {
    let mut a = BodyBuf::new();
    a.extend_from_slice(archive);
    let chunks = if payload.is_empty() { Vec::new() } else { vec![bytes::Bytes::copy_from_slice(payload)] };
    let mut out = Vec::new();
    quorra::protocol::frame::OutFrame::new(kind, 0, 7, a, chunks).write_to(&mut out);
    if s.write_all(&out).is_err() {
        return Answer::Closed;
    }
    s.set_read_timeout(Duration::from_secs(10));
    let mut head = [0u8; 32];
    if s.read_exact(&mut head).is_err() {
        return Answer::Closed;
    }
    let h = quorra::protocol::frame::FrameHeader::decode(&head, 64 << 20).unwrap();
    let mut body = vec![0u8; h.body_len()];
    s.read_exact(&mut body).unwrap();
    let mut archive = BodyBuf::new();
    archive.extend_from_slice(&body[..h.archive_len as usize]);
    if h.is_error() {
        Answer::Error(decode(&archive).unwrap())
    } else {
        Answer::Ok(archive)
    }
}

/// A connection a test reads and writes frames on, with a timeout on its reads.
pub trait RawStream: Read + Write {
    fn set_read_timeout(&self, timeout: Duration);
}

impl RawStream for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) {
        TcpStream::set_read_timeout(self, Some(timeout)).unwrap();
    }
}

impl RawStream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_read_timeout(&self, timeout: Duration) {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
    }
}
