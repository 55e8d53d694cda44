//! A raw gRPC client for the access tests: calls each METHOD on the daemon's
//! unix socket with an empty request message (zero bytes, which every
//! proto3 request decodes from) and prints one JSON line per call:
//! `{"method": PATH, "code": "PermissionDenied", "message": "..."}`, with
//! code "Ok" when the call was served. No generated client, so it can call
//! any method of any service, as whatever user runs it.
//!
//! grpc-call SOCKET METHOD...   METHOD is a gRPC path, /package.Service/Method,
//!                              with "+stream" appended for a server-streaming one
use std::{path::PathBuf, process::exit};

use http::uri::PathAndQuery;
use tonic::{client::Grpc, transport::Channel, Request};
use tonic_prost::ProstCodec;

const USAGE: &str = "usage: grpc-call SOCKET /package.Service/Method[+stream]...";

/// One call with an empty request; the status it ended with.
async fn call(channel: Channel, path: PathAndQuery, streaming: bool) -> tonic::Status {
    let mut grpc = Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(format!("channel not ready: {e}"));
    }
    let codec = ProstCodec::<(), ()>::default();
    let result = if streaming {
        grpc.server_streaming(Request::new(()), path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(Request::new(()), path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("{USAGE}");
        exit(2);
    };
    let connect = monitor::api::client::ConnectArgs {
        socket: Some(PathBuf::from(socket)),
        server: None,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        tls_server_name: None,
    };
    let channel = match monitor::api::client::channel(&connect).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            exit(1);
        }
    };
    for method in args {
        let (path, streaming) = match method.strip_suffix("+stream") {
            Some(path) => (path, true),
            None => (method.as_str(), false),
        };
        let path = match PathAndQuery::try_from(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{path:?} is not a gRPC path ({e}); {USAGE}");
                exit(2);
            }
        };
        let status = call(channel.clone(), path, streaming).await;
        let line = serde_json::json!({
            "method": method,
            "code": format!("{:?}", status.code()),
            "message": status.message(),
        });
        println!("{line}");
    }
}
