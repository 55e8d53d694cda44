//! Fleet evidence (`fleet export`): one bundle of several nodes' records
//! read back from NATS JetStream, each node's under `nodes/<node>/` with
//! its own hash chain and the checkpoints its node key signed.
//!
//! No one key signs the bundle as a whole: the exporter holds no node's
//! key. The manifest lists every file's digest (which catches damage, not
//! forgery); what proves a node's records is its chain, re-linked record by
//! record, up to a checkpoint that node signed. The chain is therefore
//! carried a little past the window (`links_after_window`: digests and
//! hashes only) to the first checkpoint at or after its last record, so a
//! window's last records are signed too. `verify` checks each node and
//! says how far each node's signatures reach.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    bundle::Files,
    verify::{self, broken, Broken},
};
use crate::{
    events::{rfc3339_nanos, Event},
    store::{
        chain::{self, Checkpoint, Link},
        coverage::{self, Coverage},
        query,
    },
};

pub const FORMAT: &str = "egress-monitor-fleet-evidence/1";

/// One record of a node as the stream holds it.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub seq: i64,
    /// The node's chain hash of the record before it.
    pub prev: [u8; 32],
    pub event: Event,
}

/// A checkpoint as the stream holds it, with the store it signs for and
/// the key that signed it.
#[derive(Debug, Clone)]
pub struct StreamCheckpoint {
    pub store_id: String,
    pub public_key: String,
    pub checkpoint: Checkpoint,
}

/// What the stream holds of one node.
#[derive(Debug, Default)]
pub struct NodeStream {
    pub records: Vec<StreamRecord>,
    pub checkpoints: Vec<StreamCheckpoint>,
    pub flows: Vec<query::Flow>,
}

/// What to export.
pub struct Request<'a> {
    pub since: i64,
    pub until: i64,
    pub keep: &'a dyn Fn(&Event) -> bool,
    /// The filter as given; null when none (every record is exported).
    pub filter: Value,
    /// Where the records were read (stream, subjects, servers).
    pub source: Value,
}

/// What one node's part holds, for the CLI's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub node: String,
    pub public_key: String,
    pub in_window: usize,
    pub exported: usize,
    /// The last seq a checkpoint signed (None: none of the window's).
    pub signed_up_to: Option<i64>,
    /// Records of the window after `signed_up_to`: chained, not signed.
    pub unsigned: usize,
    pub flows: usize,
    /// The window's refusals exported (the first `summary::TABLE_ROWS`)
    /// and how many there are.
    pub refused: Vec<Event>,
    pub refused_total: usize,
}

fn t(n: i64) -> String {
    rfc3339_nanos(i128::from(n))
}

/// Builds the bundle's files from what the stream holds of each node.
pub fn build(
    nodes: BTreeMap<String, NodeStream>,
    req: &Request<'_>,
) -> anyhow::Result<(Files, Vec<NodeSummary>)> {
    let mut files = Files::new();
    let mut summaries = Vec::new();
    let mut listed = serde_json::Map::new();
    for (node, stream) in nodes {
        let (part, entry, summary) = node_part(&node, stream, req)?;
        for (name, bytes) in part {
            files.insert(format!("nodes/{node}/{name}"), bytes);
        }
        listed.insert(node, entry);
        summaries.push(summary);
    }
    files.insert(
        "summary.md".into(),
        summary_md(req, &summaries).into_bytes(),
    );
    let digests: BTreeMap<&String, String> = files
        .iter()
        .map(|(n, b)| (n, hex::encode(Sha256::digest(b))))
        .collect();
    let manifest = serde_json::to_vec_pretty(&json!({
        "format": FORMAT,
        "created": t(crate::store::now_nanos()),
        "window": super::bundle::window_json(req.since, req.until),
        "filter": req.filter,
        "source": req.source,
        "trust": "not signed as a whole: each node's records are proved by its hash chain up to the checkpoints its node key signed (nodes/<node>/checkpoints.json); the digests below catch damage, not forgery",
        "nodes": listed,
        "files": digests,
    }))?;
    files.insert("manifest.json".into(), manifest);
    Ok((files, summaries))
}

/// The one store and key a node's checkpoints name.
fn identity(node: &str, list: &[StreamCheckpoint]) -> anyhow::Result<(String, String)> {
    let ids: BTreeSet<(&str, &str)> = list
        .iter()
        .map(|c| (c.store_id.as_str(), c.public_key.as_str()))
        .collect();
    match ids.len() {
        1 => {
            let (s, k) = ids.into_iter().next().unwrap_or_default();
            Ok((s.to_string(), k.to_string()))
        }
        0 => bail!(
            "node {node}: the stream holds no signed checkpoint of this node, so its records cannot be verified (a daemon signs one every 10 s and publishes it once the records it names are published; a daemon older than fleet export publishes none); leave the node out with --node"
        ),
        _ => bail!(
            "node {node}: the stream holds checkpoints of {} stores or keys ({}): its store or node key was replaced within the window; export a window that holds one of them",
            ids.len(),
            ids.iter()
                .map(|(s, k)| format!("store {s} key {}…", &k[..k.len().min(16)]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The records in seq order, each once: a retry JetStream did not drop
/// (after its duplicate window) is the same record again.
fn in_order(node: &str, mut records: Vec<StreamRecord>) -> anyhow::Result<Vec<StreamRecord>> {
    records.sort_by_key(|r| r.seq);
    let mut out: Vec<StreamRecord> = Vec::with_capacity(records.len());
    for r in records {
        match out.last() {
            Some(last) if last.seq == r.seq => {
                if chain::canonical(r.seq, &r.event) != chain::canonical(last.seq, &last.event)
                    || r.prev != last.prev
                {
                    bail!(
                        "node {node}: the stream holds two different records at seq {}: its store was replaced, or the stream was written by someone else",
                        r.seq
                    );
                }
            }
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// One node's files (names relative to `nodes/<node>/`), its manifest
/// entry and summary.
fn node_part(
    node: &str,
    stream: NodeStream,
    req: &Request<'_>,
) -> anyhow::Result<(Files, Value, NodeSummary)> {
    let (store_id, public_key) = identity(node, &stream.checkpoints)?;
    let records = in_order(node, stream.records)?;
    let checkpoints: Vec<Checkpoint> = stream
        .checkpoints
        .into_iter()
        .map(|c| c.checkpoint)
        .collect();
    let in_window = |r: &StreamRecord| {
        let t = r.event.unix_nanos as i64;
        t >= req.since && t < req.until
    };
    // The window: the run of seqs from its first record to its last.
    let first = records.iter().position(in_window);
    let last = records.iter().rposition(in_window);
    let (range, anchor) = match (first, last) {
        (Some(a), Some(b)) => (a..b + 1, Some((records[a].prev, records[a].seq - 1))),
        _ => (0..0, None),
    };
    for w in records[range.clone()].windows(2) {
        if w[1].seq != w[0].seq + 1 {
            bail!(
                "node {node}: the stream lacks records seq {} to {} (removed by the stream's limits, or not published yet): the node's chain cannot be followed across them",
                w[0].seq + 1,
                w[1].seq - 1
            );
        }
    }
    let last_seq = range.clone().last().map(|i| records[i].seq);
    // After the window, as far as the first checkpoint at or after its
    // last record, if the stream has every record up to it.
    let closing = last_seq.and_then(|l| {
        checkpoints
            .iter()
            .filter(|c| c.seq >= l)
            .min_by_key(|c| c.seq)
    });
    let mut tail = range.end;
    if let (Some(l), Some(c)) = (last_seq, closing) {
        let mut want = l + 1;
        let mut i = range.end;
        while want <= c.seq && i < records.len() && records[i].seq == want {
            want += 1;
            i += 1;
        }
        if want > c.seq {
            tail = i;
        }
    }
    // Links, re-made from the records and checked against what each
    // record says it follows.
    let mut links = Vec::with_capacity(tail - range.start);
    let mut prev = anchor.map(|(h, _)| h).unwrap_or(chain::GENESIS);
    let mut jsonl = String::new();
    let mut exported = 0usize;
    let (mut refused, mut refused_total) = (Vec::new(), 0usize);
    for (i, r) in records[range.start..tail].iter().enumerate() {
        if r.prev != prev {
            bail!(
                "node {node}: record seq {} says it follows a hash other than record seq {}'s: the stream's records are not the node's chain",
                r.seq,
                r.seq - 1
            );
        }
        let canonical = chain::canonical(r.seq, &r.event);
        let digest = chain::digest(&canonical);
        let hash = chain::link(&prev, &digest);
        links.push(Link {
            seq: r.seq,
            digest: hex::encode(digest),
            hash: hex::encode(hash),
        });
        prev = hash;
        if range.start + i < range.end && (req.keep)(&r.event) {
            jsonl.push_str(&canonical);
            jsonl.push('\n');
            exported += 1;
            if matches!(r.event.verdict, "denied" | "would_deny") {
                refused_total += 1;
                if refused.len() < super::summary::TABLE_ROWS {
                    refused.push(r.event.clone());
                }
            }
        }
    }
    let after = links.split_off(range.len());
    // A checkpoint the links reach must name the hash they give it.
    let by_seq: BTreeMap<i64, &Link> = links.iter().chain(&after).map(|l| (l.seq, l)).collect();
    let mut signed_up_to = None;
    for c in &checkpoints {
        if let Some(l) = by_seq.get(&c.seq) {
            if l.hash != c.hash {
                bail!(
                    "node {node}: the records the stream holds up to seq {} do not give the hash the node signed for it at {}: a record changed on the way, or was published by a version whose records this one cannot rebuild",
                    c.seq,
                    t(c.unix_nanos)
                );
            }
            signed_up_to = signed_up_to.max(Some(c.seq));
        }
    }
    // The window's heartbeats (and the closing checkpoint).
    let lo = req.since.saturating_sub(coverage::MAX_GAP_NANOS);
    let hi = req.until.saturating_add(coverage::MAX_GAP_NANOS);
    let closing_at = closing.map(|c| c.unix_nanos);
    let mut kept: Vec<Checkpoint> = checkpoints
        .iter()
        .filter(|c| (c.unix_nanos >= lo && c.unix_nanos < hi) || Some(c.unix_nanos) == closing_at)
        .cloned()
        .collect();
    kept.sort_by_key(|c| (c.unix_nanos, c.seq));
    kept.dedup();
    let cover = coverage::coverage(&kept, req.since, req.until);
    let prior = match anchor {
        Some((_, seq)) => seq,
        // No record in the window: the chain stood where the window's
        // checkpoints say (nothing to compare them with).
        None => kept
            .iter()
            .filter(|c| c.unix_nanos < req.until)
            .map(|c| c.seq)
            .max()
            .unwrap_or(0),
    };
    let signed_of_window = signed_up_to.filter(|s| Some(*s) >= anchor.map(|(_, a)| a + 1));
    let unsigned = links
        .iter()
        .filter(|l| signed_up_to.is_none_or(|s| l.seq > s))
        .count();
    let complete = req.filter.is_null();
    let chain_json = json!({
        "algorithm": "digest = SHA-256(line of events.jsonl); hash = SHA-256(previous hash || digest); the store's first record follows 32 zero bytes",
        "store_id": store_id,
        "anchor": anchor.map(|(h, seq)| json!({"seq": seq, "hash": hex::encode(h)})),
        "complete": complete,
        "records_in_window": links.len(),
        "records_exported": exported,
        "last_seq_before_window": prior,
        "signed_up_to_seq": signed_up_to,
        "coverage": cover,
        "links": links,
        "links_after_window": after,
    });
    let mut files = Files::new();
    files.insert("chain.json".into(), serde_json::to_vec_pretty(&chain_json)?);
    files.insert(
        "checkpoints.json".into(),
        serde_json::to_vec_pretty(&json!({
            "signed_message": chain::CHECKPOINT_MESSAGE,
            "store_id": store_id,
            "checkpoints": kept,
        }))?,
    );
    files.insert("events.jsonl".into(), jsonl.into_bytes());
    files.insert("node.pub".into(), format!("{public_key}\n").into_bytes());
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(query::FLOW_CSV_COLUMNS)?;
    let mut flows = 0;
    for f in &stream.flows {
        if f.last_seen >= req.since && f.first_seen < req.until {
            super::bundle::flow_row(&mut csv, f)?;
            flows += 1;
        }
    }
    files.insert(
        "flows.csv".into(),
        csv.into_inner().map_err(|e| e.into_error())?,
    );
    let summary = NodeSummary {
        node: node.to_string(),
        public_key: public_key.clone(),
        in_window: links.len(),
        exported,
        signed_up_to: signed_of_window,
        unsigned,
        flows,
        refused,
        refused_total,
    };
    let entry = json!({
        "public_key": public_key,
        "store_id": store_id,
        "records_in_window": links.len(),
        "records_exported": exported,
        "signed_up_to_seq": signed_up_to,
        "unsigned_records": unsigned,
        "flows": flows,
        "coverage_complete": cover.complete(),
    });
    Ok((files, entry, summary))
}

/// summary.md: per node what the bundle holds and how far its signatures
/// reach, then the refusals.
fn summary_md(req: &Request<'_>, nodes: &[NodeSummary]) -> String {
    use std::fmt::Write;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Fleet evidence, {} .. {}\n",
        t(req.since),
        t(req.until)
    );
    let _ = writeln!(
        m,
        "Read from NATS JetStream ({}). Each node's records keep that node's hash chain; `egress-monitor verify` re-links every chain and checks it against the checkpoints the node's key signed. Policies, GeoIP identity and host facts are not in the stream: export them from the node (`egress-monitor export`).\n",
        req.source["stream"].as_str().unwrap_or("?")
    );
    if !req.filter.is_null() {
        let _ = writeln!(m, "Filter: `{}`\n", req.filter);
    }
    let _ = writeln!(
        m,
        "| node | records in window | exported | signed up to seq | not yet signed | flow rows | node key |"
    );
    let _ = writeln!(m, "| --- | --- | --- | --- | --- | --- | --- |");
    for n in nodes {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} |",
            super::summary::md(&n.node),
            n.in_window,
            n.exported,
            n.signed_up_to
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            n.unsigned,
            n.flows,
            super::summary::code(&n.public_key)
        );
    }
    let refused: usize = nodes.iter().map(|n| n.refused_total).sum();
    let _ = writeln!(m, "\n## Refusals (denied and would-deny)\n");
    if refused == 0 {
        let _ = writeln!(m, "None in the window.");
        return m;
    }
    let mut rows: Vec<(&str, &Event)> = nodes
        .iter()
        .flat_map(|n| n.refused.iter().map(move |e| (n.node.as_str(), e)))
        .collect();
    rows.sort_by_key(|(node, e)| (e.unix_nanos, *node));
    let _ = writeln!(
        m,
        "| time | node | verdict | policy | workload | destination | country |"
    );
    let _ = writeln!(m, "| --- | --- | --- | --- | --- | --- | --- |");
    for (node, e) in rows.iter().take(super::summary::TABLE_ROWS) {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {}:{}/{} | {} |",
            e.time,
            super::summary::md(node),
            e.verdict,
            super::summary::md(&e.policy),
            super::summary::md(&super::summary::workload_name(&e.cgroup_path, &e.pod_uid)),
            super::summary::md(&e.dst_ip),
            e.dst_port,
            e.protocol,
            super::summary::md(&e.country)
        );
    }
    if refused > rows.len().min(super::summary::TABLE_ROWS) {
        let _ = writeln!(
            m,
            "\n{refused} in all; every one is in its node's events.jsonl."
        );
    }
    m
}

/// What `verify` found in a fleet bundle, per node.
#[derive(Debug)]
pub struct Report {
    pub since: String,
    pub until: String,
    pub files: usize,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug)]
pub struct NodeReport {
    pub node: String,
    pub public_key: String,
    /// The key was among those pinned (--pubkey).
    pub pinned: bool,
    pub records_in_window: usize,
    pub records_exported: usize,
    pub signed_up_to: Option<i64>,
    /// Records of the window after the last signed checkpoint.
    pub unsigned: usize,
    pub coverage: Coverage,
}

/// Whether the files are a fleet bundle (by the manifest's format).
pub fn is_fleet(files: &Files) -> bool {
    files
        .get("manifest.json")
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .is_some_and(|m| m["format"] == FORMAT)
}

/// Checks a fleet bundle: every file's digest, and for each node its
/// chain from its anchor, its records against the chain, and its
/// checkpoints (each signed by the node's key, each one the chain reaches
/// naming the chain's hash there, none made in the window beyond the
/// chain's end).
pub fn verify(files: &Files, pinned: &[VerifyingKey]) -> Result<Report, Broken> {
    let manifest = verify::json_file(files, "manifest.json")?;
    if manifest["format"] != FORMAT {
        return Err(broken(
            "manifest.json",
            format!("format is {}, expected {FORMAT}", manifest["format"]),
        ));
    }
    verify::check_digests(files, &manifest, &["manifest.json"])?;
    let nodes = manifest["nodes"]
        .as_object()
        .ok_or_else(|| broken("manifest.json", "no nodes"))?;
    // Every node's files are one the manifest names.
    for name in files.keys() {
        if let Some(rest) = name.strip_prefix("nodes/") {
            let node = rest.split('/').next().unwrap_or("");
            if !nodes.contains_key(node) {
                return Err(broken(
                    name.as_str(),
                    "of a node the manifest does not name",
                ));
            }
        }
    }
    let since = manifest["window"]["since_unix_nanos"]
        .as_i64()
        .ok_or_else(|| broken("manifest.json", "no window"))?;
    let until = manifest["window"]["until_unix_nanos"]
        .as_i64()
        .ok_or_else(|| broken("manifest.json", "no window"))?;
    let mut out = Vec::new();
    for (node, entry) in nodes {
        out.push(verify_node(files, node, entry, since, until, pinned)?);
    }
    Ok(Report {
        since: manifest["window"]["since"].as_str().unwrap_or("").into(),
        until: manifest["window"]["until"].as_str().unwrap_or("").into(),
        files: files.len(),
        nodes: out,
    })
}

fn verify_node(
    files: &Files,
    node: &str,
    entry: &Value,
    since: i64,
    until: i64,
    pinned: &[VerifyingKey],
) -> Result<NodeReport, Broken> {
    let dir = format!("nodes/{node}");
    let name = |f: &str| format!("{dir}/{f}");
    let pub_item = name("node.pub");
    let pub_hex = files
        .get(&pub_item)
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .ok_or_else(|| broken(&pub_item, "missing"))?;
    let key = chain::decode32(&pub_hex)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| broken(&pub_item, "not an ed25519 public key in hex"))?;
    if entry["public_key"].as_str() != Some(pub_hex.as_str()) {
        return Err(broken(
            &pub_item,
            "differs from the key the manifest names for the node",
        ));
    }
    let store_id = entry["store_id"].as_str().unwrap_or("");

    let chain_item = name("chain.json");
    let c = verify::json_file(files, &chain_item)?;
    let links: Vec<Link> = serde_json::from_value(c["links"].clone())
        .map_err(|e| broken(&chain_item, format!("links: {e}")))?;
    let after: Vec<Link> = serde_json::from_value(c["links_after_window"].clone())
        .map_err(|e| broken(&chain_item, format!("links_after_window: {e}")))?;
    let anchor = match &c["anchor"] {
        Value::Null if links.is_empty() => None,
        a => {
            let seq = a["seq"]
                .as_i64()
                .ok_or_else(|| broken(&chain_item, "anchor without seq"))?;
            if links.first().map(|l| l.seq) != Some(seq + 1) {
                return Err(broken(
                    &chain_item,
                    format!("the first link does not follow the anchor (seq {seq})"),
                ));
            }
            let hash = a["hash"]
                .as_str()
                .and_then(chain::decode32)
                .ok_or_else(|| broken(&chain_item, "anchor hash is not hex"))?;
            Some((hash, seq))
        }
    };
    let all: Vec<Link> = links.iter().chain(&after).cloned().collect();
    chain::check_links(&anchor.map(|(h, _)| h).unwrap_or(chain::GENESIS), &all)
        .map_err(|(_, why)| broken(&chain_item, why))?;
    if c["records_in_window"].as_u64() != Some(links.len() as u64) {
        return Err(broken(
            &chain_item,
            "records_in_window differs from the links",
        ));
    }

    // The checkpoints: signed by the node's key; each one the chain
    // reaches names its hash there; one made in the window beyond the
    // chain's end means records were left out at the end.
    let cp_item = name("checkpoints.json");
    let cps = verify::json_file(files, &cp_item)?;
    if cps["store_id"].as_str() != Some(store_id) || c["store_id"].as_str() != Some(store_id) {
        return Err(broken(&cp_item, "store_id differs from manifest.json"));
    }
    let list: Vec<Checkpoint> = serde_json::from_value(cps["checkpoints"].clone())
        .map_err(|e| broken(&cp_item, format!("checkpoints: {e}")))?;
    verify::check_signatures(&list, store_id, &key, &cp_item)?;
    let by_seq: BTreeMap<i64, &Link> = all.iter().map(|l| (l.seq, l)).collect();
    let prior = c["last_seq_before_window"]
        .as_i64()
        .ok_or_else(|| broken(&chain_item, "no last_seq_before_window"))?;
    let end = all.last().map(|l| l.seq).unwrap_or(prior);
    let mut signed_up_to = None;
    for cp in &list {
        match by_seq.get(&cp.seq) {
            Some(l) if l.hash == cp.hash => signed_up_to = signed_up_to.max(Some(cp.seq)),
            Some(_) => {
                return Err(broken(
                    &chain_item,
                    format!(
                        "seq {} differs from the checkpoint signed for it: the chain was rewritten",
                        cp.seq
                    ),
                ))
            }
            None if cp.seq > end && cp.unix_nanos >= since && cp.unix_nanos < until => {
                return Err(broken(
                    &chain_item,
                    format!(
                        "the records end at seq {end}, but a checkpoint signed during the window holds seq {}: records were left out at the end",
                        cp.seq
                    ),
                ))
            }
            None => {}
        }
    }
    if c["signed_up_to_seq"].as_i64() != signed_up_to {
        return Err(broken(
            &chain_item,
            "signed_up_to_seq differs from what the signed checkpoints reach",
        ));
    }
    let cover = coverage::coverage(&list, since, until);
    let stated: Coverage = serde_json::from_value(c["coverage"].clone())
        .map_err(|e| broken(&chain_item, format!("coverage: {e}")))?;
    if stated != cover {
        return Err(broken(
            &chain_item,
            "the coverage stated differs from what the signed heartbeats in checkpoints.json show",
        ));
    }

    let window_by_seq: BTreeMap<i64, &Link> = links.iter().map(|l| (l.seq, l)).collect();
    let complete = c["complete"].as_bool().unwrap_or(false);
    let n = verify::check_records(
        files,
        &name("events.jsonl"),
        &chain_item,
        &c,
        &links,
        &window_by_seq,
        complete,
    )?;
    let unsigned = links
        .iter()
        .filter(|l| signed_up_to.is_none_or(|s| l.seq > s))
        .count();
    Ok(NodeReport {
        node: node.to_string(),
        pinned: pinned.contains(&key),
        public_key: pub_hex,
        records_in_window: links.len(),
        records_exported: n,
        signed_up_to,
        unsigned,
        coverage: cover,
    })
}
