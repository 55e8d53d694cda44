//! What the API depends on.
use std::sync::Arc;

use crate::{
    pipeline::Outlets,
    state::{Requests, View},
    store::writer::Handle as StoreHandle,
};

/// What the API serves from: the read-only view, the event fan-out, the
/// store, and the channel reload requests go to. Nothing here can change
/// the kernel but through a request the controller answers.
#[derive(Clone)]
pub struct Backend {
    pub view: View,
    pub outlets: Arc<Outlets>,
    pub store: Arc<StoreHandle>,
    pub requests: Requests,
    /// The node's public key (hex), which signs evidence bundles.
    pub node_public_key: String,
    /// Turns true when the daemon stops: streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The publisher to NATS (`--nats-url`), for `status`.
    pub nats: Option<Arc<dyn NatsStatus>>,
}

/// How publishing to NATS goes, as `status` says it (the publisher,
/// `fleet::publish`, implements it).
pub trait NatsStatus: Send + Sync {
    fn status_pb(&self) -> crate::api::pb::NatsStatus;
}
