//! What a container is, from its runtime: the image (name and digest), the
//! container's name, and for a Kubernetes container its pod's name,
//! namespace and labels, asked once per container over the runtime's unix
//! socket and kept. The cgroup path gives only the container's ID (`attribution`).
//!
//! Runtimes that speak the Docker Engine API answer here: Docker
//! (`/run/docker.sock`) and Podman (`/run/podman/podman.sock`, from
//! `podman system service`). A container is asked of the runtime its
//! cgroup names first, then of the others. containerd and CRI-O speak CRI
//! (gRPC), which this does not: their containers carry the ID and runtime
//! the path gives, and `status` says why they carry no image.
//!
//! A lookup runs when the daemon first resolves a container's cgroup, on
//! the enrichment path, bounded by `TIMEOUT`; a container the runtime
//! could not answer for is asked again after `RETRY` (its events carry the
//! ID meanwhile). A runtime that cannot be reached is logged once, until it
//! answers again, and shown in `status`.
use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::attribution::Runtime;

/// Where Docker and Podman listen by default, probed in this order.
pub const SOCKETS: [(&str, Runtime); 3] = [
    ("/run/podman/podman.sock", Runtime::Podman),
    ("/run/docker.sock", Runtime::Docker),
    ("/var/run/docker.sock", Runtime::Docker),
];

/// How long one question to a runtime may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_millis(250);
/// A container the runtime could not answer for is asked again after this.
const RETRY: Duration = Duration::from_secs(30);
/// Containers and images kept at once (then the cache starts over).
const KEPT: usize = 16_384;
/// The largest answer read from a runtime.
const MAX_ANSWER: u64 = 4 << 20;

/// What the runtime says of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// As the container was created from it (`registry/name:tag`).
    pub image: String,
    /// `sha256:...`: the manifest digest where the image came from a
    /// registry (or was pushed), else the image ID.
    pub image_digest: String,
    /// The container's name (`podman ps`, `docker ps`, a pod spec's
    /// container name).
    pub name: String,
    /// The pod, for a container Kubernetes made (its
    /// `io.kubernetes.pod.*` labels).
    pub pod_name: String,
    pub pod_namespace: String,
    /// The pod's labels (`app`, `team`, ...), from its sandbox.
    pub pod_labels: BTreeMap<String, String>,
}

/// Refuses a given socket that does not exist (the daemon checks before it
/// loads anything).
pub fn check(given: &[PathBuf]) -> Result<(), String> {
    match given.iter().find(|p| !p.exists()) {
        Some(p) => Err(format!(
            "--container-runtime-socket {}: no such socket",
            p.display()
        )),
        None => Ok(()),
    }
}

/// One runtime socket.
#[derive(Debug)]
struct Socket {
    path: PathBuf,
    runtime: Runtime,
    /// The last failure, logged once until an answer comes.
    failing: Option<String>,
}

pub struct Containers {
    sockets: Vec<Socket>,
    /// By container ID: what the runtime said, or when it was last asked
    /// in vain.
    known: HashMap<String, Result<Arc<Meta>, Instant>>,
    /// Image ID -> digest.
    digests: HashMap<String, String>,
    /// `status()`, for the API, as it changes.
    shown: Arc<RwLock<String>>,
}

impl Containers {
    /// The runtimes at `given` (`--container-runtime-socket`), or at those
    /// of `SOCKETS` that exist. A given socket that does not exist is an
    /// error: configuration that would silently find nothing.
    pub fn find(given: &[PathBuf]) -> Result<Self, String> {
        check(given)?;
        let mut sockets = Vec::new();
        for p in given {
            sockets.push(Socket {
                path: p.clone(),
                runtime: Runtime::Unknown,
                failing: None,
            });
        }
        if given.is_empty() {
            // `/var/run` is usually `/run`: one socket is asked once.
            let mut seen = Vec::new();
            for (p, runtime) in SOCKETS {
                let Ok(real) = Path::new(p).canonicalize() else {
                    continue;
                };
                if !seen.contains(&real) {
                    seen.push(real);
                    sockets.push(Socket {
                        path: PathBuf::from(p),
                        runtime,
                        failing: None,
                    });
                }
            }
        }
        let c = Containers {
            sockets,
            known: HashMap::new(),
            digests: HashMap::new(),
            shown: Arc::default(),
        };
        c.show();
        log::info!("container metadata: {}", c.status());
        Ok(c)
    }

    /// No runtime at all (tests, tools that only read the store).
    pub fn none() -> Self {
        let c = Containers {
            sockets: Vec::new(),
            known: HashMap::new(),
            digests: HashMap::new(),
            shown: Arc::default(),
        };
        c.show();
        c
    }

    /// `status()` as it changes, for the API.
    pub fn shown(&self) -> Arc<RwLock<String>> {
        self.shown.clone()
    }

    fn show(&self) {
        *self.shown.write().unwrap_or_else(|p| p.into_inner()) = self.status();
    }

    /// Where container metadata comes from, or why there is none.
    pub fn status(&self) -> String {
        if self.sockets.is_empty() {
            return format!(
                "no runtime socket ({}; or give --container-runtime-socket): containers carry their ID and runtime from the cgroup path, no image or name",
                SOCKETS.map(|(p, _)| p).join(", ")
            );
        }
        self.sockets
            .iter()
            .map(|s| match &s.failing {
                None => format!("{} (Docker Engine API)", s.path.display()),
                Some(why) => format!("{} (Docker Engine API): failing: {why}", s.path.display()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What the runtime says of container `id` (of `runtime`, as its cgroup
    /// path tells), asked once and kept.
    pub fn lookup(&mut self, id: &str, runtime: Runtime) -> Option<Arc<Meta>> {
        if self.sockets.is_empty() || id.is_empty() {
            return None;
        }
        match self.known.get(id) {
            Some(Ok(meta)) => return Some(meta.clone()),
            Some(Err(at)) if at.elapsed() < RETRY => return None,
            _ => {}
        }
        if self.known.len() >= KEPT {
            self.known.clear();
        }
        let answer = self.ask(id, runtime);
        match answer {
            Some(meta) => {
                let meta = Arc::new(meta);
                self.known.insert(id.to_string(), Ok(meta.clone()));
                Some(meta)
            }
            None => {
                self.known.insert(id.to_string(), Err(Instant::now()));
                None
            }
        }
    }

    /// Asks the sockets, the one of the container's own runtime first.
    fn ask(&mut self, id: &str, runtime: Runtime) -> Option<Meta> {
        let mut order: Vec<usize> = (0..self.sockets.len()).collect();
        order.sort_by_key(|&i| self.sockets[i].runtime != runtime);
        for i in order {
            let path = self.sockets[i].path.clone();
            match inspect(&path, id, &mut self.digests) {
                Ok(Some(meta)) => {
                    self.answered(i);
                    return Some(meta);
                }
                Ok(None) => self.answered(i),
                Err(why) => {
                    let s = &mut self.sockets[i];
                    if s.failing.is_none() {
                        log::warn!(
                            "container runtime at {}: {why}; events of its containers carry no image until it answers",
                            s.path.display()
                        );
                    }
                    s.failing = Some(why);
                    self.show();
                }
            }
        }
        None
    }

    fn answered(&mut self, i: usize) {
        let s = &mut self.sockets[i];
        if s.failing.take().is_some() {
            log::info!("container runtime at {} answers again", s.path.display());
            self.show();
        }
    }
}

/// `GET /containers/{id}/json` (and the image's digest, once per image);
/// None when the runtime has no such container.
fn inspect(
    socket: &Path,
    id: &str,
    digests: &mut HashMap<String, String>,
) -> Result<Option<Meta>, String> {
    let Some(c) = get(socket, &format!("/v1.40/containers/{id}/json"))? else {
        return Ok(None);
    };
    let labels: BTreeMap<String, String> =
        serde_json::from_value(c["Config"]["Labels"].clone()).unwrap_or_default();
    let image_id = c["Image"].as_str().unwrap_or_default().to_string();
    // Only an ID of the usual form goes into the next request's path.
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':');
    let digest = match digests.get(&image_id) {
        Some(d) => d.clone(),
        None if image_id.is_empty() || !plain(&image_id) => String::new(),
        None => {
            let d = match get(socket, &format!("/v1.40/images/{image_id}/json"))? {
                Some(image) => manifest_digest(&image).unwrap_or_else(|| image_id.clone()),
                None => image_id.clone(),
            };
            if digests.len() >= KEPT {
                digests.clear();
            }
            digests.insert(image_id, d.clone());
            d
        }
    };
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    // A Kubernetes container's pod labels are its sandbox's labels, less
    // what the kubelet and the runtime add (cri-dockerd's layout).
    let pod_labels = match labels.get("io.kubernetes.sandbox.id") {
        Some(sandbox) if sandbox.bytes().all(|b| b.is_ascii_hexdigit()) => {
            match get(socket, &format!("/v1.40/containers/{sandbox}/json"))? {
                Some(s) => serde_json::from_value::<BTreeMap<String, String>>(
                    s["Config"]["Labels"].clone(),
                )
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| !k.starts_with("io.kubernetes.") && !k.starts_with("annotation."))
                .collect(),
                None => BTreeMap::new(),
            }
        }
        _ => BTreeMap::new(),
    };
    Ok(Some(Meta {
        image: c["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        image_digest: digest,
        // Kubernetes names the container in a label; the engine's own
        // name is `k8s_<container>_<pod>_...` there.
        name: match label("io.kubernetes.container.name") {
            n if !n.is_empty() => n,
            _ => c["Name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
        },
        pod_name: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
        pod_labels,
    }))
}

/// The digest of the first of an image's `RepoDigests` (`name@sha256:...`).
fn manifest_digest(image: &serde_json::Value) -> Option<String> {
    let first = image["RepoDigests"].as_array()?.first()?.as_str()?;
    let (_, digest) = first.rsplit_once('@')?;
    digest.starts_with("sha256:").then(|| digest.to_string())
}

/// One HTTP/1.1 GET over the unix socket; Ok(None) on 404.
fn get(socket: &Path, path: &str) -> Result<Option<serde_json::Value>, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(TIMEOUT)).ok();
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: runtime\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(format!("GET {path}: no answer within {TIMEOUT:?}"));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() as u64 > MAX_ANSWER {
                    return Err(format!("GET {path}: answer larger than {MAX_ANSWER} bytes"));
                }
            }
            Err(e) => return Err(format!("GET {path}: {e}")),
        }
    }
    let (status, body) = parse_response(&raw).map_err(|e| format!("GET {path}: {e}"))?;
    match status {
        200 => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("GET {path}: not JSON: {e}")),
        404 => Ok(None),
        s => Err(format!(
            "GET {path}: HTTP {s}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )),
    }
}

/// The status code and body of a whole HTTP/1.1 response (`Content-Length`,
/// chunked, or up to the close).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("no status line")?;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let body = &raw[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size without end")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunks_or_close_are_read_whole() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\n{}";
        assert_eq!(parse_response(missing).unwrap().0, 404);
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .unwrap_err()
                .contains("cut short")
        );
        assert!(parse_response(b"garbage").unwrap_err().contains("headers"));
    }

    #[test]
    fn the_digest_is_the_manifests_where_a_registry_gave_one() {
        let image = serde_json::json!({
            "Id": "sha256:e454",
            "RepoDigests": ["localhost/egress-probe@sha256:aaa5"]
        });
        assert_eq!(manifest_digest(&image).as_deref(), Some("sha256:aaa5"));
        assert_eq!(
            manifest_digest(&serde_json::json!({"RepoDigests": []})),
            None
        );
        assert_eq!(manifest_digest(&serde_json::json!({})), None);
    }

    /// A fake engine on a unix socket: a Kubernetes container (cri-dockerd
    /// labels) and its image. The answer is read once and kept; the pod
    /// and the container's name come from the labels; a container the
    /// engine does not know is None and not asked again at once.
    #[test]
    fn a_kubernetes_container_is_named_from_its_labels_and_asked_once() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let id = "ab".repeat(32);
        let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = asked.clone();
        let known_id = id.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(5) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap();
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                log.lock().unwrap().push(line.clone());
                let (status, body) = if line.contains(&format!("/containers/{known_id}/json")) {
                    (
                        "200 OK",
                        serde_json::json!({
                            "Name": "/k8s_vllm_vllm-0_inference_uid_0",
                            "Image": "sha256:e454",
                            "Config": {"Image": "registry.example/llm/vllm:v2", "Labels": {
                                "io.kubernetes.container.name": "vllm",
                                "io.kubernetes.pod.name": "vllm-0",
                                "io.kubernetes.pod.namespace": "inference",
                                "io.kubernetes.sandbox.id": "5a"}}
                        }),
                    )
                } else if line.contains("/containers/5a/json") {
                    (
                        "200 OK",
                        serde_json::json!({"Config": {"Labels": {
                            "app": "vllm", "team": "llm",
                            "io.kubernetes.pod.uid": "1b2c",
                            "annotation.kubernetes.io/config.seen": "x"}}}),
                    )
                } else if line.contains("/images/sha256:e454/json") {
                    (
                        "200 OK",
                        serde_json::json!({"RepoDigests": ["registry.example/llm/vllm@sha256:aaa5"]}),
                    )
                } else {
                    (
                        "404 Not Found",
                        serde_json::json!({"message": "no such container"}),
                    )
                };
                let body = body.to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let mut c = Containers::find(&[path]).unwrap();
        let want = Meta {
            image: "registry.example/llm/vllm:v2".into(),
            image_digest: "sha256:aaa5".into(),
            name: "vllm".into(),
            pod_name: "vllm-0".into(),
            pod_namespace: "inference".into(),
            pod_labels: [("app", "vllm"), ("team", "llm")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert_eq!(c.lookup(&id, Runtime::Docker).as_deref(), Some(&want));
        assert_eq!(c.lookup(&id, Runtime::Docker).as_deref(), Some(&want));
        let other = "cd".repeat(32);
        assert_eq!(c.lookup(&other, Runtime::Docker), None);
        assert_eq!(c.lookup(&other, Runtime::Docker), None);
        assert_eq!(
            asked.lock().unwrap().len(),
            4,
            "{:?}",
            asked.lock().unwrap()
        );
        assert!(!c.status().contains("failing"), "{}", c.status());
    }

    #[test]
    fn a_given_socket_that_does_not_exist_is_an_error() {
        let err = Containers::find(&[PathBuf::from("/nonexistent/podman.sock")])
            .err()
            .unwrap();
        assert!(
            err.contains("/nonexistent/podman.sock: no such socket"),
            "{err}"
        );
    }

    #[test]
    fn without_a_runtime_a_lookup_asks_nothing_and_status_says_why() {
        let mut c = Containers::none();
        assert_eq!(c.lookup(&"a".repeat(64), Runtime::Podman), None);
        assert!(
            c.status().starts_with("no runtime socket"),
            "{}",
            c.status()
        );
    }
}
