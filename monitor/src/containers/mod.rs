//! What a container is, from its runtime: the image (name and digest), the
//! container's name, and for a Kubernetes container its pod's name,
//! namespace and labels, asked once per container over the runtime's unix
//! socket and kept. The cgroup path gives only the container's ID (`attribution`).
//!
//! Two protocols answer here:
//! - CRI (gRPC, `cri`): containerd (`/run/containerd/containerd.sock`, k3s'
//!   `/run/k3s/containerd/containerd.sock`) and CRI-O
//!   (`/run/crio/crio.sock`), the runtimes of Kubernetes nodes;
//! - the Docker Engine API (`engine`): Docker (`/run/docker.sock`) and
//!   Podman (`/run/podman/podman.sock`, from `podman system service`).
//!
//! A container is asked of the runtime its cgroup names first, then of the
//! others. A lookup runs when the daemon first resolves a container's
//! cgroup, on the enrichment path, bounded by `TIMEOUT` per request; a
//! container the runtime could not answer for is asked again after `RETRY`
//! (its events carry the ID meanwhile). A runtime that cannot be reached is
//! logged once, until it answers again, and shown in `status`.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::attribution::Runtime;

pub mod cri;
mod engine;

/// How a runtime is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The Kubernetes Container Runtime Interface (gRPC).
    Cri,
    /// The Docker Engine API (HTTP).
    Engine,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Cri => "CRI",
            Protocol::Engine => "Docker Engine API",
        }
    }
}

/// Where the runtimes listen by default, probed in this order.
pub const SOCKETS: [(&str, Runtime, Protocol); 6] = [
    (
        "/run/containerd/containerd.sock",
        Runtime::Containerd,
        Protocol::Cri,
    ),
    (
        "/run/k3s/containerd/containerd.sock",
        Runtime::Containerd,
        Protocol::Cri,
    ),
    ("/run/crio/crio.sock", Runtime::CriO, Protocol::Cri),
    ("/run/podman/podman.sock", Runtime::Podman, Protocol::Engine),
    ("/run/docker.sock", Runtime::Docker, Protocol::Engine),
    ("/var/run/docker.sock", Runtime::Docker, Protocol::Engine),
];

/// How long one request to a runtime may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_millis(250);
/// A container the runtime could not answer for is asked again after this.
const RETRY: Duration = Duration::from_secs(30);
/// An answer is asked again after this, at the container's next event: a
/// live pod's labels change (`kubectl label`).
const REFRESH: Duration = Duration::from_secs(60);
/// Containers and images kept at once (then the cache starts over).
const KEPT: usize = 16_384;

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

/// The runtime sockets named on the command line: `--cri-socket` and
/// `--container-runtime-socket` (Docker Engine API).
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub cri: Vec<PathBuf>,
    pub engine: Vec<PathBuf>,
}

impl Given {
    fn all(&self) -> impl Iterator<Item = (&PathBuf, Protocol, &'static str)> {
        let cri = self.cri.iter().map(|p| (p, Protocol::Cri, "--cri-socket"));
        let engine = self
            .engine
            .iter()
            .map(|p| (p, Protocol::Engine, "--container-runtime-socket"));
        cri.chain(engine)
    }

    fn is_empty(&self) -> bool {
        self.cri.is_empty() && self.engine.is_empty()
    }
}

/// Refuses a given socket that does not exist (the daemon checks before it
/// loads anything).
pub fn check(given: &Given) -> Result<(), String> {
    match given.all().find(|(p, _, _)| !p.exists()) {
        Some((p, _, flag)) => Err(format!("{flag} {}: no such socket", p.display())),
        None => Ok(()),
    }
}

/// Of a container's or a pod sandbox's labels, the pod's own (`app`,
/// `team`, ...): less what the kubelet and the runtime add
/// (`io.kubernetes.*`, cri-dockerd's `annotation.*`).
fn own_labels(labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .into_iter()
        .filter(|(k, _)| !k.starts_with("io.kubernetes.") && !k.starts_with("annotation."))
        .collect()
}

/// How one runtime socket is asked.
enum Talk {
    Cri(cri::Client),
    Engine,
}

/// One runtime socket.
struct Socket {
    path: PathBuf,
    runtime: Runtime,
    talk: Talk,
    /// The last failure, logged once until an answer comes.
    failing: Option<String>,
}

impl Socket {
    fn new(path: &Path, runtime: Runtime, protocol: Protocol) -> Self {
        Socket {
            path: path.to_path_buf(),
            runtime,
            talk: match protocol {
                Protocol::Cri => Talk::Cri(cri::Client::start(path)),
                Protocol::Engine => Talk::Engine,
            },
            failing: None,
        }
    }

    fn protocol(&self) -> Protocol {
        match self.talk {
            Talk::Cri(_) => Protocol::Cri,
            Talk::Engine => Protocol::Engine,
        }
    }
}

/// What is known of one container.
enum Known {
    /// The runtime's answer, and when it was last asked.
    Answered { meta: Arc<Meta>, at: Instant },
    /// When the runtime was last asked in vain.
    Unanswered(Instant),
}

pub struct Containers {
    sockets: Vec<Socket>,
    /// By container ID: what the runtime said, or when it was last asked
    /// in vain.
    known: HashMap<String, Known>,
    /// `REFRESH`, shorter in tests.
    refresh: Duration,
    /// Image ID -> digest.
    digests: HashMap<String, String>,
    /// `status()`, for the API, as it changes.
    shown: Arc<RwLock<String>>,
}

impl Containers {
    /// The runtimes at `given` (`--container-runtime-socket`), or at those
    /// of `SOCKETS` that exist. A given socket that does not exist is an
    /// error: configuration that would silently find nothing.
    pub fn find(given: &Given) -> Result<Self, String> {
        check(given)?;
        let mut sockets = Vec::new();
        for (p, protocol, _) in given.all() {
            sockets.push(Socket::new(p, Runtime::Unknown, protocol));
        }
        if given.is_empty() {
            // `/var/run` is usually `/run`: one socket is asked once.
            let mut seen = Vec::new();
            for (p, runtime, protocol) in SOCKETS {
                let Ok(real) = Path::new(p).canonicalize() else {
                    continue;
                };
                if !seen.contains(&real) {
                    seen.push(real);
                    sockets.push(Socket::new(Path::new(p), runtime, protocol));
                }
            }
        }
        let c = Containers {
            sockets,
            known: HashMap::new(),
            refresh: REFRESH,
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
            refresh: REFRESH,
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
                "no runtime socket ({}; or give --cri-socket or --container-runtime-socket): containers carry their ID and runtime from the cgroup path, no image or name",
                SOCKETS.map(|(p, _, _)| p).join(", ")
            );
        }
        self.sockets
            .iter()
            .map(|s| {
                let (path, protocol) = (s.path.display(), s.protocol().as_str());
                match &s.failing {
                    None => format!("{path} ({protocol})"),
                    Some(why) => format!("{path} ({protocol}): failing: {why}"),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What the runtime says of container `id` (of `runtime`, as its cgroup
    /// path tells), asked once and kept; asked again after `REFRESH`, when
    /// the same answer keeps its `Arc` (callers compare by pointer) and a
    /// new one replaces it. A container the runtime no longer knows keeps
    /// its last answer.
    pub fn lookup(&mut self, id: &str, runtime: Runtime) -> Option<Arc<Meta>> {
        if self.sockets.is_empty() || id.is_empty() {
            return None;
        }
        let kept = match self.known.get(id) {
            Some(Known::Answered { meta, at }) if at.elapsed() < self.refresh => {
                return Some(meta.clone())
            }
            Some(Known::Answered { meta, .. }) => Some(meta.clone()),
            Some(Known::Unanswered(at)) if at.elapsed() < RETRY => return None,
            _ => None,
        };
        if self.known.len() >= KEPT {
            self.known.clear();
        }
        let meta = match (self.ask(id, runtime), kept) {
            (Some(new), Some(old)) if new != *old => {
                log::info!(
                    "container {}: the runtime's answer changed (image {}, pod labels {:?})",
                    &id[..id.len().min(12)],
                    new.image,
                    new.pod_labels
                );
                Arc::new(new)
            }
            (_, Some(old)) => old,
            (Some(new), None) => Arc::new(new),
            (None, None) => {
                self.known
                    .insert(id.to_string(), Known::Unanswered(Instant::now()));
                return None;
            }
        };
        self.known.insert(
            id.to_string(),
            Known::Answered {
                meta: meta.clone(),
                at: Instant::now(),
            },
        );
        Some(meta)
    }

    /// Asks the sockets, the one of the container's own runtime first.
    fn ask(&mut self, id: &str, runtime: Runtime) -> Option<Meta> {
        let mut order: Vec<usize> = (0..self.sockets.len()).collect();
        order.sort_by_key(|&i| self.sockets[i].runtime != runtime);
        for i in order {
            let answer = match &self.sockets[i].talk {
                Talk::Cri(client) => client.inspect(id),
                Talk::Engine => engine::inspect(&self.sockets[i].path, id, &mut self.digests),
            };
            match answer {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake engine on a unix socket: a Kubernetes container (cri-dockerd
    /// labels) and its image. The answer is read once and kept; the pod
    /// and the container's name come from the labels; a container the
    /// engine does not know is None and not asked again at once.
    #[test]
    fn a_kubernetes_container_is_named_from_its_labels_and_asked_once() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let id = "ab".repeat(32);
        let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = asked.clone();
        let known_id = id.clone();
        // 1: the pod is labelled anew; 2: the container is gone.
        let stage = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let now = stage.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let stage = now.load(std::sync::atomic::Ordering::SeqCst);
                let mut s = stream.unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap();
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap()
                    .to_string();
                log.lock().unwrap().push(line.clone());
                let (status, body) = if stage < 2
                    && line.contains(&format!("/containers/{known_id}/json"))
                {
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
                            "app": "vllm", "team": if stage == 0 { "llm" } else { "platform" },
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
        let mut c = Containers::find(&Given {
            engine: vec![path],
            ..Given::default()
        })
        .unwrap();
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

        // Asked again after the refresh interval: the same answer keeps
        // its Arc, a new label is a new answer, a gone container keeps its
        // last.
        c.refresh = Duration::ZERO;
        let first = c.lookup(&id, Runtime::Docker).unwrap();
        let again = c.lookup(&id, Runtime::Docker).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "an unchanged answer is kept");
        stage.store(1, std::sync::atomic::Ordering::SeqCst);
        let relabeled = c.lookup(&id, Runtime::Docker).unwrap();
        assert!(!Arc::ptr_eq(&first, &relabeled));
        assert_eq!(relabeled.pod_labels["team"], "platform");
        assert_eq!(relabeled.image, want.image);
        stage.store(2, std::sync::atomic::Ordering::SeqCst);
        let gone = c.lookup(&id, Runtime::Docker).unwrap();
        assert!(Arc::ptr_eq(&gone, &relabeled), "the last answer stays");
    }

    #[test]
    fn a_given_socket_that_does_not_exist_is_an_error() {
        let missing = |p: &str| vec![PathBuf::from(p)];
        for (given, want) in [
            (
                Given {
                    engine: missing("/nonexistent/podman.sock"),
                    ..Given::default()
                },
                "--container-runtime-socket /nonexistent/podman.sock: no such socket",
            ),
            (
                Given {
                    cri: missing("/nonexistent/containerd.sock"),
                    ..Given::default()
                },
                "--cri-socket /nonexistent/containerd.sock: no such socket",
            ),
        ] {
            assert_eq!(Containers::find(&given).err().as_deref(), Some(want));
        }
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
