//! Native requests made from Kafka ones. Each goes the way a native client's would
//! (`server::placement` routes it once; `server::send_request` sends it in order), so the
//! Kafka listener has no request path of its own.

use std::rc::Rc;

use crate::protocol::frame::FLAG_ERROR;
use crate::protocol::messages::{ApiKind, ErrorResponse};
use crate::protocol::{ErrorCode, Frame, FrameHeader, OutFrame};
use crate::server::placement::Placement;
use crate::server::{send_request, PendingAnswer};
use crate::shard::Shard;

/// Sends the native request `kind` (its archive, and the batches of a produce) on its way.
pub async fn send(shard: &Rc<Shard>, kind: ApiKind, archive: &[u8], payload: &[u8]) -> PendingAnswer {
    let frame = Frame::local(kind as u16, 0, archive, payload);
    let route = Placement::of(&frame).route(shard, None);
    send_request(shard, frame, route).await
}

/// The error a native answer carries, if it is one.
pub fn error_of(out: &OutFrame) -> Option<(ErrorCode, String)> {
    let header = FrameHeader::decode(&out.header, usize::MAX).ok()?;
    if header.flags & FLAG_ERROR == 0 {
        return None;
    }
    Some(match crate::protocol::decode::<ErrorResponse>(&out.archive) {
        Ok(e) => (ErrorCode::from_u16(e.code), e.message),
        Err(e) => (ErrorCode::Unknown, e.to_string()),
    })
}
