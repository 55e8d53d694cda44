//! Connecting the CLI to a daemon: the local unix socket, or a remote node
//! over TLS with a client certificate.
use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use super::pb::egress_monitor_client::EgressMonitorClient;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// The daemon's unix socket [default: the default state directory's, or
    /// else that of the one daemon running on this machine].
    #[arg(long, global = true, env = "EGRESS_MONITOR_SOCKET")]
    pub socket: Option<PathBuf>,
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

/// The default daemon's socket.
pub const DEFAULT_SOCKET: &str = "/var/lib/egress-monitor/egress-monitor.sock";

/// The socket to use: the one given; else the default one if it exists;
/// else that of the one daemon running here (found through the locks the
/// daemons hold on their pin directories, whatever their state directory).
pub fn socket_path(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let default = PathBuf::from(DEFAULT_SOCKET);
    if default.exists() {
        return Ok(default);
    }
    match crate::kernel::pins::one_running_daemon("--socket").map_err(anyhow::Error::msg)? {
        Some(h) => Ok(h.socket),
        None => Ok(default),
    }
}

/// The state directory to read (`export`), found as the socket is: the
/// one given; else the default one if it holds a store; else that of the
/// one daemon running here (its lock file records it).
pub fn state_dir(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let default = crate::statedir::default_dir();
    if crate::store::path_in(default).exists() {
        return Ok(default.to_path_buf());
    }
    match crate::kernel::pins::one_running_daemon("--state-dir").map_err(anyhow::Error::msg)? {
        Some(h) if !h.state_dir.as_os_str().is_empty() => Ok(h.state_dir),
        _ => Ok(default.to_path_buf()),
    }
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
            let path = socket_path(args.socket.as_deref())?;
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
