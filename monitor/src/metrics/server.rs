//! The metrics endpoint: `GET /metrics` over HTTP/1.1 (hyper), nothing else.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{scrape, Metrics};
use crate::state::View;

pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` now (so a taken port fails the start), then serves.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))
}

/// Serves until the listener fails, from the read-only view.
pub async fn serve(
    listener: TcpListener,
    state: View,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (state, metrics) = (state.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (state, metrics) = (state.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(respond(req, &state, &metrics).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    state: &View,
    metrics: &Arc<Metrics>,
) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let body = scrape(state, metrics).await;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = CONTENT_TYPE_OPENMETRICS.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}
