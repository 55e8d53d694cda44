//! Containers for real: Podman (from Debian, as root) runs an image built
//! here from busybox-static, in a cgroup below the test's selected one and
//! in the test's client network namespace. Its attempts reach the daemon
//! with the container's ID from the cgroup path, and its image, digest and
//! name from the runtime's Docker Engine API socket (`podman system
//! service`); the filters, flows, status and the bundle show them.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// `podman ARGS`, its stdout; panics with its stderr on failure.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("podman is installed by `cargo xtask test`'s setup");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The runtime of one test: its API service on a socket of the test's own,
/// an image of its own, and the cgroup directories the v1 controllers of a
/// hybrid host get below the test's root; all removed on drop.
struct Podman {
    service: Child,
    socket: PathBuf,
    image: String,
    /// The test's cgroup root, relative to the cgroup mounts.
    root: String,
}

impl Podman {
    fn start(env: &TestEnv) -> Self {
        let socket = env.dir.path().join("podman.sock");
        let service = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start podman system service");
        let image = format!("localhost/egress-probe-{}:test", env.id);
        let mut p = Podman {
            service,
            socket,
            image,
            root: env.rel(""),
        };
        // A one-file image: busybox-static, nothing from a registry.
        let ctx = env.dir.path().join("image");
        std::fs::create_dir_all(ctx.join("rootfs/bin")).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("rootfs/bin/busybox"))
            .expect("/bin/busybox (busybox-static, installed by the setup)");
        std::fs::write(
            ctx.join("Containerfile"),
            // The command, unless a run gives one: what a pod's sandbox
            // (containerd's "pause") does.
            "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/bin/busybox\"]\nCMD [\"sleep\", \"3600\"]\n",
        )
        .unwrap();
        podman(&["build", "-q", "-t", &p.image, &ctx.display().to_string()]);
        let deadline = Instant::now() + WAIT;
        while !p.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "podman system service made no socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p.root = p.root.trim_end_matches('/').to_string();
        p
    }

    /// Runs `busybox ARGS` in a container of cgroup `sub` of the test and
    /// its client namespace, to its end; returns the container's ID.
    fn run(&self, env: &TestEnv, name: &str, sub: &str, args: &[&str]) -> String {
        let parent = env.rel(sub);
        let netns = format!("ns:/run/netns/{}", env.client_ns);
        let mut cmd = vec![
            "run",
            "-d",
            "--name",
            name,
            // Hybrid cgroup hosts (this one): runc, not crun; limits no
            // higher than the test's own, which a non-CAP_SYS_RESOURCE
            // sandbox cannot raise.
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--cgroup-parent",
            &parent,
            "--network",
            &netns,
            &self.image,
        ];
        cmd.extend_from_slice(args);
        let id = podman(&cmd);
        podman(&["wait", name]);
        id
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-a", "--filter"])
            .arg(format!("ancestor={}", self.image))
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
        let _ = self.service.kill();
        let _ = self.service.wait();
        remove_v1_cgroups(&self.root);
    }
}

/// Removes `rel` (deepest first) from every cgroup v1 hierarchy: runc
/// makes a container's parent in each controller of a hybrid host.
fn remove_v1_cgroups(rel: &str) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup") {
            continue;
        }
        let Some(mount) = left.split_whitespace().nth(4) else {
            continue;
        };
        let top = Path::new(mount).join(rel.trim_start_matches('/'));
        if top == Path::new(mount) || !top.exists() {
            continue;
        }
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() && i < 10_000 {
            if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                dirs.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Ground truth, what reached the test hosts: the container's 6 bytes
/// (`hello\n`) at the DE host, nothing at the US host.
fn only_the_de_host_received_the_line(env: &TestEnv) {
    let deadline = Instant::now() + WAIT;
    while !env
        .received()
        .iter()
        .any(|v| v["data"] == 6 && !from_us_side(v))
    {
        assert!(
            Instant::now() < deadline,
            "the DE host never received the container's 6 bytes: {:?}",
            env.received()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !env.received().iter().any(from_us_side),
        "the US host received something: {:?}",
        env.received()
    );
}

/// A container in the selected cgroup is refused the US host and let
/// through to the DE host (the hosts count what arrived); both events
/// carry the container's ID and runtime from its cgroup path and its
/// image, digest and name from Podman, and the process inside it with its
/// parent. `--image`, `--container`, `flows --group-by image`, the table
/// views, `status` and an exported bundle show the same.
#[test]
fn a_containers_attempts_carry_its_image_and_name() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    let runtime = Podman::start(&env);
    let socket = runtime.socket.display().to_string();
    env.start_daemon(&["--container-runtime-socket", &socket]);
    let since = now_rfc3339();
    let port = env.fresh_port().to_string();
    let name = format!("emt-{}-probe", env.id);
    // busybox nc waits for the server to close after its input ends: the
    // test server never does, so the line's nc is ended after 3 s.
    let script = format!(
        "nc -w 2 {US_V4} {port} </dev/null; echo hello | timeout -s KILL 3 nc {DE_V4} {port}; exit 0"
    );
    let id = runtime.run(&env, &name, "sel", &["sh", "-c", &script]);
    assert_eq!(id.len(), 64, "podman run -d printed the container ID: {id}");
    let digest = podman(&["image", "inspect", "-f", "{{.Digest}}", &runtime.image]);

    let refused = env.expect_event("the container's refused attempt", WAIT, |e| {
        s(e, "container_id") == id && s(e, "dst_ip") == US_V4
    });
    eprintln!("{refused:#}");
    assert_eq!(s(&refused, "verdict"), "denied", "{refused}");
    assert_eq!(s(&refused, "runtime"), "podman", "{refused}");
    assert_eq!(s(&refused, "image"), runtime.image, "{refused}");
    assert_eq!(s(&refused, "image_digest"), digest, "{refused}");
    assert_eq!(s(&refused, "container_name"), name, "{refused}");
    assert_eq!(s(&refused, "exe"), "/bin/busybox", "{refused}");
    // busybox sh runs nc by exec of /proc/self/exe: named as busybox, its
    // parent the container's shell.
    assert_eq!(
        args_of(&refused).first().map(String::as_str),
        Some("nc"),
        "{refused}"
    );
    assert_eq!(s(&refused, "parent_exe"), "/bin/busybox", "{refused}");
    assert!(refused["ppid"].as_u64().is_some_and(|p| p > 0), "{refused}");
    let allowed = env.expect_event("the container's allowed attempt", WAIT, |e| {
        s(e, "container_id") == id && s(e, "dst_ip") == DE_V4
    });
    assert_eq!(s(&allowed, "verdict"), "allowed", "{allowed}");
    assert_eq!(s(&allowed, "image"), runtime.image, "{allowed}");
    only_the_de_host_received_the_line(&env);

    // The store: by image (its last part, and its digest) and by container
    // (name, ID prefix); another image finds nothing.
    let image_name = runtime.image.rsplit('/').next().unwrap().to_string();
    for filter in [
        ["--image", image_name.as_str()],
        ["--image", digest.as_str()],
        ["--container", name.as_str()],
        ["--container", &id[..12]],
    ] {
        let mut args = vec!["events", "--since", "10m", "-o", "json"];
        args.extend_from_slice(&filter);
        let found = json_lines(&env.cli(&args));
        assert_eq!(found.len(), 2, "events {filter:?}: {found:#?}");
        assert!(
            found
                .iter()
                .all(|e| s(e, "image") == runtime.image && s(e, "container_id") == id),
            "events {filter:?}: {found:#?}"
        );
    }
    let none =
        json_lines(&env.cli(&["events", "--since", "10m", "-o", "json", "--image", "vllm*"]));
    assert!(none.is_empty(), "--image vllm*: {none:#?}");
    let table = env.cli_ok(&["events", "--since", "10m", "--container", &name]);
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!("container {name} ({})", &id[..12]))
                && l.contains(&format!("image {}", runtime.image))),
        "{table}"
    );
    let by_image = env.flows(&["--group-by", "image,verdict"]);
    let refused_flows = by_image
        .iter()
        .find(|f| s(f, "image") == runtime.image && s(f, "verdict") == "denied")
        .unwrap_or_else(|| panic!("a denied flow of the image: {by_image:#?}"));
    assert_eq!(refused_flows["count"].as_u64(), Some(1), "{refused_flows}");
    let grouped = env.cli_ok(&["flows", "--group-by", "image,verdict"]);
    eprintln!("{grouped}");
    assert!(
        grouped.lines().next().unwrap_or("").contains("IMAGE"),
        "{grouped}"
    );

    let status: Value = serde_json::from_str(&env.cli_ok(&["status", "-o", "json"])).unwrap();
    assert!(
        s(&status, "containers").contains(&socket),
        "status names the runtime socket: {status:#}"
    );

    // The bundle's records carry the same.
    let bundle = export_window(&env, &since, "now", "containers.tar.gz");
    let records: Vec<Value> = bundle_file(&bundle, "events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let in_bundle = records
        .iter()
        .find(|e| s(e, "container_id") == id && s(e, "verdict") == "denied")
        .unwrap_or_else(|| panic!("the refusal in the bundle: {records:#?}"));
    assert_eq!(s(in_bundle, "image"), runtime.image);
    assert_eq!(s(in_bundle, "container_name"), name);
}

/// A runtime socket that is given but does not exist stops the daemon with
/// the reason; one that stops answering is reported in `status`, and the
/// container's events still carry its ID.
#[test]
fn a_missing_or_silent_runtime_is_said_and_events_keep_the_id() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    let missing = env.dir.path().join("nothing.sock");
    // Refused before anything is loaded; the test's own places all the
    // same, should that ever change.
    let out = Command::new(daemon_bin())
        .args(["daemon", "--container-runtime-socket"])
        .arg(&missing)
        .arg("--policies")
        .arg(env.policy_dir())
        .arg("--cgroup-root")
        .arg(&env.cgroup_root)
        .arg("--pin-dir")
        .arg(env.pin_dir())
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--container-runtime-socket {}: no such socket",
            missing.display()
        )),
        "{err}"
    );

    let runtime = Podman::start(&env);
    // A socket nobody answers on: the service's, once the service is gone.
    let silent = env.dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    drop(_listener);
    let silent_path = silent.display().to_string();
    env.start_daemon(&["--container-runtime-socket", &silent_path]);
    let port = env.fresh_port().to_string();
    let name = format!("emt-{}-silent", env.id);
    let script = format!("nc -w 2 {US_V4} {port} </dev/null; exit 0");
    let id = runtime.run(&env, &name, "sel", &["sh", "-c", &script]);
    let e = env.expect_event("the container's attempt", WAIT, |e| {
        s(e, "container_id") == id
    });
    assert_eq!(s(&e, "runtime"), "podman", "{e}");
    assert_eq!(s(&e, "image"), "", "no runtime answered: {e}");
    let status: Value = serde_json::from_str(&env.cli_ok(&["status", "-o", "json"])).unwrap();
    let said = s(&status, "containers");
    assert!(
        said.contains(&silent_path) && said.contains("failing"),
        "status says the runtime fails: {said}"
    );
    env.wait_log("container runtime at", WAIT);
}

use monitor::containers::cri::{self, pb};

/// containerd with its CRI plugin, as on a Kubernetes node, but all its
/// own: its root, state, sockets and runc state below the test's
/// directory; an image of the test's own imported into its `k8s.io`
/// namespace (the one CRI reads), which also serves as the pod's sandbox
/// image. A pod made the way the kubelet makes one (no kubelet here).
struct Containerd {
    daemon: Child,
    dir: PathBuf,
    socket: PathBuf,
    image: String,
    /// Its image as Podman built it (removed with the runtime).
    built: Podman,
    rt: tokio::runtime::Runtime,
    sandboxes: Vec<String>,
}

impl Containerd {
    fn start(env: &TestEnv) -> Self {
        let built = Podman::start(env);
        let dir = env.dir.path().join("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let d = dir.display();
        // The CNI directories stay empty: pods share the node's network
        // (as hostNetwork pods do), so no CNI plugin is called.
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # The sandbox's oom_score_adj of -998 needs CAP_SYS_RESOURCE, which
  # root here lacks (as in a rootless setup).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "{d}/runc"
"#,
                image = built.image
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd is installed by `cargo xtask test`'s setup");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = Containerd {
            daemon,
            socket,
            image: built.image.clone(),
            built,
            rt,
            dir,
            sandboxes: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        while !c.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd made no socket: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The image, from Podman's store into containerd's, by its name.
        let archive = c.dir.join("image.tar");
        podman(&[
            "save",
            "--format",
            "docker-archive",
            "-o",
            &archive.display().to_string(),
            &c.image,
        ]);
        c.ctr(&["images", "import", &archive.display().to_string()]);
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` on this containerd's CRI namespace.
    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr (containerd's client)");
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn client(
        &self,
    ) -> pb::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        let _inside = self.rt.enter();
        pb::runtime_service_client::RuntimeServiceClient::new(cri::channel(
            &self.socket,
            Duration::from_secs(30),
        ))
    }

    /// A pod as the kubelet makes it (its labels, and the kubelet's own on
    /// it and its container) in cgroup `sub` of the test, below a kubelet
    /// layout (`kubepods/besteffort/pod<uid>/<container>`); its one
    /// container runs `busybox ARGS` in the test's client network
    /// namespace (entered with nsenter: a pod of the node's network, and
    /// privileged for that). Returns the container's ID.
    fn run_pod(&mut self, env: &TestEnv, sub: &str, uid: &str, args: &[&str]) -> String {
        let kubelet_labels = |container: Option<&str>| {
            let mut l: std::collections::HashMap<String, String> = [
                ("io.kubernetes.pod.name", "probe-0"),
                ("io.kubernetes.pod.namespace", "inference"),
                ("io.kubernetes.pod.uid", uid),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            if let Some(c) = container {
                l.insert("io.kubernetes.container.name".into(), c.into());
            }
            l
        };
        let node = Some(pb::NamespaceOption {
            network: pb::NamespaceMode::Node as i32,
            pid: pb::NamespaceMode::Container as i32,
            ipc: pb::NamespaceMode::Pod as i32,
        });
        let mut labels = kubelet_labels(None);
        labels.insert("app".into(), "probe".into());
        labels.insert("team".into(), "llm".into());
        let sandbox = pb::PodSandboxConfig {
            metadata: Some(pb::PodSandboxMetadata {
                name: "probe-0".into(),
                uid: uid.into(),
                namespace: "inference".into(),
                attempt: 0,
            }),
            labels,
            linux: Some(pb::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/kubepods/besteffort/pod{uid}", env.rel(sub)),
                security_context: Some(pb::LinuxSandboxSecurityContext {
                    namespace_options: node,
                    privileged: true,
                }),
            }),
            ..Default::default()
        };
        let mut client = self.client();
        let sandbox_id = self
            .rt
            .block_on(client.run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log()))
            .into_inner()
            .pod_sandbox_id;
        self.sandboxes.push(sandbox_id.clone());
        let mut command = vec![
            "/bin/busybox".to_string(),
            "nsenter".into(),
            format!("--net=/run/netns/{}", env.client_ns),
            "--".into(),
            "/bin/busybox".into(),
        ];
        command.extend(args.iter().map(|a| a.to_string()));
        let container = pb::ContainerConfig {
            metadata: Some(pb::ContainerMetadata {
                name: "probe".into(),
                attempt: 0,
            }),
            image: Some(pb::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command,
            mounts: vec![pb::Mount {
                container_path: "/run/netns".into(),
                host_path: "/run/netns".into(),
                readonly: true,
            }],
            labels: kubelet_labels(Some("probe")),
            linux: Some(pb::LinuxContainerConfig {
                security_context: Some(pb::LinuxContainerSecurityContext {
                    privileged: true,
                    namespace_options: node,
                }),
            }),
            ..Default::default()
        };
        let id = self
            .rt
            .block_on(client.create_container(pb::CreateContainerRequest {
                pod_sandbox_id: sandbox_id,
                config: Some(container),
                sandbox_config: Some(sandbox),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(pb::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log()));
        id
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut client = self.client();
        for id in std::mem::take(&mut self.sandboxes) {
            let _ = self
                .rt
                .block_on(client.stop_pod_sandbox(pb::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }));
            let _ = self.rt.block_on(
                client.remove_pod_sandbox(pb::RemovePodSandboxRequest { pod_sandbox_id: id }),
            );
        }
        let _ = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "rm", &self.image])
            .output();
        // SAFETY: plain syscall; our own child.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        unmount_below(&self.dir);
        remove_v1_cgroups(&self.built.root);
        // The shims' socket directory is containerd's fixed one; removed
        // when empty (a containerd of the machine's keeps it full).
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

/// Unmounts what is still mounted below `dir` (a sandbox's shm, an
/// overlay), deepest first, so that the directory can be removed.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: plain syscall on a path of the test's own directory.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A pod's container on a Kubernetes-like node (containerd's CRI, a
/// kubelet cgroup layout) in the selected cgroup: its refused and its
/// allowed attempts carry the container's ID from the cgroup path, and
/// from CRI its image and the image's ID, its name, and its pod's name,
/// namespace and labels (less the kubelet's); `status` names the CRI
/// socket. The hosts count what arrived.
#[test]
fn a_pods_attempts_carry_its_image_and_pod_from_cri() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    let mut runtime = Containerd::start(&env);
    let socket = runtime.socket.display().to_string();
    env.start_daemon(&["--cri-socket", &socket]);
    let port = env.fresh_port().to_string();
    let script = format!(
        "nc -w 2 {US_V4} {port} </dev/null; echo hello | timeout -s KILL 3 nc {DE_V4} {port}; exit 0"
    );
    let uid = "5f0c4e3a-9d1b-4c6e-8a2f-7b3d1e0c9a41";
    let id = runtime.run_pod(&env, "sel", uid, &["sh", "-c", &script]);
    assert_eq!(
        id.len(),
        64,
        "CreateContainer gave the container's ID: {id}"
    );
    let image_id = format!(
        "sha256:{}",
        podman(&["image", "inspect", "-f", "{{.Id}}", &runtime.image])
    );

    let refused = env.expect_event("the pod's refused attempt", WAIT, |e| {
        s(e, "container_id") == id && s(e, "dst_ip") == US_V4
    });
    eprintln!("{refused:#}");
    assert_eq!(s(&refused, "verdict"), "denied", "{refused}");
    assert_eq!(s(&refused, "pod_uid"), uid, "{refused}");
    assert_eq!(s(&refused, "image"), runtime.image, "{refused}");
    assert_eq!(s(&refused, "image_digest"), image_id, "{refused}");
    assert_eq!(s(&refused, "container_name"), "probe", "{refused}");
    assert_eq!(s(&refused, "pod_name"), "probe-0", "{refused}");
    assert_eq!(s(&refused, "pod_namespace"), "inference", "{refused}");
    assert_eq!(
        refused["pod_labels"],
        serde_json::json!({"app": "probe", "team": "llm"}),
        "the pod's own labels, not the kubelet's: {refused}"
    );
    assert_eq!(s(&refused, "exe"), "/bin/busybox", "{refused}");
    let allowed = env.expect_event("the pod's allowed attempt", WAIT, |e| {
        s(e, "container_id") == id && s(e, "dst_ip") == DE_V4
    });
    assert_eq!(s(&allowed, "verdict"), "allowed", "{allowed}");
    assert_eq!(s(&allowed, "pod_name"), "probe-0", "{allowed}");
    only_the_de_host_received_the_line(&env);
    // Stored in order: once the later attempt is in the store, both are.
    let found = env.wait_stored(
        "of the pod's allowed attempt",
        &["--container", "probe"],
        WAIT,
        |e| s(e, "dst_ip") == DE_V4,
    );
    assert_eq!(found.len(), 2, "events --container probe: {found:#?}");
    let table = env.cli_ok(&["events", "--since", "10m", "--container", "probe"]);
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("pod inference/probe-0") && l.contains("app=probe")),
        "{table}"
    );
    let status: Value = serde_json::from_str(&env.cli_ok(&["status", "-o", "json"])).unwrap();
    let said = s(&status, "containers");
    assert_eq!(said, format!("{socket} (CRI)"), "{status:#}");
}
