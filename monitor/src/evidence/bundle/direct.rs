//! An export written straight into its tar: each file's bytes go to their
//! place in the tar as they are made, not through a spool file copied in
//! after the manifest (that copy was a fifth of an export of 1M records,
//! and every byte of the bundle went through the page cache twice).
//!
//! A file's place follows from the sizes of the files before it in the
//! tar: the manifest and its signature first (the manifest's size is
//! known before its digests, which all have one length), then
//! chain.json, checkpoints.json, cloud_ranges.json and counters.json,
//! then events.jsonl. Those four are made before the records are read,
//! from what the records will be: their seq range (the chain is checked
//! to be unbroken over it, so the window holds one record per seq), the
//! hash the first follows, and all of them exported. That is checked
//! once they are read; where it does not hold (a `keep` that leaves
//! records out) or a file's size is not the one planned, nothing is
//! kept and the export goes through the spool files instead. A filter
//! always does: which records it keeps is known only once they are read.
use std::{collections::BTreeMap, io::Write, os::unix::fs::FileExt};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::{
    chain_close, chain_open, check_anchor, check_tail, checkpoints_json, create_private,
    finish_small, flows_csv, hash_before, in_memory, manifest_json, prior_seq, read_records,
    seq_range, signature_file, small_files, tar_mtime, tar_order, watched, Body, Part, Parts,
    PrivateDir, Records, ReportInputs, Request, SeqRange, Stored, Summary,
};
use crate::store::{chain, Store};

/// Each writer's buffer (chain.json's links, events.jsonl, flows.csv).
const BUFFER: usize = 1 << 20;

/// A tar entry's header and data are padded to blocks of this many bytes.
const BLOCK: u64 = 512;

/// A writer at a place of the tar file, with its own buffer: several
/// write at once, each at its place (`write_all_at`, no shared offset).
pub(super) struct At {
    file: std::fs::File,
    /// Where the buffer's bytes go.
    pos: u64,
    buf: Vec<u8>,
}

impl At {
    fn new(file: &std::fs::File, pos: u64) -> std::io::Result<Self> {
        Ok(Self {
            file: file.try_clone()?,
            pos,
            buf: Vec::with_capacity(BUFFER),
        })
    }
}

impl Write for At {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > self.buf.capacity() {
            self.flush()?;
        }
        if bytes.len() >= self.buf.capacity() {
            self.file.write_all_at(bytes, self.pos)?;
            self.pos += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.pos)?;
            self.pos += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// A part written at `pos` of the tar.
fn part_at(file: &std::fs::File, pos: u64) -> std::io::Result<Part> {
    Ok(Part {
        sha: Sha256::new(),
        len: 0,
        body: Body::InTar(At::new(file, pos)?),
    })
}

/// The header `tar::Builder::append_data` writes for a file of the bundle
/// (a GNU long-name entry before it where the name needs one), as
/// `write_parts` has it.
fn header(name: &str, size: u64, mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, format!("evidence/{name}"), std::io::empty())?;
    // The header only: the builder's end of archive (written as it is
    // dropped) goes to the vector left behind.
    Ok(std::mem::take(b.get_mut()))
}

/// `n` rounded up to whole blocks.
fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// The size of chain.json's list of links for records `first..=last`,
/// one per seq, as `link_line` writes them (None: a seq below 1).
fn links_len(first: i64, last: i64) -> Option<u64> {
    if first < 1 || last < first {
        return None;
    }
    // `    {"digest":"<64>","hash":"<64>","seq":N}`: 162 bytes and N's
    // digits; `,\n` between two.
    let mut total = 2 * (last - first) as u64;
    let mut low = 1i64;
    for digits in 1..=19u64 {
        let high = if digits == 19 { i64::MAX } else { low * 10 - 1 };
        let (a, b) = (first.max(low), last.min(high));
        if a <= b {
            total += (b - a + 1) as u64 * (162 + digits);
        }
        if digits < 19 {
            low *= 10;
        }
    }
    Some(total)
}

/// What the window's records will be, and the files made from it before
/// they are read.
struct Plan {
    range: SeqRange,
    records: Records,
    cover: crate::store::coverage::Coverage,
    /// chain.json up to its links, and its whole size.
    chain_open: Vec<u8>,
    chain_len: u64,
    public: String,
    /// The small files (all but report.html and summary.md).
    small: super::Small,
}

/// The plan, or None where it cannot be made (the spool files then make
/// the export, and any error again, in the order they meet them).
fn plan(store: &Store, key: &SigningKey, req: &Request<'_>) -> anyhow::Result<Option<Plan>> {
    use rusqlite::OptionalExtension;
    let range = seq_range(store, req)?;
    let records = match range {
        (Some(first), Some(last)) => {
            // The hash the first record follows: its link, or for a
            // compact row the hash of the row before it.
            let stored: Option<Vec<u8>> = store
                .conn
                .query_row(
                    "SELECT prev_hash FROM events WHERE seq = ?1",
                    [first],
                    |r| r.get(0),
                )
                .optional()?;
            let prev = match stored {
                Some(p) if !p.is_empty() => chain::to32(&p),
                Some(_) => match hash_before(store, first) {
                    Ok(h) => h,
                    Err(_) => return Ok(None),
                },
                None => return Ok(None),
            };
            let Ok(n) = usize::try_from(last - first + 1) else {
                return Ok(None);
            };
            Records {
                in_window: n,
                exported: n,
                anchor: Some((prev, first - 1)),
                by_cidr: Default::default(),
                drift: Default::default(),
            }
        }
        _ => Records {
            in_window: 0,
            exported: 0,
            anchor: None,
            by_cidr: Default::default(),
            drift: Default::default(),
        },
    };
    let links = match range {
        (Some(first), Some(last)) => match links_len(first, last) {
            Some(n) => n,
            None => return Ok(None),
        },
        _ => 0,
    };
    let prior = prior_seq(store, req, &records)?;
    let (checkpoints, cover) = watched(store, req)?;
    let chain_open = chain_open(store, &records, true, prior, &cover)?;
    let chain_len =
        chain_open.len() as u64 + links + super::chain_close(records.in_window).len() as u64;
    let public = crate::evidence::key::public_hex(&key.verifying_key());
    let summary = Summary {
        in_window: records.in_window,
        exported: records.exported,
        ..Summary::default()
    };
    let mut small = small_files(store, req, &summary, &public)?;
    small.small.insert(
        "checkpoints.json".into(),
        checkpoints_json(store, &checkpoints)?,
    );
    Ok(Some(Plan {
        range,
        records,
        cover,
        chain_open,
        chain_len,
        public,
        small,
    }))
}

/// Writes the bundle into `dir`'s tar and renames it to `out`, as
/// `export` does; None where the plan does not hold (nothing written
/// under `out`; `dir` as it was).
pub(super) fn export(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    dir: &PrivateDir,
    out: &std::path::Path,
) -> anyhow::Result<Option<(Summary, usize)>> {
    if !req.filter.is_null() || req.by_process {
        return Ok(None);
    }
    let tmp = dir.0.join("bundle.tar.partial");
    let mut summary = Summary::default();
    let mut clock = std::time::Instant::now();
    // One read transaction: every file sees the same store.
    store.conn.execute_batch("BEGIN")?;
    let written = write(store, key, req, &tmp, &mut summary, &mut clock);
    if !store.conn.is_autocommit() {
        store.conn.execute_batch("COMMIT")?;
    }
    let files = match written {
        Ok(Some(files)) => files,
        Ok(None) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    summary.step("tar", &mut clock);
    Ok(Some((summary, files)))
}

/// Writes the tar at `tmp` (synced); returns how many files it holds.
fn write(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    tmp: &std::path::Path,
    summary: &mut Summary,
    clock: &mut std::time::Instant,
) -> anyhow::Result<Option<usize>> {
    let Ok(Some(plan)) = plan(store, key, req) else {
        return Ok(None);
    };
    let mtime = tar_mtime();
    // Every file's name, and the size of those made already.
    let mut sizes: BTreeMap<String, Option<u64>> = plan
        .small
        .small
        .iter()
        .map(|(n, b)| (n.clone(), Some(b.len() as u64)))
        .collect();
    for big in ["events.jsonl", "flows.csv", "report.html", "summary.md"] {
        sizes.insert(big.into(), None);
    }
    sizes.insert("chain.json".into(), Some(plan.chain_len));
    let placeholder: BTreeMap<&String, String> =
        sizes.keys().map(|n| (n, "0".repeat(64))).collect();
    let manifest_len = manifest_json(store, req, &plan.public, &placeholder)?.len() as u64;
    sizes.insert("manifest.json".into(), Some(manifest_len));
    // 64 bytes of signature in hex, and a newline.
    sizes.insert("manifest.sig".into(), Some(129));
    let names: Vec<String> = sizes.keys().cloned().collect();
    let order: Vec<String> = tar_order(names.iter()).into_iter().cloned().collect();

    // Where chain.json's and events.jsonl's bytes go: after the files
    // before them, whose sizes are all known now.
    let mut places: BTreeMap<&str, u64> = BTreeMap::new();
    let mut at = 0u64;
    for name in &order {
        let data = at + header(name, 0, mtime)?.len() as u64;
        places.insert(name, data);
        if name == "events.jsonl" {
            break;
        }
        let Some(size) = sizes[name] else {
            return Ok(None);
        };
        at = data + padded(size);
    }
    let next_after_events = order
        .iter()
        .position(|n| n == "events.jsonl")
        .and_then(|i| order.get(i + 1));
    if next_after_events.map(String::as_str) != Some("flows.csv") {
        return Ok(None);
    }

    let file = create_private(tmp, 0o600)?;
    let io =
        |e: std::io::Error| anyhow::Error::from(e).context(format!("writing {}", tmp.display()));
    let mut chain_part = part_at(&file, places["chain.json"]).map_err(io)?;
    chain_part.write_all(&plan.chain_open).map_err(io)?;
    let mut jsonl = part_at(&file, places["events.jsonl"]).map_err(io)?;
    let records = read_records(store, req, plan.range, &mut jsonl, &mut chain_part)?;
    summary.step("records", clock);
    check_anchor(store, records.anchor)?;
    check_tail(store)?;
    summary.in_window = records.in_window;
    summary.exported = records.exported;
    if records.in_window != plan.records.in_window
        || records.exported != plan.records.exported
        || records.anchor != plan.records.anchor
    {
        return Ok(None);
    }
    chain_part
        .write_all(chain_close(records.in_window))
        .map_err(io)?;
    let mut parts = Parts::new();
    let chain_made = chain_part.finish()?;
    if chain_made.len != plan.chain_len {
        return Ok(None);
    }
    parts.insert("chain.json".into(), chain_made);
    let events = jsonl.finish()?;
    let flows_at =
        places["events.jsonl"] + padded(events.len) + header("flows.csv", 0, mtime)?.len() as u64;
    parts.insert("events.jsonl".into(), events);
    summary.step("chain", clock);

    let mut csv = part_at(&file, flows_at).map_err(io)?;
    let (flows, digest, tally) = flows_csv(store, req, &records.by_cidr, &mut csv)?;
    summary.flows = flows;
    parts.insert("flows.csv".into(), csv.finish()?);
    places.insert("flows.csv", flows_at);
    summary.step("flows", clock);

    let made = ReportInputs {
        records: &records,
        tally,
        digest: &digest,
        cover: &plan.cover,
        public: &plan.public,
    };
    finish_small(store, req, plan.small, made, summary, clock, &mut parts)?;
    // The files are the ones planned (the manifest aside).
    if !parts.keys().eq(sizes
        .keys()
        .filter(|n| !matches!(n.as_str(), "manifest.json" | "manifest.sig")))
    {
        return Ok(None);
    }
    let digests: BTreeMap<&String, String> = parts
        .iter()
        .map(|(n, m)| (n, hex::encode(m.digest)))
        .collect();
    let manifest = manifest_json(store, req, &plan.public, &digests)?;
    if manifest.len() as u64 != manifest_len {
        return Ok(None);
    }
    let signature = signature_file(key, &manifest);
    parts.insert("manifest.json".into(), in_memory(manifest));
    parts.insert("manifest.sig".into(), in_memory(signature));
    summary.step("summary and manifest", clock);

    // Every header, the files made in memory, the padding after the
    // ones written in place, and the end of the archive.
    let mut at = 0u64;
    for name in &order {
        let made = &parts[name];
        let head = header(name, made.len, mtime).map_err(io)?;
        file.write_all_at(&head, at).map_err(io)?;
        let data = at + head.len() as u64;
        match &made.body {
            Stored::Memory(bytes) => file.write_all_at(bytes, data).map_err(io)?,
            Stored::InTar if places.get(name.as_str()) == Some(&data) => {}
            // Planned elsewhere: not kept (a mistake in the plan, not in
            // the store).
            _ => return Ok(None),
        }
        let end = data + made.len;
        at = data + padded(made.len);
        file.write_all_at(&vec![0; (at - end) as usize], end)
            .map_err(io)?;
    }
    file.write_all_at(&[0; 1024], at).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(Some(parts.len()))
}

#[cfg(test)]
mod tests {
    use super::{header, links_len, padded};

    /// The planned size of the links is what `link_line` writes, across
    /// the places where seq gains a digit.
    #[test]
    fn links_len_is_what_link_line_writes() {
        for (first, last) in [
            (1, 1),
            (1, 9),
            (1, 10),
            (5, 120),
            (99, 1001),
            (9_990, 10_010),
        ] {
            let mut all = Vec::new();
            let mut line = Vec::new();
            for seq in first..=last {
                super::super::link_line(&mut line, seq > first, &[7; 32], &[9; 32], seq);
                all.extend_from_slice(&line);
            }
            assert_eq!(
                links_len(first, last),
                Some(all.len() as u64),
                "{first}..={last}"
            );
        }
        assert_eq!(links_len(0, 5), None);
    }

    /// A header is a block, or more where the name is long.
    #[test]
    fn headers_are_whole_blocks() {
        assert_eq!(header("events.jsonl", 1 << 40, 1).unwrap().len(), 512);
        let long = format!("policies/{}-0123456789abcdef.yaml", "p".repeat(200));
        let h = header(&long, 10, 1).unwrap();
        assert!(h.len() > 512 && h.len() as u64 == padded(h.len() as u64));
    }
}
