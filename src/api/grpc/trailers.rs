//! Moves the serving and metering headers of a gRPC response into its trailing metadata: a
//! unary handler can only set leading metadata, but the metering contract sends how a call was
//! served and what it cost after it, once known, as trailers.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::{HeaderMap, HeaderName, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::Service;

use crate::api::handler::SERVING_HEADERS;
use crate::api::usage::ENERGY_HEADERS;

/// A service whose responses carry the serving and metering headers as trailers.
#[derive(Debug, Clone)]
pub struct MeteringTrailers<S> {
    inner: S,
}

impl<S> MeteringTrailers<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MeteringTrailers<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrailingBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(req);
        Box::pin(async move {
            let (mut parts, body) = response.await?.into_parts();
            let mut moved = HeaderMap::new();
            for name in SERVING_HEADERS.into_iter().chain(ENERGY_HEADERS) {
                if let Some(v) = parts.headers.remove(name) {
                    moved.insert(HeaderName::from_static(name), v);
                }
            }
            let extra = (!moved.is_empty()).then_some(moved);
            Ok(Response::from_parts(
                parts,
                TrailingBody { inner: body, extra },
            ))
        })
    }
}

/// A body that adds headers to its trailers (or sends them as trailers if it has none).
#[derive(Debug)]
pub struct TrailingBody<B> {
    inner: B,
    extra: Option<HeaderMap>,
}

impl<B: Body + Unpin> Body for TrailingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(extra) = this.extra.take() {
                        trailers.extend(extra);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            None => Poll::Ready(this.extra.take().map(|extra| Ok(Frame::trailers(extra)))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.extra.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
