//! The Kubernetes Container Runtime Interface (containerd, CRI-O): what
//! the runtime says of a container and of its pod, over gRPC on the
//! runtime's unix socket.
//!
//! The client is asynchronous and lookups are not (they run on the
//! enrichment path, under the resolver's lock, like the Docker Engine
//! API's): each socket has a thread of its own with a runtime of its own,
//! and a lookup waits for its answer at most `ANSWER`. A container costs
//! three requests, once: `ListContainers` (its pod sandbox),
//! `ContainerStatus` (its image as the runtime resolves it: a tag and the
//! registry's digest where the image has them) and `PodSandboxStatus` (the
//! pod's name, namespace and labels; once per pod).
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::mpsc,
    time::Duration,
};

use tonic::{
    transport::{Channel, Endpoint},
    Code, Status,
};

use super::{own_labels, Meta, KEPT, TIMEOUT};

pub mod pb {
    tonic::include_proto!("runtime.v1");
}

type Cri = pb::runtime_service_client::RuntimeServiceClient<Channel>;

/// How long a lookup waits for its three requests.
const ANSWER: Duration = Duration::from_millis(4 * TIMEOUT.as_millis() as u64);

type Ask = (String, mpsc::SyncSender<Result<Option<Meta>, String>>);

/// One CRI runtime socket, asked from its own thread.
pub struct Client {
    ask: mpsc::Sender<Ask>,
}

/// A pod, as its sandbox's status says.
#[derive(Clone, Default)]
struct Pod {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
}

impl Client {
    /// The client of the runtime at `path`; it connects at the first
    /// question (a runtime that starts after the daemon is found then).
    pub fn start(path: &Path) -> Client {
        let (ask, asks) = mpsc::channel::<Ask>();
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("cri".into())
            .spawn(move || serve(&path, asks));
        if let Err(e) = spawned {
            // The asks then find no thread: each lookup says so.
            log::warn!("cannot start the CRI client's thread: {e}");
        }
        Client { ask }
    }

    /// What the runtime says of container `id`; None when it has no such
    /// container.
    pub fn inspect(&self, id: &str) -> Result<Option<Meta>, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.ask
            .send((id.to_string(), reply))
            .map_err(|_| "the CRI client's thread is gone".to_string())?;
        answer
            .recv_timeout(ANSWER)
            .map_err(|_| format!("no answer within {ANSWER:?}"))?
    }
}

/// The client's thread: one question at a time, to its end.
fn serve(path: &Path, asks: mpsc::Receiver<Ask>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let why = format!("cannot start the CRI client's runtime: {e}");
            for (_, reply) in asks {
                let _ = reply.send(Err(why.clone()));
            }
            return;
        }
    };
    let _inside = rt.enter();
    let mut client = Cri::new(channel(path, TIMEOUT));
    let mut pods: HashMap<String, Pod> = HashMap::new();
    for (id, reply) in asks {
        let answer = rt.block_on(inspect(&mut client, &id, &mut pods));
        let _ = reply.send(answer);
    }
}

/// A channel to the runtime at `path`, connected at its first request,
/// each request bounded by `timeout`. Called inside a Tokio runtime.
pub fn channel(path: &Path, timeout: Duration) -> Channel {
    let socket = path.to_path_buf();
    // The URI is a placeholder: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
}

/// What a failed request says: the call, the status code and its message
/// (a runtime that is not there says so in the message).
fn failed(call: &str, status: Status) -> String {
    if status.code() == Code::Unimplemented {
        // Docker's own containerd, with its CRI plugin off.
        return format!("{call}: the runtime does not serve CRI (is its CRI plugin disabled?)");
    }
    format!("{call}: {:?}: {}", status.code(), status.message())
}

async fn inspect(
    client: &mut Cri,
    id: &str,
    pods: &mut HashMap<String, Pod>,
) -> Result<Option<Meta>, String> {
    let listed = client
        .list_containers(pb::ListContainersRequest {
            filter: Some(pb::ContainerFilter {
                id: id.to_string(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| failed("ListContainers", s))?
        .into_inner();
    // The filter may match by prefix: only the very container counts.
    let Some(container) = listed.containers.into_iter().find(|c| c.id == id) else {
        return Ok(None);
    };
    let status = match client
        .container_status(pb::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
    {
        Ok(r) => r.into_inner().status.unwrap_or_default(),
        // Gone between the two requests.
        Err(s) if s.code() == Code::NotFound => return Ok(None),
        Err(s) => return Err(failed("ContainerStatus", s)),
    };
    let sandbox = container.pod_sandbox_id.clone();
    let pod = match pods.get(&sandbox) {
        Some(pod) => pod.clone(),
        None => {
            let pod = match client
                .pod_sandbox_status(pb::PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox.clone(),
                    verbose: false,
                })
                .await
            {
                Ok(r) => {
                    let s = r.into_inner().status.unwrap_or_default();
                    let m = s.metadata.unwrap_or_default();
                    Pod {
                        name: m.name,
                        namespace: m.namespace,
                        labels: own_labels(s.labels.into_iter().collect()),
                    }
                }
                // The container outlived its sandbox's record: its own
                // labels still name the pod.
                Err(s) if s.code() == Code::NotFound => Pod::default(),
                Err(s) => return Err(failed("PodSandboxStatus", s)),
            };
            if pods.len() >= KEPT {
                pods.clear();
            }
            pods.insert(sandbox, pod.clone());
            pod
        }
    };
    Ok(Some(meta_of(container, status, pod)))
}

/// The answer, from the container's listing, its status and its pod's.
fn meta_of(container: pb::Container, status: pb::ContainerStatus, pod: Pod) -> Meta {
    let label = |k: &str| {
        status
            .labels
            .get(k)
            .or_else(|| container.labels.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let or = |a: String, b: String| if a.is_empty() { b } else { a };
    let image = or(
        status.image.clone().unwrap_or_default().image,
        container.image.clone().unwrap_or_default().image,
    );
    let image_ref = or(status.image_ref.clone(), container.image_ref.clone());
    let name = or(
        label("io.kubernetes.container.name"),
        or(
            status.metadata.clone().unwrap_or_default().name,
            container.metadata.clone().unwrap_or_default().name,
        ),
    );
    Meta {
        image,
        image_digest: digest_of(&image_ref),
        name,
        pod_name: or(pod.name, label("io.kubernetes.pod.name")),
        pod_namespace: or(pod.namespace, label("io.kubernetes.pod.namespace")),
        pod_labels: pod.labels,
    }
}

/// `sha256:...` of an image reference: the registry's digest of
/// `name@sha256:...`, or the image ID the runtime gives where the image
/// came from no registry.
fn digest_of(image_ref: &str) -> String {
    match image_ref.rsplit_once('@') {
        Some((_, d)) if d.starts_with("sha256:") => d.to_string(),
        _ if image_ref.starts_with("sha256:") => image_ref.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_registrys_else_the_image_id() {
        assert_eq!(
            digest_of("registry.example/llm/vllm@sha256:aaa5"),
            "sha256:aaa5"
        );
        assert_eq!(digest_of("sha256:e454"), "sha256:e454");
        assert_eq!(digest_of("registry.example/llm/vllm:v2"), "");
        assert_eq!(digest_of(""), "");
    }

    /// The kubelet's labels name the container and the pod; the sandbox's
    /// status names the pod where it has it, and its own labels are the
    /// pod's less the kubelet's.
    #[test]
    fn a_container_is_named_by_the_kubelets_labels_and_its_pod_by_its_sandbox() {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.container.name", "vllm"),
            ("io.kubernetes.pod.name", "vllm-0"),
            ("io.kubernetes.pod.namespace", "inference"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let container = pb::Container {
            id: "ab".repeat(32),
            pod_sandbox_id: "5a".into(),
            metadata: Some(pb::ContainerMetadata {
                name: "vllm".into(),
                attempt: 0,
            }),
            image: Some(pb::ImageSpec {
                image: "sha256:e454".into(),
                ..Default::default()
            }),
            image_ref: "sha256:e454".into(),
            labels: labels.clone(),
        };
        let status = pb::ContainerStatus {
            image: Some(pb::ImageSpec {
                image: "registry.example/llm/vllm:v2".into(),
                ..Default::default()
            }),
            image_ref: "registry.example/llm/vllm@sha256:aaa5".into(),
            labels,
            ..Default::default()
        };
        let pod = Pod {
            name: "vllm-0".into(),
            namespace: "inference".into(),
            labels: own_labels(
                [("app", "vllm"), ("io.kubernetes.pod.uid", "1b2c")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        };
        let meta = meta_of(container.clone(), status, pod);
        assert_eq!(meta.image, "registry.example/llm/vllm:v2");
        assert_eq!(meta.image_digest, "sha256:aaa5");
        assert_eq!(meta.name, "vllm");
        assert_eq!(
            (meta.pod_name.as_str(), meta.pod_namespace.as_str()),
            ("vllm-0", "inference")
        );
        assert_eq!(
            meta.pod_labels.into_iter().collect::<Vec<_>>(),
            [("app".to_string(), "vllm".to_string())]
        );
        // No status image and no sandbox record: the listing and the
        // labels still answer.
        let bare = meta_of(container, pb::ContainerStatus::default(), Pod::default());
        assert_eq!(
            (bare.image.as_str(), bare.image_digest.as_str()),
            ("sha256:e454", "sha256:e454")
        );
        assert_eq!(bare.pod_name, "vllm-0");
    }

    /// A gRPC server that is not a CRI runtime (Docker's own containerd
    /// with its CRI plugin off answers so): the lookup says so.
    #[test]
    fn a_runtime_without_cri_is_said_to_be_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let (_, health) = tonic_health::server::health_reporter();
                let _ = tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await;
            });
        });
        let err = Client::start(&path).inspect(&"ab".repeat(32)).unwrap_err();
        assert_eq!(
            err,
            "ListContainers: the runtime does not serve CRI (is its CRI plugin disabled?)"
        );
    }

    /// A socket where nothing speaks gRPC: the lookup fails in bounded
    /// time and says which request and why.
    #[test]
    fn a_socket_that_does_not_answer_is_an_error_naming_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        // Accepts and closes at once.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().take(8) {
                drop(s);
            }
        });
        let client = Client::start(&path);
        let err = client.inspect(&"ab".repeat(32)).unwrap_err();
        assert!(err.starts_with("ListContainers: "), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = client.inspect(&"ab".repeat(32)).unwrap_err();
        assert!(err.starts_with("ListContainers: Unavailable"), "{err}");
    }
}
