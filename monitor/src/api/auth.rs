//! Who may call what, decided once for every call by a tower layer around
//! the whole server ([`AuthLayer`]), from one table of methods and the role
//! each needs ([`METHOD_ROLES`]). A method that is not in the table is
//! refused, so a new RPC is closed until it is given a role.
//!
//! Two roles: viewers read, admins may also reload.
//!
//! Unix socket: the peer's credentials (SO_PEERCRED). Root and members of
//! the admin group are admins; members of the socket group are viewers;
//! anyone else who got past the socket's 0660 mode is refused.
//! TCP: TLS with a client certificate from the configured CA, required in
//! the handshake. A common name listed as an admin name is an admin; any
//! other valid certificate is a viewer.
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo},
    Status,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        })
    }
}

/// Every method the API serves, by gRPC path, and the role it needs. The
/// only place access is decided; a path that is not here is refused.
pub const METHOD_ROLES: &[(&str, Role)] = &[
    (
        "/egress_monitor.v1.EgressMonitor/StreamEvents",
        Role::Viewer,
    ),
    ("/egress_monitor.v1.EgressMonitor/GetStatus", Role::Viewer),
    (
        "/egress_monitor.v1.EgressMonitor/ListPolicies",
        Role::Viewer,
    ),
    ("/egress_monitor.v1.EgressMonitor/CheckPolicy", Role::Viewer),
    (
        "/egress_monitor.v1.EgressMonitor/ReloadPolicies",
        Role::Admin,
    ),
    ("/egress_monitor.v1.EgressMonitor/QueryEvents", Role::Viewer),
    ("/egress_monitor.v1.EgressMonitor/QueryFlows", Role::Viewer),
    ("/egress_monitor.v1.EgressMonitor/Explain", Role::Viewer),
    (
        "/egress_monitor.v1.EgressMonitor/SimulatePolicies",
        Role::Viewer,
    ),
    ("/grpc.health.v1.Health/Check", Role::Viewer),
    ("/grpc.health.v1.Health/Watch", Role::Viewer),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Role::Viewer,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Role::Viewer,
    ),
];

/// The role a method needs, or `None` for a method that is not in the table.
pub fn needed_role(path: &str) -> Option<Role> {
    METHOD_ROLES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, role)| *role)
}

/// Why a caller has no role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials on the connection (UNAUTHENTICATED).
    Unauthenticated(&'static str),
    /// Known credentials with no role (PERMISSION_DENIED); says whose.
    NoRole(String),
}

#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub socket_gid: Option<u32>,
    pub admin_gid: Option<u32>,
    pub tls_admin_names: Vec<String>,
}

/// The gid of a group name.
pub fn gid_of(name: &str) -> Result<u32, String> {
    let group =
        std::fs::read_to_string("/etc/group").map_err(|e| format!("reading /etc/group: {e}"))?;
    group_gid(&group, name).ok_or_else(|| format!("no group named {name:?} in /etc/group"))
}

fn group_gid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut parts = l.split(':');
        (parts.next()? == name).then_some(())?;
        parts.nth(1)?.parse().ok()
    })
}

/// What a connection's peer was when it connected. For a unix socket: its
/// groups, read once when the connection was accepted, so neither a later
/// setgid exec nor a reused pid changes a connection's role.
#[derive(Clone, Debug)]
pub struct Peer<I> {
    pub transport: I,
    /// The peer's primary and supplementary groups at accept (unix
    /// sockets; `None` when the peer's pid was not known).
    pub groups: Option<Arc<[u32]>>,
}

/// A process's primary and supplementary groups, from /proc.
pub fn groups_of(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            out.extend(
                rest.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(rest) = line.strip_prefix("Gid:") {
            // real, effective, saved, filesystem: the effective one.
            if let Some(g) = rest.split_whitespace().nth(1).and_then(|g| g.parse().ok()) {
                out.push(g);
            }
        }
    }
    out
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

impl AuthConfig {
    /// The caller's role, from the connection information tonic puts into
    /// the request's extensions, or why it has none.
    pub fn role(&self, extensions: &http::Extensions) -> Result<Role, Refusal> {
        if let Some(info) = extensions.get::<Peer<UdsConnectInfo>>() {
            let cred = info.transport.peer_cred.ok_or(Refusal::Unauthenticated(
                "no peer credentials on the unix socket",
            ))?;
            if cred.uid() == 0 {
                return Ok(Role::Admin);
            }
            let groups: Arc<[u32]> = info
                .groups
                .clone()
                .unwrap_or_else(|| Arc::from([cred.gid()]));
            if self.admin_gid.is_some_and(|g| groups.contains(&g)) {
                return Ok(Role::Admin);
            }
            if self.socket_gid.is_some_and(|g| groups.contains(&g)) {
                return Ok(Role::Viewer);
            }
            return Err(Refusal::NoRole(format!(
                "uid {} is neither root nor in the socket or admin group",
                cred.uid()
            )));
        }
        let certs = extensions
            .get::<TlsConnectInfo<Peer<TcpConnectInfo>>>()
            .and_then(|info| info.peer_certs())
            .unwrap_or_default();
        let Some(cert) = certs.first() else {
            return Err(Refusal::Unauthenticated("a client certificate is required"));
        };
        let cn = common_name(cert).unwrap_or_default();
        if self.tls_admin_names.contains(&cn) {
            Ok(Role::Admin)
        } else {
            Ok(Role::Viewer)
        }
    }

    /// Whether the caller may call the method at `path`, or the status that
    /// refuses it.
    pub fn authorize(&self, path: &str, extensions: &http::Extensions) -> Result<Role, Status> {
        let role = self.role(extensions);
        let Some(needed) = needed_role(path) else {
            return Err(match role {
                Err(Refusal::Unauthenticated(why)) => Status::unauthenticated(why),
                _ => Status::permission_denied(format!("{path} is not in the role table")),
            });
        };
        match role {
            Ok(role) if role >= needed => Ok(role),
            Ok(role) => Err(Status::permission_denied(format!(
                "{path} needs the {needed} role; this client is a {role}"
            ))),
            Err(Refusal::Unauthenticated(why)) => Err(Status::unauthenticated(why)),
            Err(Refusal::NoRole(who)) => Err(Status::permission_denied(format!(
                "{path} needs the {needed} role; {who}"
            ))),
        }
    }
}

/// Authenticates and authorizes every call before it reaches a service:
/// `Server::builder().layer(AuthLayer::new(config))`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    config: Arc<AuthConfig>,
}

impl AuthLayer {
    pub fn new(config: Arc<AuthConfig>) -> Self {
        AuthLayer { config }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    config: Arc<AuthConfig>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.config.authorize(req.uri().path(), req.extensions()) {
            Ok(_) => {
                // The service that was polled ready serves this call; its
                // clone stays for the next one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                log::info!(
                    "refused {}: {:?}: {}",
                    req.uri().path(),
                    status.code(),
                    status.message()
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lookup() {
        let text = "root:x:0:\nnogroup:x:65534:\nops:x:1001:alice,bob\n";
        assert_eq!(group_gid(text, "ops"), Some(1001));
        assert_eq!(group_gid(text, "nogroup"), Some(65534));
        assert_eq!(group_gid(text, "missing"), None);
    }

    /// `/package.Service/Method` of every method in an encoded descriptor set.
    fn methods_in(encoded: &[u8]) -> Vec<String> {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(encoded).expect("a valid descriptor set");
        let mut out = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    out.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        out
    }

    /// The role table has an entry for every method served, and no other.
    #[test]
    fn the_role_table_names_exactly_the_methods_served() {
        let mut served: Vec<String> = [
            crate::api::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .flat_map(methods_in)
        .collect();
        served.sort();
        let mut table: Vec<String> = METHOD_ROLES.iter().map(|(p, _)| p.to_string()).collect();
        table.sort();
        let before = table.len();
        table.dedup();
        assert_eq!(table.len(), before, "a method is in the role table twice");
        let missing: Vec<_> = served.iter().filter(|m| !table.contains(m)).collect();
        let unknown: Vec<_> = table.iter().filter(|m| !served.contains(m)).collect();
        assert!(
            missing.is_empty(),
            "served but not in the role table: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "in the role table but not served: {unknown:?}"
        );
        let admin: Vec<_> = METHOD_ROLES
            .iter()
            .filter(|(_, r)| *r == Role::Admin)
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(admin, ["/egress_monitor.v1.EgressMonitor/ReloadPolicies"]);
    }

    /// An inner service that counts the calls that reach it.
    #[derive(Clone, Default)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl tower::Service<http::Request<()>> for Counting {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(http::Response::new(tonic::body::Body::default())))
        }
    }

    /// Calls `path` through the layer, with this process's own unix socket
    /// credentials (`uds`) or no connection information at all; returns the
    /// status it answered with (None: passed on) and how many calls the
    /// inner service saw.
    fn call_through_layer(path: &str, uds: bool) -> (Option<Status>, usize) {
        use tonic::transport::server::Connected as _;
        use tower::{Layer as _, ServiceExt as _};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let mut req = http::Request::builder()
                .uri(format!("http://localhost{path}"))
                .body(())
                .expect("a request");
            let mut config = AuthConfig::default();
            let _pair;
            if uds {
                let (a, b) = tokio::net::UnixStream::pair().expect("a socket pair");
                let info = a.connect_info();
                // Our own group is the socket group: at least a viewer.
                config.socket_gid = info.peer_cred.map(|c| c.gid());
                req.extensions_mut().insert(Peer {
                    transport: info,
                    groups: None,
                });
                _pair = (a, b);
            }
            let inner = Counting::default();
            let layer = AuthLayer::new(Arc::new(config));
            let resp = layer
                .layer(inner.clone())
                .oneshot(req)
                .await
                .expect("infallible");
            (
                Status::from_header_map(resp.headers()),
                inner.0.load(std::sync::atomic::Ordering::SeqCst),
            )
        })
    }

    /// The role of a unix-socket connection is what its peer was when it
    /// connected: a peer that connects as a viewer and takes the admin
    /// group afterwards (a setgid exec; a pid reused by an admin's
    /// process) stays a viewer on that connection. Runs as root (as the
    /// suite does): the peer is a child that drops to uid 65534.
    #[test]
    fn a_unix_connection_keeps_the_role_its_peer_had_when_it_connected() {
        use std::os::unix::ffi::OsStrExt;
        const VIEWER_GID: u32 = 64_001;
        const ADMIN_GID: u32 = 64_002;
        // SAFETY: a plain query.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // The peer is uid 65534: it may reach the socket (the role is the
        // question here, not the file mode).
        use std::os::unix::fs::PermissionsExt as _;
        for (p, mode) in [(dir.path(), 0o755), (path.as_path(), 0o777)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        // Everything the child needs is made before the fork: it only makes
        // syscalls.
        // SAFETY: a zeroed sockaddr_un, filled within its bounds.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, b) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *b as libc::c_char;
        }
        let (mut to_child, mut from_child) = ([0i32; 2], [0i32; 2]);
        // SAFETY: two pipes into live arrays.
        unsafe {
            assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(from_child.as_mut_ptr()), 0);
        }
        // SAFETY: the child makes only async-signal-safe syscalls and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: syscalls on live values; the child never returns.
            unsafe {
                let mut byte = 0u8;
                let step = |b: &mut u8| {
                    libc::write(from_child[1], (b as *mut u8).cast(), 1);
                    libc::read(to_child[0], (b as *mut u8).cast(), 1)
                };
                let viewer = [VIEWER_GID];
                let admin = [ADMIN_GID];
                let ok = libc::setgroups(1, viewer.as_ptr()) == 0
                    && libc::setresgid(VIEWER_GID, VIEWER_GID, 0) == 0
                    && libc::setresuid(65_534, 65_534, 0) == 0;
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let connected = ok
                    && libc::connect(
                        fd,
                        (&addr as *const libc::sockaddr_un).cast(),
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                    ) == 0;
                if !connected {
                    libc::_exit(1);
                }
                step(&mut byte);
                // Now the admin group, on the same connection.
                let switched = libc::seteuid(0) == 0
                    && libc::setgroups(1, admin.as_ptr()) == 0
                    && libc::setresgid(ADMIN_GID, ADMIN_GID, 0) == 0
                    && libc::seteuid(65_534) == 0;
                if !switched {
                    libc::_exit(2);
                }
                step(&mut byte);
                libc::_exit(0);
            }
        }
        // SAFETY: the child's ends, which the child holds: a read sees the
        // end of the pipe when the child exits.
        unsafe {
            libc::close(to_child[0]);
            libc::close(from_child[1]);
        }
        let wait_child = |what: &str| {
            let mut byte = 0u8;
            // SAFETY: reading one byte into a live value.
            let n = unsafe { libc::read(from_child[0], (&mut byte as *mut u8).cast(), 1) };
            assert_eq!(n, 1, "the peer did not get to {what}");
        };
        let go = || {
            // SAFETY: writing one byte from a live value.
            unsafe { libc::write(to_child[1], b"g".as_ptr().cast(), 1) };
        };
        wait_child("connect as a viewer");
        let (stream, _) = listener.accept().expect("accept");
        stream.set_nonblocking(true).expect("nonblocking");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let role = rt.block_on(async {
            use tonic::transport::server::Connected as _;
            let stream = tokio::net::UnixStream::from_std(stream).expect("a tokio stream");
            // What the server takes at accept.
            let peer = Peer {
                transport: stream.connect_info(),
                groups: super::super::server::unix_groups(&stream),
            };
            go();
            wait_child("take the admin group");
            let now = groups_of(child);
            assert!(
                now.contains(&ADMIN_GID),
                "the peer's groups did not change, so this shows nothing: {now:?}"
            );
            let config = AuthConfig {
                socket_gid: Some(VIEWER_GID),
                admin_gid: Some(ADMIN_GID),
                ..AuthConfig::default()
            };
            let mut extensions = http::Extensions::new();
            extensions.insert(peer);
            config.role(&extensions)
        });
        go();
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        // SAFETY: our own pipe ends.
        unsafe {
            libc::close(to_child[1]);
            libc::close(from_child[0]);
        }
        assert_eq!(role.ok(), Some(Role::Viewer), "the connection changed role");
    }

    #[test]
    fn a_call_without_connection_information_is_unauthenticated_and_not_served() {
        let (status, calls) =
            call_through_layer("/egress_monitor.v1.EgressMonitor/GetStatus", false);
        let status = status.expect("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert_eq!(calls, 0);
    }

    #[test]
    fn a_method_not_in_the_table_is_refused_and_not_served() {
        let (status, calls) = call_through_layer("/egress_monitor.v1.EgressMonitor/DropAll", true);
        let status = status.expect("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("not in the role table"),
            "{}",
            status.message()
        );
        assert_eq!(calls, 0);
    }

    #[test]
    fn a_caller_with_the_role_is_passed_on() {
        let (status, calls) =
            call_through_layer("/egress_monitor.v1.EgressMonitor/GetStatus", true);
        assert!(status.is_none(), "{status:?}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_request_without_credentials_or_certificate_is_unauthenticated() {
        let auth = AuthConfig::default();
        assert_eq!(
            auth.role(&http::Extensions::new()),
            Err(Refusal::Unauthenticated("a client certificate is required"))
        );
    }
}
