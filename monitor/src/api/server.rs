//! Transports: a unix socket (default) and TCP with TLS and client
//! certificates (optional), both with the health and reflection services,
//! and both behind the same [`AuthLayer`]: every call is authenticated and
//! authorized once, before it reaches a service.
/// The largest request the API decodes.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// A TLS client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent calls on one connection.
const MAX_STREAMS: u32 = 64;
/// HTTP/2 pings find dead peers: one every interval, answered within the
/// timeout or the connection is closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept for the daemon's own work (cgroup walks, the store,
/// the sweep's namespaces, pins) whatever the API's clients hold.
pub const RESERVED_DESCRIPTORS: u64 = 256;

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use super::backend::Backend;
use super::{
    auth::{AuthConfig, AuthLayer},
    pb,
    service::Service,
};

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub auth: AuthConfig,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading TLS {what} {}", path.display()))
}

/// Checks the configuration without binding anything: TLS files readable,
/// --listen given with its files.
pub fn check(config: &ApiConfig) -> anyhow::Result<()> {
    match (&config.listen, &config.tls) {
        (Some(_), None) => {
            anyhow::bail!("--listen needs --tls-cert, --tls-key and --tls-client-ca")
        }
        (_, Some(tls)) => {
            read(&tls.cert, "certificate")?;
            read(&tls.key, "key")?;
            read(&tls.client_ca, "client CA")?;
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn services(
    backend: Backend,
) -> anyhow::Result<(
    pb::egress_monitor_server::EgressMonitorServer<Service>,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::egress_monitor_server::EgressMonitorServer<Service>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Requests above this are refused by gRPC itself (OUT_OF_RANGE) before
    // they are decoded; below it, `Filter::compile` bounds every list and
    // string (INVALID_ARGUMENT).
    let service = pb::egress_monitor_server::EgressMonitorServer::new(Service::new(backend))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    Ok((service, health, reflection_v1, reflection_v1alpha))
}

/// Binds the unix socket (mode 0660, group = socket group) and, when asked,
/// the TLS listener; serves until `shutdown` resolves.
/// Binds the TCP address of --listen now, so a taken port fails the start
/// before the kernel is touched.
pub async fn bind_tcp(config: &ApiConfig) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match config.listen {
        Some(addr) => Ok(Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--listen {addr}: binding"))?,
        )),
        None => Ok(None),
    }
}

/// Binds the unix socket (mode 0660, group `--socket-group`), replacing a
/// stale one; done before the daemon says it runs, so a client started
/// then finds the socket.
pub fn bind_unix(config: &ApiConfig) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = config.socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(&config.socket) {
        Ok(()) => log::info!("removed stale socket {}", config.socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing stale socket {}", config.socket.display()))
        }
    }
    let listener = tokio::net::UnixListener::bind(&config.socket)
        .with_context(|| format!("binding the API socket {}", config.socket.display()))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", config.socket.display()))?;
    if let Some(gid) = config.auth.socket_gid {
        std::os::unix::fs::chown(&config.socket, Some(0), Some(gid))
            .with_context(|| format!("chown {} to group {gid}", config.socket.display()))?;
    }
    log::info!("gRPC API on unix socket {}", config.socket.display());
    Ok(listener)
}

/// Serves on the unix socket `bind_unix` bound and, when given, on the TCP
/// listener that `bind_tcp` bound.
pub async fn serve(
    config: ApiConfig,
    listener: tokio::net::UnixListener,
    tcp_listener: Option<tokio::net::TcpListener>,
    backend: Backend,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let auth = Arc::new(config.auth.clone());

    let (svc, health, refl1, refl1a) = services(backend.clone()).await?;
    let mut shutdown_unix = shutdown.clone();
    let cap = connection_cap();
    log::info!("the API takes at most {cap} connections per transport at a time");
    let unix = builder()
        .layer(AuthLayer::new(auth.clone()))
        .add_service(svc)
        .add_service(health)
        .add_service(refl1)
        .add_service(refl1a)
        .serve_with_incoming_shutdown(
            capped(UnixListenerStream::new(listener), cap, unix_groups),
            async move {
                let _ = shutdown_unix.wait_for(|s| *s).await;
            },
        );

    let tcp = match (tcp_listener, &config.tls) {
        (Some(listener), Some(tls)) => {
            let identity =
                Identity::from_pem(read(&tls.cert, "certificate")?, read(&tls.key, "key")?);
            let tls_config = ServerTlsConfig::new()
                .identity(identity)
                // Client certificates are required: a connection without
                // one, or with one from another CA, is refused in the
                // handshake and never reaches a service.
                .client_ca_root(Certificate::from_pem(read(&tls.client_ca, "client CA")?))
                // A peer that connects and never finishes its handshake
                // (no certificate needed to try) is dropped.
                .timeout(HANDSHAKE_TIMEOUT);
            let (svc, health, refl1, refl1a) = services(backend).await?;
            log::info!(
                "gRPC API on {} (TLS, client certificates)",
                listener.local_addr()?
            );
            let mut shutdown_tcp = shutdown.clone();
            let incoming = capped(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                cap,
                |_| None,
            );
            Some(
                builder()
                    .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
                    .tls_config(tls_config)?
                    .layer(AuthLayer::new(auth))
                    .add_service(svc)
                    .add_service(health)
                    .add_service(refl1)
                    .add_service(refl1a)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = shutdown_tcp.wait_for(|s| *s).await;
                    }),
            )
        }
        (Some(_), None) => {
            anyhow::bail!("--listen needs --tls-cert, --tls-key and --tls-client-ca")
        }
        _ => None,
    };
    match tcp {
        Some(tcp) => {
            let (a, b) = tokio::join!(unix, tcp);
            a.context("unix socket server")?;
            b.context("TLS server")?;
        }
        None => unix.await.context("unix socket server")?,
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// The server settings both transports share: bounded streams per
/// connection, and HTTP/2 pings that close connections to dead peers.
fn builder() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// Connections one transport holds at a time: at most 256, and at most a
/// quarter of what the descriptor limit leaves beside the daemon's own
/// reserve, so a flood of idle connections can never take the
/// descriptors the controller needs to walk the cgroup tree.
pub fn connection_cap() -> usize {
    let soft = nofile().map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(RESERVED_DESCRIPTORS) / 4).clamp(8, 256) as usize
}

/// The (soft, hard) RLIMIT_NOFILE.
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft RLIMIT_NOFILE to the hard one; returns the new soft.
pub fn raise_nofile() -> std::io::Result<u64> {
    let (soft, hard) = nofile()?;
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit from a live struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(hard)
}

/// At most `cap` connections of `incoming` at a time: a connection
/// waits for a slot before the listener is polled again (`then` runs one
/// future to its end first), so while `cap` are open, one more is
/// accepted and the rest wait in the listen backlog, holding no
/// descriptor of ours.
///
/// `groups` reads the peer's groups once, as the connection is accepted.
fn capped<S, T>(
    incoming: S,
    cap: usize,
    groups: fn(&T) -> Option<Arc<[u32]>>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Capped<T>>>
where
    S: tokio_stream::Stream<Item = std::io::Result<T>>,
{
    use tokio_stream::StreamExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    incoming.then(move |conn| {
        let slots = slots.clone();
        async move {
            let conn = conn?;
            let slot = slots
                .acquire_owned()
                .await
                .map_err(|_| std::io::Error::other("the API connection slots are closed"))?;
            Ok(Capped {
                groups: groups(&conn),
                inner: conn,
                _slot: slot,
            })
        }
    })
}

/// A unix-socket peer's groups, from /proc, as it connects.
pub(super) fn unix_groups(stream: &tokio::net::UnixStream) -> Option<Arc<[u32]>> {
    let pid = stream.peer_cred().ok()?.pid()?;
    Some(super::auth::groups_of(pid).into())
}

/// A connection that holds one of its transport's slots until it closes,
/// with what its peer was when it connected.
pub struct Capped<T> {
    inner: T,
    groups: Option<Arc<[u32]>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Capped<T> {
    type ConnectInfo = super::auth::Peer<T::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        super::auth::Peer {
            transport: self.inner.connect_info(),
            groups: self.groups.clone(),
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Capped<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
