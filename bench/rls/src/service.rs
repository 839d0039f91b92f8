//! `envoy.service.ratelimit.v3.RateLimitService` over gRPC: what code
//! generation from `rls.proto` would produce for its one method, written
//! with tonic's server building blocks instead (no `protoc` here). tonic
//! does the HTTP/2 and the gRPC framing; this module routes the one path
//! and hands the decoded request to [`Limiter`].

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::{Grpc, UnaryService};
use tonic::Status;
use tonic_prost::ProstCodec;

use crate::limits::Limiter;
use crate::proto::{RateLimitRequest, RateLimitResponse};

/// The path of `ShouldRateLimit`: `/<package>.<service>/<method>`.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The server: every request on one connection is a call of this.
#[derive(Clone)]
pub struct RateLimitService {
    limiter: Arc<Limiter>,
}

impl RateLimitService {
    pub fn new(limiter: Limiter) -> Self {
        Self {
            limiter: Arc::new(limiter),
        }
    }
}

impl Service<http::Request<Body>> for RateLimitService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            // As a generated server answers a method it does not have.
            let status = Status::unimplemented(format!("no method {}", request.uri().path()));
            return Box::pin(ready(Ok(status.into_http())));
        }
        let method = ShouldRateLimit(Arc::clone(&self.limiter));
        Box::pin(async move {
            let codec = ProstCodec::<RateLimitResponse, RateLimitRequest>::default();
            Ok(Grpc::new(codec).unary(method, request).await)
        })
    }
}

/// The method, in the shape tonic's unary handling takes.
struct ShouldRateLimit(Arc<Limiter>);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    // The decision is synchronous: limitador's in-memory storage never waits.
    type Future = Ready<Result<tonic::Response<RateLimitResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        ready(
            self.0
                .should_rate_limit(request.get_ref())
                .map(tonic::Response::new)
                .map_err(Status::internal),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Limits, KEY};
    use crate::proto::{Code, Entry, RateLimitDescriptor};
    use http_body_util::{BodyExt, Full};
    use prost::Message;
    use tonic::codegen::Bytes;

    /// One call through the service as Envoy makes it: a gRPC-framed
    /// request body in, a framed message and `grpc-status` trailer out.
    fn call(service: &mut RateLimitService, path: &str, key: &str) -> (Option<String>, Vec<u8>) {
        let message = RateLimitRequest {
            domain: "bench".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: KEY.into(),
                    value: key.into(),
                }],
            }],
            hits_addend: 0,
        }
        .encode_to_vec();
        // Uncompressed, then the length, then the message.
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&message);
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://rls{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::new(Full::new(Bytes::from(framed))))
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = service.call(request).await.unwrap();
            let grpc_status = response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned());
            let collected = response.into_body().collect().await.unwrap();
            let trailer_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_owned());
            (
                grpc_status.or(trailer_status),
                collected.to_bytes().to_vec(),
            )
        })
    }

    fn service() -> RateLimitService {
        RateLimitService::new(
            Limiter::new(&Limits {
                domain: "bench".into(),
                per_second: 10,
                exhausted: Some("spent".into()),
            })
            .unwrap(),
        )
    }

    fn overall(body: &[u8]) -> i32 {
        assert_eq!(body.first(), Some(&0), "an uncompressed message");
        RateLimitResponse::decode(&body[5..]).unwrap().overall_code
    }

    #[test]
    fn answers_should_rate_limit_over_grpc() {
        let mut service = service();
        let (status, body) = call(&mut service, SHOULD_RATE_LIMIT, "spent");
        assert_eq!(status.as_deref(), Some("0"));
        assert_eq!(overall(&body), Code::Ok as i32);
        let (status, body) = call(&mut service, SHOULD_RATE_LIMIT, "spent");
        assert_eq!(status.as_deref(), Some("0"));
        assert_eq!(overall(&body), Code::OverLimit as i32);
    }

    #[test]
    fn other_methods_are_unimplemented() {
        let (status, body) = call(&mut service(), "/envoy.Other/Call", "k");
        assert_eq!(status.as_deref(), Some("12"));
        assert!(body.is_empty());
    }
}
