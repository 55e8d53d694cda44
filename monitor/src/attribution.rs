//! Who a cgroup belongs to, from its path alone: the Kubernetes pod (UID and
//! QoS class) and container (ID and runtime) of kubelet's cgroup layouts,
//! for both of its cgroup drivers, and the systemd unit on a plain host.
//!
//! kubelet, systemd driver (runtimes name the container scope):
//!
//! ```text
//! /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '-' as '_'>.slice/cri-containerd-<id>.scope
//! /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/crio-<id>.scope
//! /kubepods.slice/kubepods-pod<uid>.slice/docker-<id>.scope                 (Guaranteed)
//! ```
//!
//! kubelet, cgroupfs driver (containerd and Docker use the bare ID, CRI-O
//! prefixes `crio-`):
//!
//! ```text
//! /kubepods/burstable/pod<uid>/<id>
//! /kubepods/besteffort/pod<uid>/crio-<id>
//! /kubepods/pod<uid>/<id>                                                   (Guaranteed)
//! ```
//!
//! The kubepods tree may sit below other cgroups (kind's
//! `/kubelet.slice/kubelet-kubepods.slice/...`, a nested node, a test
//! root); it is found wherever it starts. Outside a pod, a cgroup belongs to
//! the first systemd unit on its path (`/system.slice/nginx.service`,
//! `/user.slice/user-1000.slice/session-3.scope`), and below
//! `user@UID.service` also to a user unit. A container outside Kubernetes
//! (`/system.slice/docker-<id>.scope`, `/docker/<id>`,
//! `/machine.slice/libpod-<id>.scope`, Podman's cgroupfs
//! `/libpod_parent/libpod-<id>`) gets its ID and runtime too.
//!
//! Everything here is a pure function of the path: no file is read.

/// Kubernetes QoS class, spelled as the API spells `status.qosClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// A container runtime, as the cgroup name tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// cgroupfs driver with containerd or Docker: the directory is the bare
    /// ID, which does not say which.
    Unknown,
}

impl Runtime {
    /// `""` when the path does not say.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Lowercase, with dashes (`1b2c3d4e-...`), as `metadata.uid` shows it;
    /// static pods have a 32-hex-digit UID.
    pub uid: String,
    pub qos: Qos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// 64 lowercase hex digits, as `crictl ps` / `docker ps --no-trunc` show it.
    pub id: String,
    pub runtime: Runtime,
}

/// What the last component of the path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// The pod's own cgroup (its containers are below it).
    Pod,
    /// A container's own cgroup.
    Container,
    /// A systemd unit's own cgroup (system or user unit).
    Unit,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub pod: Option<Pod>,
    pub container: Option<Container>,
    /// The system unit (`nginx.service`, `session-3.scope`,
    /// `user@1000.service`); never set for a cgroup inside a pod.
    pub unit: Option<String>,
    /// The user unit below `user@UID.service` (`app.service`).
    pub user_unit: Option<String>,
    pub leaf: Leaf,
}

impl Default for Attribution {
    fn default() -> Self {
        Attribution::NONE
    }
}

impl Attribution {
    const NONE: Attribution = Attribution {
        pod: None,
        container: None,
        unit: None,
        user_unit: None,
        leaf: Leaf::Other,
    };

    /// The pod UID when this cgroup is the pod's own cgroup.
    pub fn pod_cgroup(&self) -> Option<&str> {
        match (&self.pod, self.leaf) {
            (Some(p), Leaf::Pod) => Some(&p.uid),
            _ => None,
        }
    }

    /// The unit name when this cgroup is a unit's own cgroup.
    pub fn unit_cgroup(&self) -> Option<&str> {
        match self.leaf {
            Leaf::Unit => self.user_unit.as_deref().or(self.unit.as_deref()),
            _ => None,
        }
    }

    /// The unit to show: the user unit when there is one, else the system unit.
    pub fn unit_name(&self) -> Option<&str> {
        self.user_unit.as_deref().or(self.unit.as_deref())
    }
}

/// Unit types that own a cgroup (slices only group them).
const UNIT_TYPES: [&str; 5] = ["service", "scope", "socket", "mount", "swap"];

/// Attributes a cgroup path (relative to the cgroup2 mount, `/`-separated).
pub fn attribute(path: &str) -> Attribution {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut out = Attribution::NONE;
    let mut in_kubepods = false;
    // cgroupfs QoS directories come before the pod directory.
    let mut qos_dir: Option<Qos> = None;
    // Systemd view and containers outside pods.
    let mut unit: Option<String> = None;
    let mut user_unit: Option<String> = None;
    let mut host_container: Option<Container> = None;
    let mut docker_dir = false;
    let last = comps.len().saturating_sub(1);

    for (i, c) in comps.iter().enumerate() {
        let is_last = i == last;
        if out.pod.is_some() {
            // Below the pod: the first container cgroup names the container.
            if out.container.is_none() {
                if let Some(container) = pod_container(c) {
                    out.container = Some(container);
                    if is_last {
                        out.leaf = Leaf::Container;
                    }
                }
            }
            continue;
        }
        if is_kubepods_root(c) {
            in_kubepods = true;
            qos_dir = None;
            continue;
        }
        if in_kubepods {
            match *c {
                "burstable" => qos_dir = Some(Qos::Burstable),
                "besteffort" => qos_dir = Some(Qos::BestEffort),
                _ => {}
            }
            if let Some(pod) = pod_of(c, qos_dir) {
                out.pod = Some(pod);
                if is_last {
                    out.leaf = Leaf::Pod;
                }
                continue;
            }
        }
        // Outside any pod (so far): systemd units and host containers.
        if docker_dir && host_container.is_none() && is_container_id(c) {
            host_container = Some(Container {
                id: c.to_string(),
                runtime: Runtime::Docker,
            });
            if is_last {
                out.leaf = Leaf::Container;
            }
        }
        docker_dir = *c == "docker";
        if host_container.is_none() {
            if let Some(container) = scope_container(c).or_else(|| podman_cgroupfs(c)) {
                host_container = Some(container);
                if is_last {
                    out.leaf = Leaf::Container;
                }
            }
        }
        if let Some(name) = unit_name(c) {
            if unit.is_none() {
                unit = Some(name.to_string());
                if is_last {
                    out.leaf = Leaf::Unit;
                }
            } else if user_unit.is_none() && unit.as_deref().is_some_and(is_user_manager) {
                user_unit = Some(name.to_string());
                if is_last {
                    out.leaf = Leaf::Unit;
                }
            }
        }
    }
    if out.pod.is_none() {
        out.unit = unit;
        out.user_unit = user_unit;
        out.container = host_container;
    }
    out
}

/// `kubepods` (cgroupfs), `kubepods.slice`, `kubelet-kubepods.slice` (a
/// kubelet `--cgroup-root`), but not the QoS slices below them.
fn is_kubepods_root(c: &str) -> bool {
    c == "kubepods"
        || c.strip_suffix(".slice")
            .is_some_and(|s| s == "kubepods" || s.ends_with("-kubepods"))
}

/// A pod cgroup: `kubepods-burstable-pod<uid_>.slice` (systemd) or
/// `pod<uid>` (cgroupfs, QoS from the directory above).
fn pod_of(c: &str, qos_dir: Option<Qos>) -> Option<Pod> {
    if let Some(name) = c.strip_suffix(".slice") {
        let at = name.rfind("-pod")?;
        let (prefix, raw_uid) = (&name[..at], &name[at + 4..]);
        let qos = if prefix.ends_with("kubepods-burstable") {
            Qos::Burstable
        } else if prefix.ends_with("kubepods-besteffort") {
            Qos::BestEffort
        } else if prefix.ends_with("kubepods") {
            Qos::Guaranteed
        } else {
            return None;
        };
        // systemd slice names use '-' for nesting, so kubelet writes the
        // UID's dashes as underscores.
        let uid = normalize_uid(&raw_uid.replace('_', "-"))?;
        return Some(Pod { uid, qos });
    }
    let uid = normalize_uid(c.strip_prefix("pod")?)?;
    Some(Pod {
        uid,
        qos: qos_dir.unwrap_or(Qos::Guaranteed),
    })
}

/// A UID as Kubernetes shows it: an RFC 4122 UUID, or the 32 hex digits
/// kubelet gives static pods; lowercase.
pub fn normalize_uid(s: &str) -> Option<String> {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = if s.len() == 36 {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == 5
            && hex(parts[0], 8)
            && hex(parts[1], 4)
            && hex(parts[2], 4)
            && hex(parts[3], 4)
            && hex(parts[4], 12)
    } else {
        hex(s, 32)
    };
    ok.then(|| s.to_ascii_lowercase())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A container cgroup below a pod: a runtime's scope (systemd driver), or
/// `crio-<id>` / a bare ID (cgroupfs driver).
fn pod_container(c: &str) -> Option<Container> {
    if let Some(container) = scope_container(c) {
        return Some(container);
    }
    if let Some(id) = c.strip_prefix("crio-") {
        return is_container_id(id).then(|| Container {
            id: id.to_string(),
            runtime: Runtime::CriO,
        });
    }
    is_container_id(c).then(|| Container {
        id: c.to_string(),
        runtime: Runtime::Unknown,
    })
}

/// `<runtime prefix>-<id>.scope`. The monitors CRI-O and Podman run beside
/// a container (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are
/// not the container and are not attributed to one.
fn scope_container(c: &str) -> Option<Container> {
    let name = c.strip_suffix(".scope")?;
    const PREFIXES: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_container_id(id).then(|| Container {
            id: id.to_string(),
            runtime: *runtime,
        })
    })
}

/// Podman with its cgroupfs manager: `libpod-<id>` (below `libpod_parent`
/// or a `--cgroup-parent`), no `.scope`.
fn podman_cgroupfs(c: &str) -> Option<Container> {
    let id = c.strip_prefix("libpod-")?;
    is_container_id(id).then(|| Container {
        id: id.to_string(),
        runtime: Runtime::Podman,
    })
}

/// A cgroup-owning unit name (`nginx.service`, `getty@tty1.service`,
/// `session-3.scope`); slices are not units of their own here.
fn unit_name(c: &str) -> Option<&str> {
    let (stem, kind) = c.rsplit_once('.')?;
    let valid_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-' | b'@' | b'\\');
    (UNIT_TYPES.contains(&kind)
        && !stem.is_empty()
        && c.len() <= 255
        && stem.bytes().all(valid_char))
    .then_some(c)
}

fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|r| r.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `pattern` is a usable `systemdUnits` entry: a unit name or glob
/// ending in a cgroup-owning unit type (or `.*`), no `/`.
pub fn check_unit_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("an empty systemd unit name".into());
    }
    if pattern.contains('/') {
        return Err(format!(
            "systemd unit {pattern:?} contains '/': give a unit name such as nginx.service (cgroupPaths takes paths)"
        ));
    }
    let kind = pattern.rsplit_once('.').map(|(_, k)| k);
    match kind {
        Some(k) if UNIT_TYPES.contains(&k) || k == "*" => Ok(()),
        Some("slice") => Err(format!(
            "systemd unit {pattern:?} is a slice: select its path with cgroupPaths (e.g. \"/system.slice\")"
        )),
        _ => Err(format!(
            "systemd unit {pattern:?} must end in a unit type: .service, .scope, .socket, .mount, .swap (or .*)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506";
    const UID_: &str = "1b2c3d4e_5f60_4718_9a0b_c1d2e3f40506";
    const CID: &str = "4f1e6a0d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281";

    fn pod(path: &str) -> (String, Qos) {
        let a = attribute(path);
        let p = a.pod.unwrap_or_else(|| panic!("no pod in {path}"));
        (p.uid, p.qos)
    }

    fn container(path: &str) -> (String, &'static str) {
        let a = attribute(path);
        let c = a
            .container
            .unwrap_or_else(|| panic!("no container in {path}"));
        (c.id, c.runtime.as_str())
    }

    #[test]
    fn systemd_driver_pods_each_qos_and_runtime() {
        for (qos_slice, pod_slice, qos) in [
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{UID_}.slice"),
                Qos::Burstable,
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{UID_}.slice"),
                Qos::BestEffort,
            ),
            ("", format!("kubepods-pod{UID_}.slice"), Qos::Guaranteed),
        ] {
            for (scope, runtime) in [
                (format!("cri-containerd-{CID}.scope"), "containerd"),
                (format!("crio-{CID}.scope"), "cri-o"),
                (format!("docker-{CID}.scope"), "docker"),
            ] {
                let path = format!("/kubepods.slice/{qos_slice}{pod_slice}/{scope}");
                let a = attribute(&path);
                assert_eq!(pod(&path), (UID.to_string(), qos), "{path}");
                assert_eq!(container(&path), (CID.to_string(), runtime), "{path}");
                assert_eq!(a.leaf, Leaf::Container);
                assert_eq!(a.unit, None, "a pod's scopes are not shown as units");
                assert_eq!(a.pod_cgroup(), None);
            }
            let pod_path = format!("/kubepods.slice/{qos_slice}{pod_slice}");
            let a = attribute(&pod_path);
            assert_eq!(a.pod_cgroup(), Some(UID), "{pod_path}");
            assert_eq!(a.container, None);
            assert_eq!(a.leaf, Leaf::Pod);
        }
    }

    #[test]
    fn cgroupfs_driver_pods_each_qos_and_runtime() {
        for (qos_dir, qos) in [
            ("burstable/", Qos::Burstable),
            ("besteffort/", Qos::BestEffort),
            ("", Qos::Guaranteed),
        ] {
            let path = format!("/kubepods/{qos_dir}pod{UID}/{CID}");
            assert_eq!(pod(&path), (UID.to_string(), qos));
            assert_eq!(
                container(&path),
                (CID.to_string(), ""),
                "a bare ID does not say containerd or Docker"
            );
            let crio = format!("/kubepods/{qos_dir}pod{UID}/crio-{CID}");
            assert_eq!(container(&crio), (CID.to_string(), "cri-o"));
            let pod_dir = format!("/kubepods/{qos_dir}pod{UID}");
            assert_eq!(attribute(&pod_dir).pod_cgroup(), Some(UID));
        }
    }

    #[test]
    fn qos_and_kubepods_roots_alone_are_no_pod() {
        for path in [
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods/besteffort",
        ] {
            let a = attribute(path);
            assert_eq!(a.pod, None, "{path}");
            assert_eq!(a.container, None, "{path}");
            assert_eq!(a.unit, None, "{path}");
        }
    }

    #[test]
    fn the_kubepods_tree_is_found_below_other_cgroups() {
        // kind: kubelet --cgroup-root=/kubelet inside the node container.
        let kind = format!(
            "/system.slice/docker-{CID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{}.scope",
            "a".repeat(64)
        );
        assert_eq!(pod(&kind), (UID.to_string(), Qos::BestEffort));
        assert_eq!(container(&kind), ("a".repeat(64), "containerd"));
        assert_eq!(
            attribute(&kind).unit,
            None,
            "the node container's scope is not the pod's unit"
        );
        // A test's own root.
        let nested = format!("/emt-1f/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(pod(&nested), (UID.to_string(), Qos::Burstable));
    }

    #[test]
    fn static_pod_uids_and_case() {
        let hash = "6e8ffc4d3f6f8d3ad4c0d6b0d86a1c53";
        let path =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice");
        assert_eq!(pod(&path).0, hash);
        let upper = format!("/kubepods/pod{}", UID.to_ascii_uppercase());
        assert_eq!(pod(&upper).0, UID, "UIDs are shown lowercase");
    }

    #[test]
    fn nested_cgroups_inside_a_container_keep_its_attribution() {
        let path = format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/container/init.scope"
        );
        let a = attribute(&path);
        assert_eq!(a.pod.as_ref().map(|p| p.uid.as_str()), Some(UID));
        assert_eq!(a.container.as_ref().map(|c| c.id.as_str()), Some(CID));
        assert_eq!(a.leaf, Leaf::Other);
        assert_eq!(a.unit, None);
    }

    #[test]
    fn conmon_and_odd_names_are_not_containers() {
        let conmon = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope");
        let a = attribute(&conmon);
        assert_eq!(a.pod.as_ref().map(|p| p.uid.as_str()), Some(UID));
        assert_eq!(a.container, None);
        for bad in [
            format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{}.scope",
                &CID[1..]
            ),
            format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{}.scope",
                CID.to_ascii_uppercase()
            ),
            format!("/kubepods/pod{UID}/{}", &CID[..12]),
            format!("/kubepods/pod{UID}/sandbox"),
        ] {
            assert_eq!(attribute(&bad).container, None, "{bad}");
        }
    }

    #[test]
    fn malformed_pod_names_are_no_pod() {
        for path in [
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice".to_string(),
            format!("/kubepods.slice/kubepods-burstable.slice/other-pod{UID_}.slice"),
            format!("/kubepods/burstable/pod{}", &UID[..35]),
            format!("/kubepods/burstable/pod{}x", &UID[..35]),
            format!("/kubepods/burstable/pod{}", &UID.replace('-', "")[..31]),
            format!("/system.slice/pod{UID}"),
            format!("/pod{UID}"),
        ] {
            assert_eq!(attribute(&path).pod, None, "{path}");
        }
        // A 32-hex UID is a static pod's; 36 chars must be a UUID.
        assert!(normalize_uid(&UID.replace('-', "")).is_some());
        assert!(normalize_uid(&UID.replace('-', "_")).is_none());
    }

    #[test]
    fn systemd_units_on_plain_hosts() {
        let unit = |p: &str| attribute(p).unit;
        assert_eq!(
            unit("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            attribute("/system.slice/nginx.service").unit_cgroup(),
            Some("nginx.service")
        );
        let sub = attribute("/system.slice/nginx.service/worker");
        assert_eq!(sub.unit.as_deref(), Some("nginx.service"));
        assert_eq!(sub.unit_cgroup(), None, "below the unit's own cgroup");
        assert_eq!(
            unit("/system.slice/system-getty.slice/getty@tty1.service").as_deref(),
            Some("getty@tty1.service")
        );
        assert_eq!(unit("/init.scope").as_deref(), Some("init.scope"));
        assert_eq!(
            unit("/system.slice/var-lib-docker.mount").as_deref(),
            Some("var-lib-docker.mount")
        );
        assert_eq!(
            unit("/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-sda1.service")
                .as_deref(),
            Some("systemd-fsck@dev-sda1.service")
        );
        for none in [
            "/",
            "/system.slice",
            "/user.slice/user-1000.slice",
            "/llm.slice/inference",
        ] {
            assert_eq!(unit(none), None, "{none}");
            assert_eq!(attribute(none).leaf, Leaf::Other, "{none}");
        }
    }

    #[test]
    fn user_slices_sessions_and_user_units() {
        let session = attribute("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(session.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(session.user_unit, None);
        assert_eq!(session.unit_cgroup(), Some("session-3.scope"));
        let manager = attribute("/user.slice/user-1000.slice/user@1000.service");
        assert_eq!(manager.unit_cgroup(), Some("user@1000.service"));
        let app = attribute(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope",
        );
        assert_eq!(app.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(
            app.user_unit.as_deref(),
            Some("app-gnome-firefox-4242.scope")
        );
        assert_eq!(app.unit_name(), Some("app-gnome-firefox-4242.scope"));
        assert_eq!(app.unit_cgroup(), Some("app-gnome-firefox-4242.scope"));
        let svc = attribute(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service/sub",
        );
        assert_eq!(svc.user_unit.as_deref(), Some("syncthing.service"));
        assert_eq!(svc.unit_cgroup(), None);
        // Only user@UID.service has user units below it.
        let nested = attribute("/system.slice/foo.service/bar.service");
        assert_eq!(nested.unit.as_deref(), Some("foo.service"));
        assert_eq!(nested.user_unit, None);
        assert_eq!(nested.unit_cgroup(), None);
    }

    #[test]
    fn containers_outside_kubernetes() {
        assert_eq!(
            container(&format!("/system.slice/docker-{CID}.scope")),
            (CID.to_string(), "docker")
        );
        let a = attribute(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(a.unit.as_deref(), Some(&*format!("docker-{CID}.scope")));
        assert_eq!(a.pod, None);
        assert_eq!(
            container(&format!("/docker/{CID}")),
            (CID.to_string(), "docker")
        );
        assert_eq!(attribute(&format!("/docker/{CID}")).leaf, Leaf::Container);
        assert_eq!(
            container(&format!("/machine.slice/libpod-{CID}.scope")),
            (CID.to_string(), "podman")
        );
        assert_eq!(
            container(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container"
            )),
            (CID.to_string(), "podman")
        );
        assert_eq!(
            attribute(&format!("/other/{CID}")).container,
            None,
            "a bare ID needs a docker or pod parent"
        );
        // Podman's cgroupfs manager, below its default parent or a test's
        // `--cgroup-parent`; its conmon is not the container.
        for parent in ["/libpod_parent", "/egress-test-1/ctr"] {
            let path = format!("{parent}/libpod-{CID}");
            assert_eq!(container(&path), (CID.to_string(), "podman"));
            assert_eq!(attribute(&path).leaf, Leaf::Container);
        }
        assert_eq!(
            attribute(&format!("/libpod_parent/libpod-conmon-{CID}")).container,
            None
        );
    }

    #[test]
    fn unit_patterns() {
        for ok in [
            "nginx.service",
            "*.service",
            "getty@*.service",
            "session-*.scope",
            "nginx.*",
            "*.mount",
        ] {
            assert_eq!(check_unit_pattern(ok), Ok(()), "{ok}");
        }
        assert!(check_unit_pattern("nginx")
            .unwrap_err()
            .contains("must end in a unit type"));
        assert!(check_unit_pattern("system.slice")
            .unwrap_err()
            .contains("is a slice"));
        assert!(check_unit_pattern("/system.slice/nginx.service")
            .unwrap_err()
            .contains("contains '/'"));
        assert!(check_unit_pattern("").is_err());
    }
}
