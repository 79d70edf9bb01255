//! The bodies a proxied exchange carries, as one concrete type (no boxing per request): a stream from a
//! peer, a buffered body, or a backend response whose connection returns to the pool when it ends;
//! any of them with its access log line written at its end.

use crate::access_log::LogOnEnd;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Called once when a pooled response body has been read to its end.
pub type Release = Box<dyn FnOnce() + Send>;

pub enum Body {
    Incoming(Incoming),
    /// A client's request body on its way to a backend; `failed` records that the client sent a
    /// malformed one (so that the failed exchange is the client's 400, not the backend's 502).
    Request(Incoming, Arc<AtomicBool>),
    Full(Full<Bytes>),
    /// A backend response; `release` returns its connection to the pool once the body is complete.
    Pooled(Incoming, Option<Release>),
    /// A response whose access log line is written when it ends (only for requests logged).
    Logged(Box<Body>, Box<LogOnEnd>),
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(Full::new(Bytes::new()))
    }

    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Full(Full::new(b.into()))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Incoming(b) => Pin::new(b).poll_frame(cx),
            Body::Request(b, failed) => {
                let r = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &r {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            }
            Body::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Body::Pooled(b, release) => {
                let r = Pin::new(&mut *b).poll_frame(cx);
                let finished = match &r {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => b.is_end_stream(),
                    _ => false,
                };
                if finished && let Some(f) = release.take() {
                    f();
                }
                r
            }
            Body::Logged(b, end) => {
                let r = Pin::new(&mut **b).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            end.count(data.len());
                        }
                        if b.is_end_stream() {
                            end.finish(true);
                        }
                    }
                    Poll::Ready(None) => end.finish(true),
                    Poll::Ready(Some(Err(_))) => end.finish(false),
                    Poll::Pending => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(b) | Body::Request(b, _) | Body::Pooled(b, _) => b.is_end_stream(),
            Body::Full(b) => b.is_end_stream(),
            Body::Logged(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(b) | Body::Request(b, _) | Body::Pooled(b, _) => b.size_hint(),
            Body::Full(b) => b.size_hint(),
            Body::Logged(b, _) => b.size_hint(),
        }
    }
}
