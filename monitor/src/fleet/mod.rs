//! Fleet scale: every node's events and flows in NATS JetStream (issue 17).
//!
//! The daemon publishes from its store (`publish`), never from the live
//! pipeline: what the stream has acknowledged is a cursor in the store's
//! `meta` table, so a NATS outage or a restart resumes where the stream
//! stopped, and JetStream drops the retries by their `Nats-Msg-Id`.
//! `fleet events|flows` read the stream back (`read`).
//!
//! Subjects (PREFIX is `--nats-subject-prefix`, `egress` by default):
//! `PREFIX.<node>.event.<verdict>` for each stored event and
//! `PREFIX.<node>.flow` for each flow minute once it is closed, and
//! `PREFIX.<node>.checkpoint` for each signed checkpoint of the node's
//! hash chain once the records it names are published (`fleet export`
//! builds verifiable evidence from the three).
pub mod publish;
pub mod read;

use std::path::PathBuf;

use crate::api::pb;

/// How to reach NATS: the flags `daemon` and `fleet` share.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (nats://host:4222,
    /// tls://host:4222). The daemon publishes its events and flows there;
    /// `fleet` reads them back [default: off].
    #[arg(long, env = "EGRESS_MONITOR_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (.creds: user JWT and NKey seed).
    #[arg(long, requires = "nats_url")]
    pub nats_creds: Option<PathBuf>,
    /// CA (PEM) the NATS servers' certificates are checked against (TLS is
    /// then required).
    #[arg(long, requires = "nats_url")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, requires_all = ["nats_url", "nats_tls_key"])]
    pub nats_tls_cert: Option<PathBuf>,
    /// Key (PEM) of --nats-tls-cert.
    #[arg(long, requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// First subject tokens: events on PREFIX.<node>.event.<verdict>,
    /// flows on PREFIX.<node>.flow.
    #[arg(long, default_value = "egress", value_parser = prefix)]
    pub nats_subject_prefix: String,
    /// The JetStream stream that holds them (created by the daemon when
    /// missing, with subjects PREFIX.>).
    #[arg(long, default_value = "EGRESS", value_parser = stream_name)]
    pub nats_stream: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("--nats-url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("{flag} {}: {source}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream request or publication failed; `refused` is what the
    /// server last said against us (a permissions violation), if anything.
    #[error("{what}: {reason}{}", refused.as_deref().map(|r| format!(" (the server said: {r})")).unwrap_or_default())]
    JetStream {
        what: String,
        reason: String,
        refused: Option<String>,
    },
}

impl NatsArgs {
    /// The files given must be readable now: a typo is said at the start,
    /// not found by the publisher later.
    pub fn check_files(&self) -> Result<(), NatsError> {
        for (flag, path) in [
            ("--nats-creds", &self.nats_creds),
            ("--nats-tls-ca", &self.nats_tls_ca),
            ("--nats-tls-cert", &self.nats_tls_cert),
            ("--nats-tls-key", &self.nats_tls_key),
        ] {
            if let Some(p) = path {
                std::fs::File::open(p).map_err(|source| NatsError::File {
                    flag,
                    path: p.clone(),
                    source,
                })?;
            }
        }
        if let Some(url) = &self.nats_url {
            servers(url)?;
        }
        Ok(())
    }

    /// The URL given (the caller checked it is), its password hidden.
    pub fn url(&self) -> String {
        redact(self.nats_url.as_deref().unwrap_or(""))
    }

    /// Connects (once: the caller decides about retrying), reconnecting on
    /// its own afterwards; `on_event` hears connection changes and the
    /// server's errors (a permissions violation arrives that way).
    pub async fn connect<F, Fut>(
        &self,
        name: &str,
        on_event: F,
    ) -> Result<async_nats::Client, NatsError>
    where
        F: Fn(async_nats::Event) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + 'static + Send + Sync,
    {
        let url = self.url();
        let servers = servers(self.nats_url.as_deref().unwrap_or(""))?;
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(std::time::Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(on_event);
        if let Some(path) = &self.nats_creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::File {
                    flag: "--nats-creds",
                    path: path.clone(),
                    source,
                })?;
        }
        self.check_files()?;
        if let Some(ca) = &self.nats_tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some((user, password)) = servers.user {
            opts = opts.user_and_password(user, password);
        }
        opts.connect(servers.addrs)
            .await
            .map_err(|source| NatsError::Connect { url, source })
    }
}

/// The servers of a comma-separated `--nats-url`, and the user and
/// password its URLs carry (`nats://user:pass@host:4222`; the same on
/// every URL), which are sent as such and never shown.
#[derive(Debug)]
struct Servers {
    addrs: Vec<async_nats::ServerAddr>,
    user: Option<(String, String)>,
}

fn servers(url: &str) -> Result<Servers, NatsError> {
    let bad = |reason: String| NatsError::Url {
        url: redact(url),
        reason,
    };
    let mut addrs = Vec::new();
    let mut user: Option<(String, String)> = None;
    for (i, s) in url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        let (bare, this_user) = split_user(s);
        if i > 0 && this_user != user {
            return Err(bad(
                "every URL must carry the same user and password (or none)".into(),
            ));
        }
        user = this_user;
        addrs.push(
            bare.parse::<async_nats::ServerAddr>()
                .map_err(|e| bad(format!("{:?}: {e}", redact(s))))?,
        );
    }
    if addrs.is_empty() {
        return Err(bad("no server given".into()));
    }
    Ok(Servers { addrs, user })
}

/// A URL without its `user:password@`, and them.
fn split_user(url: &str) -> (String, Option<(String, String)>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rsplit_once('@') {
        Some((info, host)) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            (
                format!("{scheme}{host}{}", &rest[host_end..]),
                Some((u.to_string(), p.to_string())),
            )
        }
        None => (url.to_string(), None),
    }
}

/// `--nats-url` as logs and `status` show it: passwords replaced by `***`.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|s| {
            let s = s.trim();
            match split_user(s) {
                (bare, Some((user, _))) => match bare.split_once("://") {
                    Some((scheme, host)) => format!("{scheme}://{user}:***@{host}"),
                    None => format!("{user}:***@{bare}"),
                },
                (bare, None) => bare,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One subject token (a node name, a verdict): no dots, wildcards or
/// white space, not empty.
pub fn token(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{s:?} holds {c:?}, which a NATS subject token cannot"
        ));
    }
    Ok(s.to_string())
}

/// `--nats-subject-prefix`: tokens joined by dots.
fn prefix(s: &str) -> Result<String, String> {
    for t in s.split('.') {
        token(t).map_err(|e| format!("subject prefix {s:?}: token {e}"))?;
    }
    Ok(s.to_string())
}

/// `--nats-stream`: JetStream names take no dots, wildcards, slashes or
/// white space.
fn stream_name(s: &str) -> Result<String, String> {
    token(s)?;
    if s.contains(['/', '\\']) {
        return Err(format!("{s:?}: a stream name cannot hold a slash"));
    }
    Ok(s.to_string())
}

/// `--node`: the name the node's subjects and message ids carry; dots
/// (a Kubernetes node name such as ip-10-0-1-5.eu-central-1.compute.internal)
/// become `_`, since a subject token holds none.
pub fn node_name(s: &str) -> Result<String, String> {
    token(&s.replace('.', "_")).map_err(|e| format!("node name {e}"))
}

/// The node name by default: the host name up to its first dot (a
/// subject token cannot hold one).
pub fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let short: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '*' | '>') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if short.is_empty() {
        "node".into()
    } else {
        short
    }
}

pub fn event_subject(prefix: &str, node: &str, verdict: &str) -> String {
    format!("{prefix}.{node}.event.{verdict}")
}

pub fn flow_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.{node}.flow")
}

pub fn checkpoint_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.{node}.checkpoint")
}

/// A node's signed checkpoint as published (JSON): with the store it
/// signs for and the node's public key, a reader can check the node's
/// records from the stream without the node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeCheckpoint {
    pub node: String,
    pub store_id: String,
    /// Hex ed25519 public key of the node.
    pub public_key: String,
    #[serde(flatten)]
    pub checkpoint: crate::store::chain::Checkpoint,
}

/// The `Nats-Msg-Id` of a checkpoint: node and signing time.
pub fn checkpoint_msg_id(node: &str, c: &crate::store::chain::Checkpoint) -> String {
    format!("{node}-checkpoint-{}", c.unix_nanos)
}

/// The `Nats-Msg-Id` of an event: node and store position.
pub fn event_msg_id(node: &str, seq: i64) -> String {
    format!("{node}-{seq}")
}

/// The `Nats-Msg-Id` of a flow minute's row: node, minute, and a digest of
/// the row's key (the same row of the same minute has the same id).
pub fn flow_msg_id(node: &str, f: &pb::Flow) -> String {
    use sha2::{Digest, Sha256};
    let key = format!(
        "{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
        f.cgroup_path, f.comm, f.dst_ip, f.dst_port, f.protocol, f.verdict, f.policy, f.dns_name
    );
    let digest = Sha256::digest(key.as_bytes());
    let minute = crate::store::query::bucket_of(f.first_seen_unix_nanos) / 1_000_000_000;
    format!("{node}-flow-{minute}-{}", hex::encode(&digest[..8]))
}

/// Whether a subject pattern (`*` one token, `>` the rest) matches a
/// subject.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// How messages are encoded (`--nats-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The proto `egress_monitor.v1.Event` / `Flow` messages.
    Protobuf,
    /// The same messages as JSON objects (proto field names).
    Json,
}

/// The `Content-Type` header of each format; `fleet` decodes by it.
pub const PROTOBUF_EVENT: &str = "application/protobuf; proto=egress_monitor.v1.Event";
pub const PROTOBUF_FLOW: &str = "application/protobuf; proto=egress_monitor.v1.Flow";
pub const JSON: &str = "application/json";

/// A message's payload and content type.
pub fn encode<M: prost::Message + serde::Serialize>(
    format: Format,
    msg: &M,
    proto_type: &'static str,
) -> (Vec<u8>, &'static str) {
    match format {
        Format::Protobuf => (msg.encode_to_vec(), proto_type),
        // Serialising generated structs of strings and numbers cannot fail.
        Format::Json => (serde_json::to_vec(msg).unwrap_or_default(), JSON),
    }
}

/// A payload back, by its content type (protobuf when none is given).
pub fn decode<M: prost::Message + Default + serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<M, String> {
    match content_type {
        Some(JSON) => serde_json::from_slice(payload).map_err(|e| format!("JSON: {e}")),
        _ => M::decode(payload).map_err(|e| format!("protobuf: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns_match_as_nats_does() {
        assert!(subject_matches("egress.>", "egress.n1.event.denied"));
        assert!(subject_matches("egress.*.flow", "egress.n1.flow"));
        assert!(subject_matches(
            "egress.n1.event.*",
            "egress.n1.event.allowed"
        ));
        assert!(!subject_matches("egress.n1.event.*", "egress.n1.flow"));
        assert!(!subject_matches("egress.>", "egress"));
        assert!(!subject_matches("other.>", "egress.n1.flow"));
        assert!(!subject_matches("egress.n1", "egress.n1.flow"));
    }

    /// A node name or prefix a subject cannot carry is refused, named.
    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        assert_eq!(node_name("node-1").unwrap(), "node-1");
        assert_eq!(
            node_name("ip-10-0-1-5.ec2.internal").unwrap(),
            "ip-10-0-1-5_ec2_internal"
        );
        let e = node_name("node*").unwrap_err();
        assert!(e.contains("'*'"), "{e}");
        assert!(node_name("").unwrap_err().contains("empty"));
        assert!(node_name("a b").is_err());
        assert!(prefix("corp.egress").is_ok());
        let e = prefix("corp..egress").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert!(prefix("egress.>").is_err());
        assert!(stream_name("EGRESS").is_ok());
        assert!(stream_name("A/B").is_err());
    }

    #[test]
    fn messages_round_trip_in_both_formats() {
        let e = pb::Event {
            verdict: "denied".into(),
            dst_ip: "203.0.113.7".into(),
            seq: 42,
            node: "n1".into(),
            ..Default::default()
        };
        for f in [Format::Protobuf, Format::Json] {
            let (bytes, ct) = encode(f, &e, PROTOBUF_EVENT);
            let back: pb::Event = decode(Some(ct), &bytes).unwrap();
            assert_eq!(back, e, "{f:?}");
        }
        let err = decode::<pb::Event>(Some(JSON), b"{not json").unwrap_err();
        assert!(err.starts_with("JSON:"), "{err}");
    }

    #[test]
    fn message_ids_name_node_and_position() {
        assert_eq!(event_msg_id("n1", 7), "n1-7");
        let f = pb::Flow {
            dst_ip: "203.0.113.7".into(),
            first_seen_unix_nanos: 90_000_000_000,
            ..Default::default()
        };
        let id = flow_msg_id("n1", &f);
        assert!(id.starts_with("n1-flow-60-"), "{id}");
        let later = pb::Flow {
            first_seen_unix_nanos: 100_000_000_000,
            count: 9,
            ..f.clone()
        };
        assert_eq!(flow_msg_id("n1", &later), id, "same key, same minute");
    }

    #[test]
    fn urls_are_checked() {
        let two = servers("nats://127.0.0.1:4222, nats://127.0.0.1:4223").unwrap();
        assert_eq!(two.addrs.len(), 2);
        assert!(two.user.is_none());
        let e = servers(" , ").unwrap_err().to_string();
        assert!(e.contains("no server"), "{e}");
    }

    /// A password in the URL is sent as one and never shown.
    #[test]
    fn passwords_in_urls_are_taken_out_and_hidden() {
        let url = "nats://u:s3cret@127.0.0.1:4222,nats://u:s3cret@127.0.0.1:4223";
        let s = servers(url).unwrap();
        assert_eq!(s.user, Some(("u".into(), "s3cret".into())));
        assert_eq!(s.addrs.len(), 2);
        assert_eq!(
            redact(url),
            "nats://u:***@127.0.0.1:4222,nats://u:***@127.0.0.1:4223"
        );
        let e = servers("nats://u:a@h:1,nats://u:b@h:2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("same user"), "{e}");
        assert!(!e.contains(":a@") && !e.contains(":b@"), "{e}");
        assert_eq!(redact("nats://h:1"), "nats://h:1");
    }
}
