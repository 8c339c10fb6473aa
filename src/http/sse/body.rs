//! An event stream's response body: what the fan-out queued for this
//! client, handed to hyper as it asks; and the places the client holds
//! until hyper drops the body (the client left, or the stream ended): its
//! slot among `api.sse_max_clients` and its membership of its subject's
//! topic.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::app::{App, Ticket};

/// Most bytes handed to hyper in one frame: events that wait together go
/// out as one chunk, in one write.
const FRAME_MAX: usize = 64 * 1024;

pub struct SseBody {
    pub(super) rx: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes queued and not yet taken by hyper: the fan-out adds before it
    /// sends, this subtracts what it takes.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) _member: Member,
    pub(super) _slot: Slot,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let first = match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => b,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let mut frame: Option<BytesMut> = None;
        let mut taken = first.len();
        while taken < FRAME_MAX {
            let Poll::Ready(Some(b)) = self.rx.poll_recv(cx) else {
                break;
            };
            taken += b.len();
            frame
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&b);
        }
        self.queued.fetch_sub(taken, Relaxed);
        let data = frame.map_or(first, BytesMut::freeze);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// The client's slot among `api.sse_max_clients`, freed when dropped.
pub struct Slot(pub Arc<App>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Relaxed);
    }
}

/// The client's membership of its subject's topic: the last one out ends
/// the topic (and its subscription).
pub struct Member(pub Arc<App>, pub Ticket);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.sse_topics.leave(&self.1);
    }
}
