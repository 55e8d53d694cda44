//! Checking a bundle: the signature over the manifest, the digest of every
//! file, no file more or less, the hash chain from its anchor, and that
//! every exported record is the chain's record at its position. The first
//! broken item is named.
use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::bundle::{Files, FORMAT};
use crate::store::{
    chain,
    coverage::{coverage, Coverage},
};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{item}: {reason}")]
pub struct Broken {
    pub item: String,
    pub reason: String,
}

pub(super) fn broken(item: impl Into<String>, reason: impl Into<String>) -> Broken {
    Broken {
        item: item.into(),
        reason: reason.into(),
    }
}

#[derive(Debug)]
pub struct Report {
    pub public_key: String,
    /// No --pubkey was given: the bundle's own key was used.
    pub self_signed: bool,
    pub since: String,
    pub until: String,
    pub records_in_window: usize,
    pub records_exported: usize,
    pub files: usize,
    /// What the signed heartbeats show was watched; `None` for bundles
    /// made before heartbeats existed.
    pub coverage: Option<Coverage>,
}

/// An ed25519 signature from its hex form.
fn signature_of(hex_text: &str) -> Option<Signature> {
    hex::decode(hex_text)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
}

fn json(files: &Files, name: &str) -> Result<Value, Broken> {
    let b = files.get(name).ok_or_else(|| broken(name, "missing"))?;
    serde_json::from_slice(b).map_err(|e| broken(name, format!("not JSON: {e}")))
}

/// The checkpoints signed during the window: each by the node key, and each
/// one made after the window's first record names a record the chain holds
/// (records removed from the end of the store are caught here). Returns
/// the coverage they show, which chain.json must state as it is.
fn check_checkpoints(
    files: &Files,
    manifest: &Value,
    chain_json: &Value,
    key: &VerifyingKey,
    by_seq: &BTreeMap<i64, &chain::Link>,
) -> Result<Option<Coverage>, Broken> {
    if !files.contains_key("checkpoints.json") {
        // Bundles made before checkpoints existed.
        return Ok(None);
    }
    let item = "checkpoints.json";
    let c = json(files, item)?;
    let store_id = manifest["store_id"].as_str().unwrap_or("");
    if c["store_id"].as_str() != Some(store_id) {
        return Err(broken(item, "store_id differs from manifest.json"));
    }
    let list: Vec<chain::Checkpoint> = serde_json::from_value(c["checkpoints"].clone())
        .map_err(|e| broken(item, format!("checkpoints: {e}")))?;
    let since = manifest["window"]["since_unix_nanos"]
        .as_i64()
        .unwrap_or(i64::MIN);
    let until = manifest["window"]["until_unix_nanos"]
        .as_i64()
        .unwrap_or(i64::MAX);
    let prior = chain_json["last_seq_before_window"]
        .as_i64()
        .ok_or_else(|| broken("chain.json", "no last_seq_before_window"))?;
    let last = by_seq.keys().next_back().copied().unwrap_or(prior);
    check_signatures(&list, store_id, key, item)?;
    for cp in &list {
        if cp.unix_nanos < since || cp.unix_nanos >= until || cp.seq <= prior {
            continue;
        }
        match by_seq.get(&cp.seq) {
            Some(l) if l.hash == cp.hash => {}
            Some(_) => {
                return Err(broken(
                    "chain.json",
                    format!("seq {} differs from the checkpoint signed for it: the chain was rewritten", cp.seq),
                ))
            }
            None => {
                return Err(broken(
                    "chain.json",
                    format!(
                        "the records end at seq {last}, but a checkpoint signed during the window holds seq {}: records were removed from the end",
                        cp.seq
                    ),
                ))
            }
        }
    }
    let cover = coverage(&list, since, until);
    match &chain_json["coverage"] {
        // Bundles made before coverage was stated.
        Value::Null => {}
        stated => {
            let stated: Coverage = serde_json::from_value(stated.clone())
                .map_err(|e| broken("chain.json", format!("coverage: {e}")))?;
            if stated != cover {
                return Err(broken(
                    "chain.json",
                    "the coverage stated differs from what the signed heartbeats in checkpoints.json show",
                ));
            }
        }
    }
    Ok(Some(cover))
}

/// Each checkpoint is signed by `key` for the store `store_id`.
pub(super) fn check_signatures(
    list: &[chain::Checkpoint],
    store_id: &str,
    key: &VerifyingKey,
    item: &str,
) -> Result<(), Broken> {
    for cp in list {
        let sig = signature_of(&cp.signature)
            .ok_or_else(|| broken(item, format!("seq {}: signature is not hex", cp.seq)))?;
        key.verify(cp.message(store_id).as_bytes(), &sig)
            .map_err(|_| {
                broken(
                    item,
                    format!(
                        "the checkpoint of seq {} is not signed by the node key",
                        cp.seq
                    ),
                )
            })?;
    }
    Ok(())
}

/// A bundle file that is JSON, or why not.
pub(super) fn json_file(files: &Files, name: &str) -> Result<Value, Broken> {
    json(files, name)
}

/// Checks a bundle's files; `pinned` is the node key the caller trusts.
pub fn verify(files: &Files, pinned: Option<&VerifyingKey>) -> Result<Report, Broken> {
    let manifest_bytes = files
        .get("manifest.json")
        .ok_or_else(|| broken("manifest.json", "missing"))?;
    let manifest = json(files, "manifest.json")?;
    if manifest["format"] != FORMAT {
        return Err(broken(
            "manifest.json",
            format!("format is {}, expected {FORMAT}", manifest["format"]),
        ));
    }
    let pub_text = files
        .get("node.pub")
        .ok_or_else(|| broken("node.pub", "missing"))?;
    let pub_hex = String::from_utf8_lossy(pub_text).trim().to_string();
    let key = chain::decode32(&pub_hex)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| broken("node.pub", "not an ed25519 public key in hex"))?;
    if manifest["node_public_key"].as_str() != Some(pub_hex.as_str()) {
        return Err(broken(
            "node.pub",
            "differs from the key named in manifest.json",
        ));
    }
    if let Some(p) = pinned {
        if p != &key {
            return Err(broken(
                "node.pub",
                format!(
                    "the bundle is signed by {pub_hex}, not by the --pubkey given ({})",
                    hex::encode(p.as_bytes())
                ),
            ));
        }
    }
    let sig_text = files
        .get("manifest.sig")
        .ok_or_else(|| broken("manifest.sig", "missing"))?;
    let sig = signature_of(String::from_utf8_lossy(sig_text).trim())
        .ok_or_else(|| broken("manifest.sig", "not an ed25519 signature in hex"))?;
    key.verify(manifest_bytes, &sig).map_err(|_| {
        broken(
            "manifest.sig",
            "the signature does not verify: manifest.json was changed or signed by another key",
        )
    })?;

    check_digests(files, &manifest, &["manifest.json", "manifest.sig"])?;

    // The chain.
    let c = json(files, "chain.json")?;
    let links: Vec<chain::Link> = serde_json::from_value(c["links"].clone())
        .map_err(|e| broken("chain.json", format!("links: {e}")))?;
    let anchor = match &c["anchor"] {
        Value::Null if links.is_empty() => chain::GENESIS,
        a => {
            let seq = a["seq"]
                .as_i64()
                .ok_or_else(|| broken("chain.json", "anchor without seq"))?;
            if links.first().map(|l| l.seq) != Some(seq + 1) {
                return Err(broken(
                    "chain.json",
                    format!("the first link does not follow the anchor (seq {seq})"),
                ));
            }
            a["hash"]
                .as_str()
                .and_then(chain::decode32)
                .ok_or_else(|| broken("chain.json", "anchor hash is not hex"))?
        }
    };
    chain::check_links(&anchor, &links).map_err(|(_, why)| broken("chain.json", why))?;
    if c["records_in_window"].as_u64() != Some(links.len() as u64) {
        return Err(broken(
            "chain.json",
            "records_in_window differs from the links",
        ));
    }
    let by_seq: BTreeMap<i64, &chain::Link> = links.iter().map(|l| (l.seq, l)).collect();
    let coverage = check_checkpoints(files, &manifest, &c, &key, &by_seq)?;

    // The records.
    let complete = c["complete"].as_bool().unwrap_or(false);
    let n = check_records(
        files,
        "events.jsonl",
        "chain.json",
        &c,
        &links,
        &by_seq,
        complete,
    )?;
    Ok(Report {
        public_key: pub_hex,
        self_signed: pinned.is_none(),
        since: manifest["window"]["since"].as_str().unwrap_or("").into(),
        until: manifest["window"]["until"].as_str().unwrap_or("").into(),
        records_in_window: links.len(),
        records_exported: n,
        files: files.len(),
        coverage,
    })
}

/// Checks the records file `name` against the chain (`chain_name`, read
/// as `c`): each record is the chain's record at its seq, in order, none
/// twice, and (`complete`) none left out; returns how many there are.
pub(super) fn check_records(
    files: &Files,
    name: &str,
    chain_name: &str,
    c: &Value,
    links: &[chain::Link],
    by_seq: &BTreeMap<i64, &chain::Link>,
    complete: bool,
) -> Result<usize, Broken> {
    let events = files.get(name).ok_or_else(|| broken(name, "missing"))?;
    let text = std::str::from_utf8(events).map_err(|_| broken(name, "not UTF-8"))?;
    let mut last_seq = None;
    let mut n = 0usize;
    for (i, line) in text.lines().enumerate() {
        let item = format!("{name} line {}", i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| broken(&item, format!("not JSON: {e}")))?;
        let seq = v["seq"].as_i64().ok_or_else(|| broken(&item, "no seq"))?;
        if last_seq.is_some_and(|s| seq <= s) {
            return Err(broken(
                &item,
                if last_seq == Some(seq) {
                    format!("seq {seq} appears twice: a record was inserted")
                } else {
                    format!(
                        "seq {seq} is out of order (after seq {}): records were reordered",
                        last_seq.unwrap_or(0)
                    )
                },
            ));
        }
        let link = by_seq
            .get(&seq)
            .ok_or_else(|| broken(&item, format!("seq {seq} is not in the chain: inserted")))?;
        if hex::encode(chain::digest(line)) != link.digest {
            return Err(broken(
                &item,
                format!("seq {seq} differs from the record the chain holds"),
            ));
        }
        if complete {
            let want = links.get(n).map(|l| l.seq);
            if want != Some(seq) {
                // Only on the way to a failure: is the record that belongs
                // here further down (moved), or gone (removed)?
                let later = text.lines().skip(i + 1).any(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v["seq"].as_i64())
                        == want
                });
                let want = want.unwrap_or(-1);
                return Err(broken(
                    &item,
                    if later {
                        format!(
                            "seq {want} of the chain comes later in the file, seq {seq} is here: records were reordered"
                        )
                    } else {
                        format!("seq {want} of the chain is missing here: a record was removed")
                    },
                ));
            }
        }
        last_seq = Some(seq);
        n += 1;
    }
    if complete && n != links.len() {
        return Err(broken(
            name,
            format!(
                "{} records, the chain has {}: records were removed",
                n,
                links.len()
            ),
        ));
    }
    if c["records_exported"].as_u64() != Some(n as u64) {
        return Err(broken(
            name,
            format!("{n} records, {chain_name} says {}", c["records_exported"]),
        ));
    }
    Ok(n)
}

/// Every file the manifest lists is there with its digest, and every
/// other file (but those `outside` it) is listed.
pub(super) fn check_digests(
    files: &Files,
    manifest: &Value,
    outside: &[&str],
) -> Result<(), Broken> {
    let listed = manifest["files"]
        .as_object()
        .ok_or_else(|| broken("manifest.json", "no file list"))?;
    for (name, want) in listed {
        let data = files
            .get(name)
            .ok_or_else(|| broken(name.as_str(), "listed in the manifest but missing"))?;
        if Some(hex::encode(Sha256::digest(data)).as_str()) != want.as_str() {
            return Err(broken(
                name.as_str(),
                "SHA-256 differs from the manifest: the file was changed",
            ));
        }
    }
    for name in files.keys() {
        if !outside.contains(&name.as_str()) && !listed.contains_key(name) {
            return Err(broken(
                name.as_str(),
                "not in the manifest: added after signing",
            ));
        }
    }

    Ok(())
}
