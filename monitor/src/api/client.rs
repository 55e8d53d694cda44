//! Connecting the CLI to a daemon: the local unix socket, or a remote node
//! over TLS with a client certificate.
use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use super::pb::egress_monitor_client::EgressMonitorClient;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The daemon's unix socket.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/egress-monitor/egress-monitor.sock",
        env = "EGRESS_MONITOR_SOCKET"
    )]
    pub socket: PathBuf,
    /// A remote daemon, https://HOST:PORT (TLS with a client certificate).
    #[arg(long, global = true, env = "EGRESS_MONITOR_SERVER")]
    pub server: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, global = true, requires = "server")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, requires_all = ["server", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true, requires_all = ["server", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Name to expect in the server's certificate (default: the host of --server).
    #[arg(long, global = true, requires = "server")]
    pub tls_server_name: Option<String>,
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

pub async fn connect(args: &ConnectArgs) -> anyhow::Result<EgressMonitorClient<Channel>> {
    Ok(EgressMonitorClient::new(channel(args).await?))
}

/// A channel to the daemon, for any of its services.
pub async fn channel(args: &ConnectArgs) -> anyhow::Result<Channel> {
    let channel = match &args.server {
        Some(server) => {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &args.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &args.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            Endpoint::from_shared(server.clone())
                .with_context(|| {
                    format!("--server {server:?} is not a URL like https://node:50051")
                })?
                .tls_config(tls)?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {server}"))?
        }
        None => {
            let path = args.socket.clone();
            let shown = path.display().to_string();
            Endpoint::try_from("http://localhost")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }))
                .await
                .with_context(|| {
                    format!("cannot connect to {shown} (is the daemon running, and are you root or in its socket group?)")
                })?
        }
    };
    Ok(channel)
}

/// A gRPC error as a CLI error: the code and the server's message.
pub fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message())
}
