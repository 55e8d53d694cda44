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
pub fn canonical(seq: i64, e: &Event) -> String {
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
mod tests {
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

    #[test]
    fn canonical_form_is_sorted_and_stable() {
        let line = r#"{"b":1,"a":{"d":2,"c":3}}"#;
        assert_eq!(recanonical(line).unwrap(), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }
}
