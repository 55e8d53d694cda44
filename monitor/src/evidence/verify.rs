//! Checking a bundle: the signature over the manifest, the digest of every
//! file, no file more or less, the hash chain from its anchor, and that
//! every exported record is the chain's record at its position. The first
//! broken item is named.
use std::{collections::BTreeMap, io::Read, path::Path};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::bundle::{Files, FORMAT};
use crate::store::chain;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{item}: {reason}")]
pub struct Broken {
    pub item: String,
    pub reason: String,
}

fn broken(item: impl Into<String>, reason: impl Into<String>) -> Broken {
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
}

/// Reads a bundle's files (tar; names below `evidence/`).
pub fn read_tar(path: &Path) -> Result<Files, Broken> {
    let f =
        std::fs::File::open(path).map_err(|e| broken(path.display().to_string(), e.to_string()))?;
    let mut archive = tar::Archive::new(f);
    let mut files = Files::new();
    let entries = archive.entries().map_err(|e| {
        broken(
            path.display().to_string(),
            format!("not a tar archive: {e}"),
        )
    })?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| broken(path.display().to_string(), format!("damaged archive: {e}")))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| broken(path.display().to_string(), format!("bad entry name: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(broken(name, "not a regular file"));
        }
        let Some(rel) = name.strip_prefix("evidence/") else {
            return Err(broken(name, "outside evidence/"));
        };
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| broken(name.clone(), format!("unreadable: {e}")))?;
        if files.insert(rel.to_string(), data).is_some() {
            return Err(broken(name, "appears twice in the archive"));
        }
    }
    Ok(files)
}

fn json(files: &Files, name: &str) -> Result<Value, Broken> {
    let b = files.get(name).ok_or_else(|| broken(name, "missing"))?;
    serde_json::from_slice(b).map_err(|e| broken(name, format!("not JSON: {e}")))
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
    let sig = hex::decode(String::from_utf8_lossy(sig_text).trim())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| broken("manifest.sig", "not an ed25519 signature in hex"))?;
    key.verify(manifest_bytes, &sig).map_err(|_| {
        broken(
            "manifest.sig",
            "the signature does not verify: manifest.json was changed or signed by another key",
        )
    })?;

    // Every file listed, with its digest; nothing unlisted.
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
        if name != "manifest.json" && name != "manifest.sig" && !listed.contains_key(name) {
            return Err(broken(
                name.as_str(),
                "not in the manifest: added after signing",
            ));
        }
    }

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

    // The records.
    let complete = c["complete"].as_bool().unwrap_or(false);
    let events = files
        .get("events.jsonl")
        .ok_or_else(|| broken("events.jsonl", "missing"))?;
    let text = std::str::from_utf8(events).map_err(|_| broken("events.jsonl", "not UTF-8"))?;
    let mut last_seq = None;
    let mut n = 0usize;
    for (i, line) in text.lines().enumerate() {
        let item = format!("events.jsonl line {}", i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| broken(&item, format!("not JSON: {e}")))?;
        let seq = v["seq"].as_i64().ok_or_else(|| broken(&item, "no seq"))?;
        if last_seq.is_some_and(|s| seq <= s) {
            return Err(broken(
                &item,
                format!(
                    "seq {seq} is out of order (after seq {})",
                    last_seq.unwrap_or(0)
                ),
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
                return Err(broken(
                    &item,
                    format!(
                        "seq {} of the chain is missing here: a record was removed",
                        want.unwrap_or(-1)
                    ),
                ));
            }
        }
        last_seq = Some(seq);
        n += 1;
    }
    if complete && n != links.len() {
        return Err(broken(
            "events.jsonl",
            format!(
                "{} records, the chain has {}: records were removed",
                n,
                links.len()
            ),
        ));
    }
    if c["records_exported"].as_u64() != Some(n as u64) {
        return Err(broken(
            "events.jsonl",
            format!("{n} records, chain.json says {}", c["records_exported"]),
        ));
    }
    Ok(Report {
        public_key: pub_hex,
        self_signed: pinned.is_none(),
        since: manifest["window"]["since"].as_str().unwrap_or("").into(),
        until: manifest["window"]["until"].as_str().unwrap_or("").into(),
        records_in_window: links.len(),
        records_exported: n,
        files: files.len(),
    })
}
