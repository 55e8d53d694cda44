//! Attribution end to end: kubelet-shaped cgroup trees (systemd and
//! cgroupfs drivers) and systemd units built under the test's own cgroup
//! root, policies selecting by `pods:` and `systemdUnits:`, real probes in
//! the container and unit cgroups, and the events' attribution fields.
use std::time::Duration;

use integration_tests::*;
use serde_json::Value;

const EPERM: i64 = 1;
const WAIT: Duration = Duration::from_secs(5);

/// One pod per layout kubelet writes, with a container cgroup in it.
struct PodTree {
    uid: &'static str,
    pod: String,
    container: String,
    container_id: String,
    qos: &'static str,
    runtime: &'static str,
}

fn cid(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

fn pods() -> Vec<PodTree> {
    let systemd = |uid: &str, qos_slice: &str| {
        let u = uid.replace('-', "_");
        if qos_slice.is_empty() {
            format!("kubepods.slice/kubepods-pod{u}.slice")
        } else {
            format!("kubepods.slice/kubepods-{qos_slice}.slice/kubepods-{qos_slice}-pod{u}.slice")
        }
    };
    let a = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40501";
    let b = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40502";
    let c = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40503";
    let d = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40504";
    vec![
        PodTree {
            uid: a,
            pod: systemd(a, "besteffort"),
            container: format!(
                "{}/cri-containerd-{}.scope",
                systemd(a, "besteffort"),
                cid('a')
            ),
            container_id: cid('a'),
            qos: "BestEffort",
            runtime: "containerd",
        },
        PodTree {
            uid: b,
            pod: systemd(b, ""),
            container: format!("{}/crio-{}.scope", systemd(b, ""), cid('b')),
            container_id: cid('b'),
            qos: "Guaranteed",
            runtime: "cri-o",
        },
        PodTree {
            uid: c,
            pod: format!("kubepods/burstable/pod{c}"),
            container: format!("kubepods/burstable/pod{c}/{}", cid('c')),
            container_id: cid('c'),
            qos: "Burstable",
            runtime: "",
        },
        PodTree {
            uid: d,
            pod: format!("kubepods/pod{d}"),
            container: format!("kubepods/pod{d}/crio-{}", cid('d')),
            container_id: cid('d'),
            qos: "Guaranteed",
            runtime: "cri-o",
        },
    ]
}

fn mkdirs(env: &TestEnv, sub: &str) {
    std::fs::create_dir_all(env.cgroup(sub))
        .unwrap_or_else(|e| panic!("create test cgroup {sub}: {e}"));
}

fn policy(name: &str, mode: &str, selector: &str) -> String {
    format!(
        "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  selector:\n{selector}  allow:\n    countries: [DE]\n"
    )
}

fn of(e: &Value, pid: u64) -> bool {
    e["tgid"].as_u64() == Some(pid)
}

/// A policy selecting pods by UID judges the containers of those pods, for
/// both cgroup drivers and every QoS class, including a container created
/// after the policy took effect; a pod not listed is untouched; the events
/// carry pod UID, QoS, container ID and runtime, and `events --pod` filters
/// on the daemon.
#[test]
fn a_pod_selector_judges_its_containers_on_both_drivers() {
    let mut env = TestEnv::new();
    let pods = pods();
    for p in &pods {
        mkdirs(&env, &p.container);
    }
    // Listed: a, b, c, d but not the other pod below.
    let other_uid = "1b2c3d4e-5f60-4718-9a0b-c1d2e3f405ff";
    let other = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        other_uid.replace('-', "_"),
        cid('f')
    );
    mkdirs(&env, &other);
    let list: Vec<String> = pods.iter().map(|p| format!("\"{}\"", p.uid)).collect();
    env.write_policy(
        "pods.yaml",
        &policy(
            "pods-eu",
            "enforce",
            &format!("    pods: [{}]\n", list.join(", ")),
        ),
    );
    env.start_daemon(&[]);
    for p in &pods {
        env.wait_log(
            &format!("cgroup {} (id", env.rel(&p.pod)),
            Duration::from_secs(5),
        );
    }
    let port = PORT.to_string();

    for p in &pods {
        let denied = env.probe(&p.container, &["tcp", US_V4, &port]);
        assert!(
            !denied.ok && denied.errno == EPERM,
            "a container of pod {} must be refused the US: {:?}",
            p.uid,
            denied.raw
        );
        let e = env.expect_event(&format!("denied in pod {}", p.uid), WAIT, |e| {
            of(e, denied.pid)
        });
        assert_eq!(s(&e, "verdict"), "denied", "{e}");
        assert_eq!(s(&e, "policy"), "pods-eu", "{e}");
        assert_eq!(s(&e, "cgroup_path"), env.rel(&p.container), "{e}");
        assert_eq!(s(&e, "pod_uid"), p.uid, "{e}");
        assert_eq!(s(&e, "qos"), p.qos, "{e}");
        assert_eq!(s(&e, "container_id"), p.container_id, "{e}");
        assert_eq!(s(&e, "runtime"), p.runtime, "{e}");
        assert!(e.get("systemd_unit").is_none(), "{e}");
        let allowed = env.probe(&p.container, &["udp", DE_V4, &port]);
        assert!(allowed.ok, "DE stays reachable: {:?}", allowed.raw);
        let e = env.expect_event("allowed DE", WAIT, |e| of(e, allowed.pid));
        assert_eq!(s(&e, "verdict"), "allowed");
        assert_eq!(s(&e, "pod_uid"), p.uid);
    }

    // A container started after the policy: covered from its first
    // connection by the kernel's ancestor walk, no rescan needed.
    let late = format!("{}/cri-containerd-{}.scope", pods[0].pod, cid('e'));
    mkdirs(&env, &late);
    let p = env.probe(&late, &["tcp", US_V6, &port]);
    assert!(
        !p.ok && p.errno == EPERM,
        "new container refused: {:?}",
        p.raw
    );
    let e = env.expect_event("denied in the new container", WAIT, |e| of(e, p.pid));
    assert_eq!(s(&e, "container_id"), cid('e'));
    assert_eq!(s(&e, "pod_uid"), pods[0].uid);

    // The pod not listed is neither judged nor reported.
    let free = env.probe(&other, &["tcp", US_V4, &port]);
    assert!(free.ok, "an unlisted pod is untouched: {:?}", free.raw);
    let seen = env.events_within(Duration::from_millis(500), |e| of(e, free.pid));
    assert!(seen.is_empty(), "no event for an unlisted pod: {seen:?}");

    // The CLI filters by pod on the daemon.
    let out = env.cli(&[
        "events",
        "--pod",
        pods[2].uid,
        "--last",
        "100",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "one denied, one allowed: {lines:?}");
    assert!(lines.iter().all(|e| s(e, "pod_uid") == pods[2].uid));
    let bad = env.cli(&["events", "--pod", "not-a-uid"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("filter.pod_uids[0]"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // policy list shows the selector and what it selected.
    let list = env.cli(&["policy", "list", "-o", "json"]);
    let v: Value = serde_json::from_slice(&list.stdout).expect("policy list JSON");
    let pol = &v["policies"][0];
    assert_eq!(pol["pods"].as_array().map(Vec::len), Some(4), "{v}");
    assert_eq!(
        pol["selected_cgroups"].as_array().map(Vec::len),
        Some(4),
        "the four pod cgroups, not their containers: {v}"
    );
}

/// `systemdUnits` selects the unit's cgroup (and so its children), by name
/// and by glob, for system and user units; other units are untouched; the
/// events carry the unit.
#[test]
fn a_systemd_unit_selector_judges_the_unit_and_its_children() {
    let mut env = TestEnv::new();
    let nginx = "system.slice/nginx.service";
    let worker = "system.slice/nginx.service/worker";
    let batch = "system.slice/system-batch.slice/batch@7.service";
    let user = "user.slice/user-1000.slice/user@1000.service/app.slice/sync.service";
    let sshd = "system.slice/sshd.service";
    for sub in [worker, batch, user, sshd] {
        mkdirs(&env, sub);
    }
    env.write_policy(
        "web.yaml",
        &policy("web", "enforce", "    systemdUnits: [\"nginx.service\"]\n"),
    );
    env.write_policy(
        "jobs.yaml",
        &policy(
            "jobs",
            "monitor",
            "    systemdUnits: [\"batch@*.service\", \"sync.service\"]\n",
        ),
    );
    env.start_daemon(&[]);
    for sub in [nginx, batch, user] {
        env.wait_log(
            &format!("cgroup {} (id", env.rel(sub)),
            Duration::from_secs(5),
        );
    }
    assert_eq!(
        env.log_count(&format!("cgroup {} (id", env.rel(worker))),
        0,
        "a unit's child is covered, not selected itself"
    );
    let port = PORT.to_string();

    for (sub, policy, verdict, unit) in [
        (nginx, "web", "denied", "nginx.service"),
        (worker, "web", "denied", "nginx.service"),
        (batch, "jobs", "would_deny", "batch@7.service"),
        (user, "jobs", "would_deny", "sync.service"),
    ] {
        let p = env.probe(sub, &["tcp", US_V4, &port]);
        assert_eq!(
            p.ok,
            verdict == "would_deny",
            "{sub} under {policy}: {:?}",
            p.raw
        );
        let e = env.expect_event(&format!("{verdict} in {sub}"), WAIT, |e| of(e, p.pid));
        assert_eq!(s(&e, "verdict"), verdict, "{e}");
        assert_eq!(s(&e, "policy"), policy, "{e}");
        assert_eq!(s(&e, "systemd_unit"), unit, "{e}");
        assert!(
            e.get("pod_uid").is_none() && e.get("container_id").is_none(),
            "{e}"
        );
    }

    let free = env.probe(sshd, &["tcp", US_V4, &port]);
    assert!(free.ok, "sshd.service is not selected: {:?}", free.raw);
    let seen = env.events_within(Duration::from_millis(500), |e| of(e, free.pid));
    assert!(seen.is_empty(), "no event for an unselected unit: {seen:?}");
}

/// A pod UID and a path glob from two policies naming the same cgroup are
/// the conflict any double selection is: settled for the pod (both in
/// monitor mode, neither exact: the first name) and reported with both.
#[test]
fn a_pod_selected_twice_is_settled_and_reported() {
    let mut env = TestEnv::new();
    let pod = &pods()[0];
    mkdirs(&env, &pod.container);
    env.write_policy(
        "a.yaml",
        &policy(
            "by-uid",
            "monitor",
            &format!("    pods: [\"{}\"]\n", pod.uid),
        ),
    );
    env.write_policy(
        "b.yaml",
        &policy(
            "by-path",
            "monitor",
            &format!("    cgroupPaths: [\"{}/**/*pod*\"]\n", env.rel("")),
        ),
    );
    env.start_daemon(&[]);
    env.wait_log(
        "is selected by policies by-path and by-uid; by-path judges it",
        Duration::from_secs(5),
    );
}
