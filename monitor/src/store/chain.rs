//! The hash chain over stored records.
//!
//! Each record has a canonical JSON form (keys sorted, no spaces: the
//! event's `--log-events` keys plus `seq` and `unix_nanos`), its digest
//! `SHA-256(canonical)`, and its chain hash `SHA-256(prev_hash || digest)`;
//! the first record of a store links to 32 zero bytes. Changing, removing,
//! inserting or reordering a record breaks every hash after it; the store
//! keeps the head, and an export carries the hash just before its window.
use sha2::{Digest, Sha256};

use crate::events::Event;

pub const GENESIS: [u8; 32] = [0; 32];

/// The canonical JSON of a record: what is hashed, and the line an export
/// writes to events.jsonl.
///
/// Written field by field in key order, with `serde_json`'s own escaping
/// and number format: byte for byte what `canonical_by_value` (a sorted
/// map of the serialized event) gives, without building the map (a test
/// holds the two equal for every field).
pub fn canonical(seq: i64, e: &Event) -> String {
    let mut out = Vec::with_capacity(640);
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        out.push(if first { b'{' } else { b',' });
        first = false;
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
    };
    fn text(out: &mut Vec<u8>, v: &str) {
        let _ = serde_json::to_writer(&mut *out, v);
    }
    fn num<N: serde::Serialize>(out: &mut Vec<u8>, v: N) {
        let _ = serde_json::to_writer(&mut *out, &v);
    }
    // Keys in byte order; the optional ones as `Event` leaves them out
    // (a record from before processes were named hashes as it did).
    if !e.args.is_empty() {
        key(&mut out, "args");
        num(&mut out, &e.args);
    }
    if e.args_truncated {
        key(&mut out, "args_truncated");
        out.extend_from_slice(b"true");
    }
    key(&mut out, "cgroup_id");
    num(&mut out, e.cgroup_id);
    key(&mut out, "cgroup_path");
    text(&mut out, &e.cgroup_path);
    if !e.cloud.is_empty() {
        key(&mut out, "cloud");
        text(&mut out, &e.cloud);
    }
    if !e.cloud_region.is_empty() {
        key(&mut out, "cloud_region");
        text(&mut out, &e.cloud_region);
    }
    key(&mut out, "comm");
    text(&mut out, &e.comm);
    if !e.container_id.is_empty() {
        key(&mut out, "container_id");
        text(&mut out, &e.container_id);
    }
    if !e.container_name.is_empty() {
        key(&mut out, "container_name");
        text(&mut out, &e.container_name);
    }
    key(&mut out, "continent");
    text(&mut out, &e.continent);
    key(&mut out, "country");
    text(&mut out, &e.country);
    key(&mut out, "country_source");
    text(&mut out, e.country_source);
    if !e.dns_cname.is_empty() {
        key(&mut out, "dns_cname");
        text(&mut out, &e.dns_cname);
    }
    key(&mut out, "dns_name");
    text(&mut out, &e.dns_name);
    if let Some(d) = &e.drift {
        // Its fields are declared in key order: serde writes them sorted.
        key(&mut out, "drift");
        num(&mut out, d);
    }
    key(&mut out, "dst_ip");
    text(&mut out, &e.dst_ip);
    key(&mut out, "dst_port");
    num(&mut out, e.dst_port);
    if !e.exe.is_empty() {
        key(&mut out, "exe");
        text(&mut out, &e.exe);
    }
    key(&mut out, "family");
    text(&mut out, e.family);
    key(&mut out, "hook");
    text(&mut out, e.hook);
    if !e.image.is_empty() {
        key(&mut out, "image");
        text(&mut out, &e.image);
    }
    if !e.image_digest.is_empty() {
        key(&mut out, "image_digest");
        text(&mut out, &e.image_digest);
    }
    if e.kernel_cpu != 0 {
        key(&mut out, "kernel_cpu");
        num(&mut out, e.kernel_cpu);
    }
    if e.kernel_seq != 0 {
        key(&mut out, "kernel_seq");
        num(&mut out, e.kernel_seq);
    }
    if !e.parent_exe.is_empty() {
        key(&mut out, "parent_exe");
        text(&mut out, &e.parent_exe);
    }
    key(&mut out, "pid");
    num(&mut out, e.pid);
    if !e.pod_labels.is_empty() {
        key(&mut out, "pod_labels");
        num(&mut out, &e.pod_labels);
    }
    if !e.pod_name.is_empty() {
        key(&mut out, "pod_name");
        text(&mut out, &e.pod_name);
    }
    if !e.pod_namespace.is_empty() {
        key(&mut out, "pod_namespace");
        text(&mut out, &e.pod_namespace);
    }
    if !e.pod_uid.is_empty() {
        key(&mut out, "pod_uid");
        text(&mut out, &e.pod_uid);
    }
    key(&mut out, "policy");
    text(&mut out, &e.policy);
    key(&mut out, "policy_generation");
    num(&mut out, e.policy_generation);
    if e.ppid != 0 {
        key(&mut out, "ppid");
        num(&mut out, e.ppid);
    }
    key(&mut out, "protocol");
    text(&mut out, e.protocol);
    if !e.qos.is_empty() {
        key(&mut out, "qos");
        text(&mut out, &e.qos);
    }
    key(&mut out, "rule");
    text(&mut out, e.rule);
    if !e.runtime.is_empty() {
        key(&mut out, "runtime");
        text(&mut out, &e.runtime);
    }
    key(&mut out, "seq");
    num(&mut out, seq);
    if !e.systemd_unit.is_empty() {
        key(&mut out, "systemd_unit");
        text(&mut out, &e.systemd_unit);
    }
    key(&mut out, "tgid");
    num(&mut out, e.tgid);
    key(&mut out, "time");
    text(&mut out, &e.time);
    key(&mut out, "uid");
    num(&mut out, e.uid);
    key(&mut out, "unix_nanos");
    num(&mut out, e.unix_nanos as i64);
    key(&mut out, "verdict");
    text(&mut out, e.verdict);
    out.push(b'}');
    // Only valid UTF-8 went in (str keys and serde_json's output).
    String::from_utf8(out).unwrap_or_default()
}

/// The canonical JSON by way of a sorted map of the serialized event: the
/// definition `canonical` is held to.
pub fn canonical_by_value(seq: i64, e: &Event) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
        o.insert("unix_nanos".into(), (e.unix_nanos as i64).into());
    }
    // serde_json's map is ordered by key: the output is canonical.
    v.to_string()
}

/// The canonical form of any JSON text (keys sorted, compact), to check
/// that a line is canonical.
pub fn recanonical(line: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .map(|v| v.to_string())
}

pub fn digest(canonical: &str) -> [u8; 32] {
    Sha256::digest(canonical.as_bytes()).into()
}

/// SHA-256(prev || digest).
pub fn link(prev: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(digest);
    h.finalize().into()
}

/// A stored hash as 32 bytes (zeros if the column is malformed; the chain
/// check then fails on it).
pub fn to32(b: &[u8]) -> [u8; 32] {
    <[u8; 32]>::try_from(b).unwrap_or([0; 32])
}

/// One link of an exported chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub seq: i64,
    /// Hex SHA-256 of the record's canonical JSON.
    pub digest: String,
    /// Hex SHA-256(prev hash || digest).
    pub hash: String,
}

/// Checks that `links` continue from `anchor`; returns the first broken
/// position and why.
pub fn check_links(anchor: &[u8; 32], links: &[Link]) -> Result<(), (usize, String)> {
    let mut prev = *anchor;
    let mut last_seq = None;
    for (i, l) in links.iter().enumerate() {
        if let Some(s) = last_seq {
            if l.seq != s + 1 {
                return Err((i, format!("seq {} follows seq {s}", l.seq)));
            }
        }
        let d = decode32(&l.digest).ok_or((i, format!("seq {}: digest is not hex", l.seq)))?;
        let h = decode32(&l.hash).ok_or((i, format!("seq {}: hash is not hex", l.seq)))?;
        if link(&prev, &d) != h {
            return Err((
                i,
                format!(
                    "seq {}: hash does not follow from the previous hash and the digest",
                    l.seq
                ),
            ));
        }
        prev = h;
        last_seq = Some(l.seq);
    }
    Ok(())
}

/// A signed statement of the chain head: the store had records up to `seq`,
/// the last one hashing to `hash`, at `unix_nanos`. Records can be removed
/// from the end of a store without breaking a link; a checkpoint made
/// after them still names them. Checkpoints are also the daemon's signed
/// heartbeat: `run` names the daemon run that made it and `watching` what
/// its programs were doing (see `coverage`), so a window no daemon
/// watched shows as one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub unix_nanos: i64,
    pub seq: i64,
    /// Hex chain hash of record `seq`.
    pub hash: String,
    /// The start (unix nanos) of the daemon run that signed it; 0 in
    /// checkpoints made before runs were recorded (version 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: i64,
    /// `attached`, `detached` or `stopping` (see `coverage::Watching`);
    /// empty in version 1 checkpoints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub watching: String,
    /// Hex ed25519 signature over `message`.
    pub signature: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Checkpoint {
    /// What the signature covers: version 2 with the run and what was
    /// watched, version 1 (head only) for checkpoints made before.
    pub fn message(&self, store_id: &str) -> String {
        let Checkpoint {
            unix_nanos,
            seq,
            hash,
            run,
            watching,
            ..
        } = self;
        if watching.is_empty() {
            format!("egress-monitor-checkpoint/1 store={store_id} unix_nanos={unix_nanos} seq={seq} hash={hash}")
        } else {
            format!("egress-monitor-checkpoint/2 store={store_id} unix_nanos={unix_nanos} seq={seq} hash={hash} run={run} watching={watching}")
        }
    }
}

/// The form of the signed message, for bundles' checkpoints.json.
pub const CHECKPOINT_MESSAGE: &str = "egress-monitor-checkpoint/2 store=<store_id> unix_nanos=<unix_nanos> seq=<seq> hash=<hash> run=<run> watching=<watching> (version 1, without run and watching, where watching is absent), ed25519 by the node key";

pub fn decode32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn links(n: i64) -> (Vec<Link>, [u8; 32]) {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 1..=n {
            let d = digest(&format!("{{\"seq\":{seq}}}"));
            let h = link(&prev, &d);
            out.push(Link {
                seq,
                digest: hex::encode(d),
                hash: hex::encode(h),
            });
            prev = h;
        }
        (out, prev)
    }

    #[test]
    fn deletion_insertion_and_reordering_break_the_chain() {
        let (l, _) = links(5);
        assert!(check_links(&GENESIS, &l).is_ok());
        let mut del = l.clone();
        del.remove(2);
        assert_eq!(check_links(&GENESIS, &del).unwrap_err().0, 2);
        let mut swap = l.clone();
        swap.swap(1, 2);
        assert_eq!(check_links(&GENESIS, &swap).unwrap_err().0, 1);
        let mut ins = l.clone();
        ins.insert(3, l[3].clone());
        assert!(check_links(&GENESIS, &ins).is_err());
        assert!(
            check_links(&[1; 32], &l).is_err(),
            "a wrong anchor is detected"
        );
    }

    /// An event with every field set, odd characters in its strings.
    pub(crate) fn every_field() -> Event {
        Event {
            time: "2026-12-03T16:00:00.000000001Z".into(),
            unix_nanos: 1_796_313_600_000_000_001,
            verdict: "would_deny",
            policy: "eu \"only\" \\ é".into(),
            rule: "default",
            hook: "sendmsg6",
            protocol: "udp",
            family: "ipv6",
            dst_ip: "2001:db8::1".into(),
            dst_port: 65535,
            country: "US".into(),
            continent: "NA".into(),
            country_source: "cloud",
            dns_name: "api.example\u{7f}\n".into(),
            dns_cname: "edge.example".into(),
            cloud: "aws".into(),
            cloud_region: "us-east-1".into(),
            pid: u32::MAX,
            tgid: 1,
            uid: 0,
            comm: "py\u{1}thon\t</script>".into(),
            cgroup_id: u64::MAX,
            cgroup_path: "/kubepods.slice/x".into(),
            policy_generation: 7,
            kernel_seq: 9,
            kernel_cpu: 1,
            pod_uid: "1b2c".into(),
            qos: "Burstable".into(),
            container_id: "ab".repeat(32),
            runtime: "containerd".into(),
            systemd_unit: "x.service".into(),
            exe: "/tmp/ev\"il bin".into(),
            args: vec!["evilbin".into(), "-c".into(), "print('é')\n".into()],
            args_truncated: true,
            ppid: 41,
            parent_exe: "/usr/bin/bash".into(),
            image: "registry.example/llm/\"vllm\":v2".into(),
            image_digest: format!("sha256:{}", "cd".repeat(32)),
            container_name: "vllm-é".into(),
            pod_name: "vllm-0".into(),
            pod_namespace: "inference".into(),
            pod_labels: [("app", "vllm"), ("team\"x", "é\n")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            drift: Some(Box::new(crate::events::Drift {
                attempt: "would_deny".into(),
                baseline: "b \"1\"".into(),
                baseline_sha256: "ab".repeat(32),
                kind: "cloud region".into(),
                known: vec!["aws:eu-*".into(), "é\n".into()],
                listed: true,
                value: "aws:us-east-1".into(),
            })),
        }
    }

    #[test]
    fn the_canonical_writer_is_the_sorted_map_byte_for_byte() {
        let full = every_field();
        // Every field set, then every optional one left out in turn.
        let mut cases = vec![full.clone(), Event::default()];
        for clear in 0..22 {
            let mut e = full.clone();
            match clear {
                0 => e.dns_cname.clear(),
                1 => e.cloud.clear(),
                2 => e.cloud_region.clear(),
                3 => e.kernel_seq = 0,
                4 => e.kernel_cpu = 0,
                5 => e.pod_uid.clear(),
                6 => e.qos.clear(),
                7 => e.container_id.clear(),
                8 => e.runtime.clear(),
                9 => e.drift = None,
                10 => e.exe.clear(),
                11 => e.args.clear(),
                12 => e.args_truncated = false,
                13 => e.ppid = 0,
                14 => e.parent_exe.clear(),
                15 => e.image.clear(),
                16 => e.image_digest.clear(),
                17 => e.container_name.clear(),
                18 => e.pod_name.clear(),
                19 => e.pod_namespace.clear(),
                20 => e.pod_labels.clear(),
                _ => e.systemd_unit.clear(),
            }
            cases.push(e);
        }
        for (i, e) in cases.iter().enumerate() {
            for seq in [1, i64::MAX] {
                assert_eq!(canonical(seq, e), canonical_by_value(seq, e), "case {i}");
            }
        }
    }

    #[test]
    fn canonical_form_is_sorted_and_stable() {
        let line = r#"{"b":1,"a":{"d":2,"c":3}}"#;
        assert_eq!(recanonical(line).unwrap(), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }
}
