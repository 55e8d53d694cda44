//! Who may call what. Two roles: viewers read, admins may also reload.
//!
//! Unix socket: the peer's credentials (SO_PEERCRED). Root and members of
//! the admin group are admins; members of the socket group are viewers;
//! anyone else who got past the socket's 0660 mode is refused.
//! TCP: TLS with client certificates from the configured CA. A common name
//! listed as an admin name is an admin; any other valid certificate is a
//! viewer; no certificate is UNAUTHENTICATED.
use tonic::{transport::server::UdsConnectInfo, Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Admin,
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

/// A process's primary and supplementary groups, from /proc.
fn groups_of(pid: i32) -> Vec<u32> {
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
    /// The caller's role, or the status that refuses it.
    pub fn role<T>(&self, req: &Request<T>) -> Result<Role, Status> {
        if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
            let cred = info
                .peer_cred
                .ok_or_else(|| Status::unauthenticated("no peer credentials on the unix socket"))?;
            if cred.uid() == 0 {
                return Ok(Role::Admin);
            }
            let groups = cred
                .pid()
                .map(groups_of)
                .unwrap_or_else(|| vec![cred.gid()]);
            if self.admin_gid.is_some_and(|g| groups.contains(&g)) {
                return Ok(Role::Admin);
            }
            if self.socket_gid.is_some_and(|g| groups.contains(&g)) {
                return Ok(Role::Viewer);
            }
            return Err(Status::permission_denied(format!(
                "uid {} is neither root nor in the socket or admin group",
                cred.uid()
            )));
        }
        let certs = req.peer_certs().unwrap_or_default();
        let Some(cert) = certs.first() else {
            return Err(Status::unauthenticated("a client certificate is required"));
        };
        let cn = common_name(cert).unwrap_or_default();
        if self.tls_admin_names.contains(&cn) {
            Ok(Role::Admin)
        } else {
            Ok(Role::Viewer)
        }
    }

    pub fn require<T>(&self, req: &Request<T>, needed: Role, what: &str) -> Result<Role, Status> {
        let role = self.role(req)?;
        if role < needed {
            return Err(Status::permission_denied(format!(
                "{what} needs the admin role; this client is a viewer"
            )));
        }
        Ok(role)
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

    #[test]
    fn a_request_without_credentials_or_certificate_is_unauthenticated() {
        let auth = AuthConfig::default();
        let status = auth.role(&Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
