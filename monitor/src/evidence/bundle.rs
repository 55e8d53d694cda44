//! Building an evidence bundle from the store: one tar file holding the
//! window's records, flows, policy record, GeoIP identity, host, counters,
//! the hash chain, a manifest of SHA-256 digests and the node's signature.
use std::collections::BTreeMap;

use anyhow::{bail, Context};
use ed25519_dalek::{Signer, SigningKey};
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::report;

mod direct;
use crate::{
    events::{rfc3339_nanos, Event},
    store::{chain, coverage, query, Store},
};

pub const FORMAT: &str = "egress-monitor-evidence/1";

/// The files of a bundle by name.
pub type Files = BTreeMap<String, Vec<u8>>;

/// What to export.
pub struct Request<'a> {
    pub since: i64,
    pub until: i64,
    pub keep: &'a dyn Fn(&Event) -> bool,
    /// The filter as given (recorded in the manifest); null when none.
    pub filter: Value,
    /// The filter names processes (pid/uid): flows come from events.
    pub by_process: bool,
    /// Told (records read, records in the window) as the records are read.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// What the bundle holds, for the CLI's report.
#[derive(Debug, Default)]
pub struct Summary {
    pub in_window: usize,
    pub exported: usize,
    pub flows: usize,
    pub policy_versions: usize,
    /// How long each step of making it took, in order.
    pub took: Vec<(&'static str, std::time::Duration)>,
}

impl Summary {
    /// Ends the step `name` (begun at the last `step`, or at `since`).
    fn step(&mut self, name: &'static str, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.took.push((name, now - *since));
        *since = now;
    }

    /// "records 9.1 s, flows 6.2 s, ...": where an export's time went.
    pub fn took_text(&self) -> String {
        self.took
            .iter()
            .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn t(n: i64) -> String {
    rfc3339_nanos(i128::from(n))
}

fn read_first_line(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// Rows of a (time, json) table in force during the window: the last one
/// before it and every one inside it.
fn in_force(
    store: &Store,
    table: &str,
    col: &str,
    since: i64,
    until: i64,
) -> anyhow::Result<Vec<(i64, Value)>> {
    let sql = format!(
        "SELECT unix_nanos, {col} FROM {table} WHERE id >= coalesce((SELECT max(id) FROM {table} WHERE unix_nanos <= ?1), 0) AND unix_nanos < ?2 ORDER BY id"
    );
    let mut stmt = store.conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params![since, until], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(t, s)| (t, serde_json::from_str(&s).unwrap_or(Value::String(s))))
        .collect())
}

/// A file of the bundle as it is made: hashed and counted on the way, its
/// bytes in memory or, for an export, at its place in the tar or in a
/// spool file in the export's private directory (so memory does not grow
/// with the window).
struct Part {
    sha: Sha256,
    len: u64,
    body: Body,
}

enum Body {
    Memory(Vec<u8>),
    File(std::io::BufWriter<std::fs::File>, std::path::PathBuf),
    /// At its place in the tar being written (`direct`).
    InTar(direct::At),
}

impl std::io::Write for Part {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match &mut self.body {
            Body::Memory(v) => {
                v.extend_from_slice(buf);
                buf.len()
            }
            Body::File(f, _) => f.write(buf)?,
            Body::InTar(f) => f.write(buf)?,
        };
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.body {
            Body::Memory(_) => Ok(()),
            Body::File(f, _) => f.flush(),
            Body::InTar(f) => f.flush(),
        }
    }
}

/// A finished part: its digest, size and where its bytes are.
struct Made {
    digest: [u8; 32],
    len: u64,
    body: Stored,
}

enum Stored {
    Memory(Vec<u8>),
    File(std::path::PathBuf),
    /// Written at its place in the tar (`direct`).
    InTar,
}

/// Where the large parts go: memory (`build`) or a directory (`export`).
struct Spool<'a>(Option<&'a std::path::Path>);

impl Spool<'_> {
    fn part(&self, name: &str) -> anyhow::Result<Part> {
        let body = match self.0 {
            None => Body::Memory(Vec::new()),
            Some(dir) => {
                let path = dir.join(name.replace('/', "_"));
                let f = create_private(&path, 0o600)?;
                Body::File(std::io::BufWriter::with_capacity(1 << 20, f), path)
            }
        };
        Ok(Part {
            sha: Sha256::new(),
            len: 0,
            body,
        })
    }
}

impl Part {
    fn finish(self) -> anyhow::Result<Made> {
        let body = match self.body {
            Body::Memory(v) => Stored::Memory(v),
            Body::File(f, path) => {
                f.into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("writing {}", path.display()))?;
                Stored::File(path)
            }
            Body::InTar(mut f) => {
                std::io::Write::flush(&mut f)?;
                Stored::InTar
            }
        };
        Ok(Made {
            digest: self.sha.finalize().into(),
            len: self.len,
            body,
        })
    }
}

fn in_memory(bytes: Vec<u8>) -> Made {
    Made {
        digest: Sha256::digest(&bytes).into(),
        len: bytes.len() as u64,
        body: Stored::Memory(bytes),
    }
}

/// The parts of a bundle by name.
type Parts = BTreeMap<String, Made>;

/// Builds the bundle's files (signed manifest included), in memory.
pub fn build(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
) -> anyhow::Result<(Files, Summary)> {
    let (parts, summary) = assemble(store, key, req, &Spool(None))?;
    let mut files = Files::new();
    for (name, made) in parts {
        let bytes = match made.body {
            Stored::Memory(v) => v,
            Stored::File(p) => std::fs::read(&p)?,
            Stored::InTar => bail!("{name} was written to a tar, not kept"),
        };
        files.insert(name, bytes);
    }
    Ok((files, summary))
}

/// Writes the bundle to `out` (a tar file) as it reads the store, so
/// memory stays flat however long the window: the records, their links
/// and the flows go straight to their places in the tar (`direct`), or,
/// where those cannot be known before the records are read (a filter),
/// through spool files; both in a private directory beside `out`
/// (removed after). Returns what it holds and how many files.
pub fn export(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    out: &std::path::Path,
) -> anyhow::Result<(Summary, usize)> {
    let dir = PrivateDir::beside(out)?;
    if let Some(done) = direct::export(store, key, req, &dir, out)? {
        return Ok(done);
    }
    export_spooled(store, key, req, &dir, out)
}

/// `export` through spool files: each large file is written to a file of
/// its own in `dir`, then copied into the tar after the manifest (for a
/// window whose files' places in the tar cannot be known before its
/// records are read: a filter's).
fn export_spooled(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    dir: &PrivateDir,
    out: &std::path::Path,
) -> anyhow::Result<(Summary, usize)> {
    let (parts, mut summary) = assemble(store, key, req, &Spool(Some(&dir.0)))?;
    let mut clock = std::time::Instant::now();
    write_parts(&parts, dir, out)?;
    summary.step("tar", &mut clock);
    Ok((summary, parts.len()))
}

/// `export` as the two ways make it, for tests that hold them to one
/// bundle: written in place (None where it gave way to the spool files),
/// and through the spool files whatever the window.
#[cfg(test)]
pub(super) fn export_both_ways(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    in_place: &std::path::Path,
    spooled: &std::path::Path,
) -> anyhow::Result<Option<()>> {
    let dir = PrivateDir::beside(spooled)?;
    export_spooled(store, key, req, &dir, spooled)?;
    let dir = PrivateDir::beside(in_place)?;
    Ok(direct::export(store, key, req, &dir, in_place)?.map(|_| ()))
}

/// A new private file (`private_file::create_new`), its error naming it.
fn create_private(path: &std::path::Path, mode: u32) -> anyhow::Result<std::fs::File> {
    crate::private_file::create_new(path, mode)
        .with_context(|| format!("creating {}", path.display()))
}

/// The export's private directory (mode 0700) in the output's directory,
/// for the spool files and the tar as it is written (the finished tar is
/// renamed to the output, atomically: the same file system). Its name has
/// a random part, so no one can make it first; mkdir never follows a
/// symlink, and a name that exists anyway is refused, never used. Removed
/// when dropped (also when the export fails).
struct PrivateDir(std::path::PathBuf);

impl PrivateDir {
    fn beside(out: &std::path::Path) -> anyhow::Result<Self> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random)
            .map_err(|e| anyhow::anyhow!("random bytes for a private directory: {e}"))?;
        let mut name = std::ffi::OsString::from(".");
        name.push(out.file_name().unwrap_or_else(|| "bundle".as_ref()));
        name.push(format!(
            ".parts-{}-{}",
            std::process::id(),
            hex::encode(random)
        ));
        Self::at(out.with_file_name(name))
    }

    fn at(dir: std::path::PathBuf) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(Self(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} exists (made by someone else?); not used, nothing written",
                dir.display()
            ),
            Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every part of the bundle, the signed manifest included.
fn assemble(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    spool: &Spool<'_>,
) -> anyhow::Result<(Parts, Summary)> {
    let mut parts = Parts::new();
    let mut summary = Summary::default();
    let mut clock = std::time::Instant::now();
    // One read transaction: every file sees the same store.
    store.conn.execute_batch("BEGIN")?;

    let mut jsonl = spool.part("events.jsonl")?;
    let mut links = spool.part("links")?;
    let range = seq_range(store, req)?;
    let records = read_records(store, req, range, &mut jsonl, &mut links)?;
    summary.step("records", &mut clock);
    check_anchor(store, records.anchor)?;
    check_tail(store)?;
    summary.in_window = records.in_window;
    summary.exported = records.exported;
    let complete = req.filter.is_null();
    let prior = prior_seq(store, req, &records)?;
    let (checkpoints, cover) = watched(store, req)?;
    let mut chain = spool.part("chain.json")?;
    chain_json(store, &records, complete, prior, &cover, links, &mut chain)?;
    parts.insert("chain.json".into(), chain.finish()?);
    parts.insert(
        "checkpoints.json".into(),
        in_memory(checkpoints_json(store, &checkpoints)?),
    );
    parts.insert("events.jsonl".into(), jsonl.finish()?);
    summary.step("chain", &mut clock);

    let mut csv = spool.part("flows.csv")?;
    let (flows, digest, tally) = flows_csv(store, req, &records.by_cidr, &mut csv)?;
    summary.flows = flows;
    parts.insert("flows.csv".into(), csv.finish()?);
    summary.step("flows", &mut clock);

    let public = crate::evidence::key::public_hex(&key.verifying_key());
    let small = small_files(store, req, &summary, &public)?;
    let made = ReportInputs {
        records: &records,
        tally,
        digest: &digest,
        cover: &cover,
        public: &public,
    };
    finish_small(
        store,
        req,
        small,
        made,
        &mut summary,
        &mut clock,
        &mut parts,
    )?;

    sign_manifest(store, key, req, &public, &mut parts)?;
    summary.step("summary and manifest", &mut clock);
    Ok((parts, summary))
}

/// What the last small files are made of: the records read, the flows'
/// sums, what was watched, and the node's public key.
struct ReportInputs<'m> {
    records: &'m Records,
    tally: report::Tally,
    digest: &'m super::summary::FlowDigest,
    cover: &'m coverage::Coverage,
    public: &'m str,
}

/// report.html and summary.md made from `made` and put in `small`, then
/// every small file in `parts`; the read transaction ends after the
/// report (the last file that reads the store).
fn finish_small(
    store: &Store,
    req: &Request<'_>,
    mut small: Small,
    made: ReportInputs<'_>,
    summary: &mut Summary,
    clock: &mut std::time::Instant,
    parts: &mut Parts,
) -> anyhow::Result<()> {
    summary.policy_versions = small.versions;
    let drift = &made.records.drift;
    let page = report_html(
        store,
        req,
        made.tally,
        &small,
        made.cover,
        made.public,
        drift,
    )?;
    small.small.insert("report.html".into(), page.into_bytes());
    store.conn.execute_batch("COMMIT")?;
    summary.step("report", clock);

    let md = summary_md(
        req,
        made.records.exported,
        made.digest,
        &small,
        drift,
        made.cover,
        made.public,
    );
    small.small.insert("summary.md".into(), md.into_bytes());
    for (name, bytes) in small.small {
        parts.insert(name, in_memory(bytes));
    }
    Ok(())
}

/// flows.csv into `csv`, and the window's flows summed for the summary and
/// the report as they stream by in key order (only those the summary
/// lists are kept); `by_cidr` as `Records` has it. Returns how many. This
/// thread reads the flows; another writes and sums them.
fn flows_csv(
    store: &Store,
    req: &Request<'_>,
    by_cidr: &std::collections::HashSet<(String, String)>,
    csv: &mut Part,
) -> anyhow::Result<(usize, super::summary::FlowDigest, report::Tally)> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<query::Flow>>>(BATCHES);
        let writer = std::thread::Builder::new()
            .name("export-flows".into())
            .spawn_scoped(scope, move || {
                let mut digest = super::summary::FlowDigest::default();
                let mut tally = report::Tally::default();
                let mut w = csv::Writer::from_writer(csv);
                w.write_record(query::FLOW_CSV_COLUMNS)?;
                for batch in rx.iter() {
                    // None: every flow was read.
                    let Some(batch) = batch else {
                        w.flush().context("writing flows.csv")?;
                        return Ok(Some((digest, tally)));
                    };
                    for f in batch {
                        flow_row(&mut w, &f)?;
                        tally.add(&f);
                        digest.add(f, by_cidr);
                    }
                }
                // The reading failed: its error is the one.
                anyhow::Ok(None)
            })
            .context("starting a thread to write the flows")?;
        let mut batch = Vec::with_capacity(BATCH);
        let read = query::flows_each_ranked(
            store,
            req.since,
            req.until,
            req.keep,
            req.by_process,
            query::Rows::All,
            &mut |f| {
                batch.push(f);
                if batch.len() == BATCH {
                    tx.send(Some(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH),
                    )))
                    .map_err(|_| anyhow::anyhow!("the thread writing the flows stopped"))?;
                }
                Ok(())
            },
        );
        if read.is_ok() {
            let _ = tx.send(Some(batch));
            let _ = tx.send(None);
        }
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the thread writing the flows failed"))?;
        // The writer's error is of a flow before any the reading met.
        match (read, written?) {
            (Ok(n), Some((digest, tally))) => Ok((n, digest, tally)),
            (Err(e), _) => Err(e),
            (Ok(_), None) => bail!("the thread writing the flows stopped"),
        }
    })
}

/// The bundle's small files that need neither the flows nor the report
/// (policies, GeoIP and cloud identities, host, counters, node key), and
/// what the report and summary take of them.
struct Small {
    small: Files,
    index: Vec<Value>,
    /// Policy versions named.
    versions: usize,
    geoip: Value,
    cloud: Value,
    counters: Value,
}

/// `Small` for a window whose records were counted in `summary`.
fn small_files(
    store: &Store,
    req: &Request<'_>,
    summary: &Summary,
    public: &str,
) -> anyhow::Result<Small> {
    let (index, versions) = policy_sets(store, req)?;
    let mut small = Files::new();
    insert_policy_files(&mut small, &index, &versions)?;

    let (geoip, cloud) = (geoip_json(store, req)?, cloud_json(store, req)?);
    small.insert("geoip.json".into(), serde_json::to_vec_pretty(&geoip)?);
    small.insert(
        "cloud_ranges.json".into(),
        serde_json::to_vec_pretty(&cloud)?,
    );
    small.insert("host.json".into(), host_json(store, req)?);
    let counters = counters(store, req, summary)?;
    small.insert(
        "counters.json".into(),
        serde_json::to_vec_pretty(&counters)?,
    );
    small.insert("node.pub".into(), format!("{public}\n").into_bytes());
    Ok(Small {
        small,
        index,
        versions: versions.len(),
        geoip,
        cloud,
        counters,
    })
}

/// report.html of a bundle; `drift`: the window's drift alerts (the first
/// ones, and how many), as `Records` has them.
fn report_html(
    store: &Store,
    req: &Request<'_>,
    tally: report::Tally,
    small: &Small,
    cover: &coverage::Coverage,
    public: &str,
    (drift, drift_total): &(Vec<Event>, usize),
) -> anyhow::Result<String> {
    report_page(
        store,
        req,
        tally,
        &Known {
            cover,
            index: &small.index,
            geoip: &small.geoip,
            cloud: &small.cloud,
            counters: &small.counters,
            drift,
            drift_total: *drift_total,
            signed_by: Some(public),
        },
    )
}

/// summary.md of a bundle.
fn summary_md(
    req: &Request<'_>,
    exported: usize,
    digest: &super::summary::FlowDigest,
    small: &Small,
    (drift, drift_total): &(Vec<Event>, usize),
    cover: &coverage::Coverage,
    public: &str,
) -> String {
    super::summary::render(&super::summary::Input {
        since: req.since,
        until: req.until,
        exported,
        flows: digest,
        policy_index: &small.index,
        drift,
        drift_total: *drift_total,
        counters: &small.counters,
        coverage: cover,
        complete: req.filter.is_null(),
        counted: !req.by_process,
        public_key: public,
    })
}

/// What report.html shows besides the flows, as the bundle (or the
/// `report` command) read it from the store.
struct Known<'a> {
    cover: &'a coverage::Coverage,
    index: &'a [Value],
    geoip: &'a Value,
    cloud: &'a Value,
    counters: &'a Value,
    drift: &'a [Event],
    drift_total: usize,
    signed_by: Option<&'a str>,
}

/// report.html from the window's flows (`tally`, summed as they streamed
/// by) and the rest: the refusals are read again per hour or day for the
/// chart over time, and the destinations the store names before the
/// window are struck from the first-seen list. Inside the caller's read
/// transaction.
fn report_page(
    store: &Store,
    req: &Request<'_>,
    mut tally: report::Tally,
    k: &Known<'_>,
) -> anyhow::Result<String> {
    tally.keep_first_seen(store, req.since)?;
    let over_time = report::over_time(
        store,
        &tally,
        req.since,
        req.until,
        req.keep,
        req.by_process,
    )?;
    Ok(report::render(&report::Input {
        since: req.since,
        until: req.until,
        tally: &tally,
        over_time: &over_time,
        policy_index: k.index,
        geoip: k.geoip,
        cloud: k.cloud,
        counters: k.counters,
        coverage: k.cover,
        drift: k.drift,
        drift_total: k.drift_total,
        filter: &req.filter,
        counted: !req.by_process,
        signed_by: k.signed_by,
    }))
}

/// The `report` command's page, and what it was made from.
pub struct Page {
    pub html: String,
    /// Records (decisions and drift alerts) in the window, flows shown.
    pub records: usize,
    pub flows: usize,
    pub watched_nanos: i64,
}

/// report.html for a window without a bundle (the `report` command): the
/// same page a bundle holds, from the same reads, unsigned; the records'
/// chain is not checked here (`export` and `verify` do that).
pub fn report(store: &Store, req: &Request<'_>) -> anyhow::Result<Page> {
    store.conn.execute_batch("BEGIN")?;
    let page = (|| {
        let records = store.conn.query_row(
            "SELECT count(*) FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2",
            params![req.since, req.until],
            |r| r.get::<_, i64>(0),
        )? as usize;
        let (_, cover) = watched(store, req)?;
        let mut tally = report::Tally::default();
        let mut read = 0u64;
        let flows = query::flows_each(
            store,
            req.since,
            req.until,
            req.keep,
            req.by_process,
            query::Rows::All,
            &mut |f| {
                tally.add(&f);
                read += 1;
                // The flows are streamed: their total is not known.
                if let (Some(progress), true) = (req.progress, read.is_multiple_of(4096)) {
                    progress(read, 0);
                }
                Ok(())
            },
        )?;
        let (index, _) = policy_sets(store, req)?;
        let (drift, drift_total) = drift_alerts(store, req)?;
        // The page shows neither record count of the counters.
        let summary = Summary {
            in_window: records,
            ..Summary::default()
        };
        let counters = counters(store, req, &summary)?;
        let html = report_page(
            store,
            req,
            tally,
            &Known {
                cover: &cover,
                index: &index,
                geoip: &geoip_json(store, req)?,
                cloud: &cloud_json(store, req)?,
                counters: &counters,
                drift: &drift,
                drift_total,
                signed_by: None,
            },
        )?;
        Ok(Page {
            html,
            records,
            flows,
            watched_nanos: cover.watched_nanos,
        })
    })();
    store.conn.execute_batch("COMMIT")?;
    page
}

/// The window's drift alerts the filter keeps: the first
/// `summary::TABLE_ROWS`, and how many.
fn drift_alerts(store: &Store, req: &Request<'_>) -> anyhow::Result<(Vec<Event>, usize)> {
    let mut stmt = store.conn.prepare(&format!(
        "SELECT {} FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2 AND verdict = 'drift' ORDER BY seq",
        query::EVENT_COLUMNS
    ))?;
    let mut rows = stmt.query(params![req.since, req.until])?;
    let (mut first, mut total) = (Vec::new(), 0);
    while let Some(r) = rows.next()? {
        let (_, event, _) = query::event_and_record(r)?;
        if (req.keep)(&event) && event.drift.is_some() {
            total += 1;
            if first.len() < super::summary::TABLE_ROWS {
                first.push(event);
            }
        }
    }
    Ok((first, total))
}

/// The heartbeats around the window, and what of it they tell was
/// watched.
fn watched(
    store: &Store,
    req: &Request<'_>,
) -> anyhow::Result<(Vec<chain::Checkpoint>, coverage::Coverage)> {
    let checkpoints = store.checkpoints_between(
        req.since.saturating_sub(coverage::MAX_GAP_NANOS),
        req.until.saturating_add(coverage::MAX_GAP_NANOS),
    )?;
    let cover = coverage::coverage(&checkpoints, req.since, req.until);
    Ok((checkpoints, cover))
}

/// The window's records, read in order and checked against the hash chain.
struct Records {
    /// Records in the window (kept or not), and of them exported.
    in_window: usize,
    exported: usize,
    /// The hash the window's first record follows, and the seq before it.
    anchor: Anchor,
    /// (destination, cgroup path) of the exported records a CIDR rule
    /// allowed (for the summary).
    by_cidr: std::collections::HashSet<(String, String)>,
    /// The exported drift alerts: the first `summary::TABLE_ROWS`, and how
    /// many (what `drift_alerts` reads).
    drift: (Vec<Event>, usize),
}

/// The hash a window's first record follows, and the seq before it.
type Anchor = Option<([u8; 32], i64)>;

/// The first and last seq of the window's records (none: no record).
type SeqRange = (Option<i64>, Option<i64>);

/// The window's records lie in one range of seq (`read_records` checks
/// it): they are read in seq order from that range, not through the time
/// index and a sort of every record (half an export's time at 1M).
fn seq_range(store: &Store, req: &Request<'_>) -> anyhow::Result<SeqRange> {
    Ok(store.conn.query_row(
        "SELECT min(seq), max(seq) FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2",
        params![req.since, req.until],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Reads the window's records, checking each digest and link as it goes:
/// the kept ones to `jsonl` as stored, one link per record to `links` (one
/// JSON object a line). This thread reads the rows and makes their events
/// and canonical records; another checks each against its digest and
/// link and writes it (each was about half of the time).
fn read_records(
    store: &Store,
    req: &Request<'_>,
    range: SeqRange,
    jsonl: &mut Part,
    links: &mut Part,
) -> anyhow::Result<Records> {
    let total = match req.progress {
        Some(_) => store.conn.query_row(
            "SELECT count(*) FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2",
            params![req.since, req.until],
            |r| r.get::<_, i64>(0),
        )? as u64,
        None => 0,
    };
    let (first, last) = range;
    let mut stmt = store.conn.prepare(&format!(
        "SELECT {}, prev_hash, hash FROM events WHERE seq >= ?3 AND seq <= ?4 AND +unix_nanos >= ?1 AND +unix_nanos < ?2 ORDER BY seq",
        query::RECORD_COLUMNS
    ))?;
    // What the rows name by id (paths, executables, containers), read
    // once per id.
    let mut refs = query::Refs::new(store);
    // After the event columns: the chain's, by place (a lookup by name
    // compares every column's name, for every row).
    let chain_at = stmt.column_count() - 2;
    let mut rows = stmt.query(params![
        req.since,
        req.until,
        first.unwrap_or(0),
        last.unwrap_or(-1)
    ])?;
    let mut out = Records {
        in_window: 0,
        exported: 0,
        anchor: None,
        by_cidr: Default::default(),
        drift: Default::default(),
    };
    let (anchor, checked) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<anyhow::Result<RowRecord>>>(BATCHES);
        // The events done with come back, to be read into again (each
        // would be freed there and allocated here again).
        let (spent_tx, spent) = std::sync::mpsc::sync_channel::<Vec<Event>>(BATCHES);
        let writer = std::thread::Builder::new()
            .name("export-records".into())
            .spawn_scoped(scope, move || check_and_write(rx, spent_tx, jsonl, links))
            .context("starting a thread to write the records")?;
        let mut batch = Vec::with_capacity(BATCH);
        let mut spare: Vec<Event> = Vec::new();
        loop {
            if spare.is_empty() {
                if let Ok(back) = spent.try_recv() {
                    spare = back;
                }
            }
            let old = spare.pop().unwrap_or_default();
            let item = match rows.next() {
                Ok(None) => break,
                Ok(Some(r)) => row_record(store, req, r, chain_at, &mut refs, &mut out, old),
                Err(e) => Err(e.into()),
            };
            let failed = item.is_err();
            batch.push(item);
            if failed || batch.len() == BATCH {
                // Refused where the writer stopped: its error says why.
                if tx.send(std::mem::take(&mut batch)).is_err() || failed {
                    break;
                }
                batch.reserve(BATCH);
            }
            if let Some(progress) = req.progress {
                if out.in_window.is_multiple_of(4096) {
                    progress(out.in_window as u64, total);
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the thread writing the records failed"))?
    })?;
    if checked != out.in_window {
        bail!("{} records read but {checked} written", out.in_window);
    }
    out.anchor = anchor;
    if let Some(progress) = req.progress {
        progress(out.in_window as u64, total);
    }
    Ok(out)
}

/// Rows or flows handed from the thread reading them to the one writing
/// them at once, and how many such batches can wait.
const BATCH: usize = 256;
const BATCHES: usize = 8;

/// A blob column: a digest or link, or anything else a row holds there.
enum Blob {
    Hash([u8; 32]),
    Other(Vec<u8>),
}

impl Blob {
    fn of(b: &[u8]) -> Self {
        match <[u8; 32]>::try_from(b) {
            Ok(h) => Self::Hash(h),
            Err(_) => Self::Other(b.to_vec()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Hash(h) => h,
            Self::Other(v) => v,
        }
    }
}

/// A record as the thread reading it hands it to the one checking and
/// writing it: what the row gave, each value or error as the checks
/// meet them.
struct RowRecord {
    seq: i64,
    /// The row's event (its canonical form is made there).
    event: Event,
    /// The record text the row keeps (empty: none) and its digest.
    record: rusqlite::Result<String>,
    digest: rusqlite::Result<Blob>,
    /// The link the row keeps (empty: none), and for the window's first
    /// row without one the hash of the row before it.
    prev: rusqlite::Result<Blob>,
    before: Option<anyhow::Result<[u8; 32]>>,
    hash: rusqlite::Result<Blob>,
    /// Whether the request keeps it.
    keep: bool,
}

/// A row of `read_records`'s query as `check_and_write` takes it; counts
/// it (and the kept ones, and those a CIDR rule allowed) in `out`.
fn row_record(
    store: &Store,
    req: &Request<'_>,
    r: &rusqlite::Row<'_>,
    chain_at: usize,
    refs: &mut query::Refs<'_>,
    out: &mut Records,
    old: Event,
) -> anyhow::Result<RowRecord> {
    let (seq, event) = query::event_by_id_in(r, refs, old)?;
    let prev = query::blob(r, chain_at).map(Blob::of);
    // The window's first row without a link follows the row before it.
    let before = (out.in_window == 0 && matches!(&prev, Ok(p) if p.as_slice().is_empty()))
        .then(|| hash_before(store, seq));
    let keep = (req.keep)(&event);
    out.in_window += 1;
    if keep {
        out.exported += 1;
        if event.rule == "cidr" {
            out.by_cidr
                .insert((event.dst_ip.clone(), event.cgroup_path.clone()));
        }
        // As `drift_alerts` reads them (its rows are these, in this order).
        if event.verdict == crate::events::DRIFT && event.drift.is_some() {
            out.drift.1 += 1;
            if out.drift.0.len() < super::summary::TABLE_ROWS {
                out.drift.0.push(event.clone());
            }
        }
    }
    Ok(RowRecord {
        seq,
        event,
        record: query::text(r, 24).map(str::to_string),
        digest: query::blob(r, query::EVENT_DIGEST).map(Blob::of),
        prev,
        before,
        hash: query::blob(r, chain_at + 1).map(Blob::of),
        keep,
    })
}

/// Checks each record (its digest, its link to the one before) and
/// writes it, in order, until the first error; returns the hash the first
/// follows (and the seq before it) and how many it wrote. The events go
/// back to `spent` a batch at a time.
fn check_and_write(
    rows: std::sync::mpsc::Receiver<Vec<anyhow::Result<RowRecord>>>,
    spent: std::sync::mpsc::SyncSender<Vec<Event>>,
    jsonl: &mut Part,
    links: &mut Part,
) -> anyhow::Result<(Anchor, usize)> {
    let mut chain = Chained::default();
    for batch in rows.iter() {
        let mut done = Vec::with_capacity(batch.len());
        for row in batch {
            done.push(chain.add(row?, jsonl, links)?);
        }
        // Dropped where the reader has enough.
        let _ = spent.try_send(done);
    }
    Ok((chain.anchor, chain.n))
}

/// Where `check_and_write` is in the window's chain.
#[derive(Default)]
struct Chained {
    /// The hash the first record follows, and the seq before it.
    anchor: Anchor,
    /// Records written.
    n: usize,
    /// The last record's hash and seq.
    prev: Option<[u8; 32]>,
    last_seq: Option<i64>,
    /// A link's line.
    line: Vec<u8>,
}

impl Chained {
    /// Checks and writes the next record; returns its event.
    fn add(&mut self, row: RowRecord, jsonl: &mut Part, links: &mut Part) -> anyhow::Result<Event> {
        use std::io::Write;
        let RowRecord {
            seq,
            event,
            record,
            digest,
            prev: stored_prev,
            before,
            hash,
            keep,
        } = row;
        let (record, digest) = digest_of(record, digest, seq, &event)?;
        let stored_prev = stored_prev?;
        let prev_hash = if !stored_prev.as_slice().is_empty() {
            chain::to32(stored_prev.as_slice())
        } else if let Some(p) = self.prev {
            // A compact row follows the row before it.
            p
        } else {
            before.context("no hash before the window's first record")??
        };
        let hash = chain::to32(hash?.as_slice());
        if let Some(p) = self.prev {
            if p != prev_hash || self.last_seq.map(|l: i64| l + 1) != Some(seq) {
                bail!("the store's chain is broken before seq {seq} (a record was removed or altered): not exporting");
            }
        } else {
            self.anchor = Some((prev_hash, seq - 1));
        }
        if chain::link(&prev_hash, &digest) != hash {
            bail!("the store's record seq {seq} does not link to the one before: the store was altered; not exporting");
        }
        self.prev = Some(hash);
        self.last_seq = Some(seq);
        link_line(&mut self.line, self.n > 0, &digest, &hash, seq);
        links.write_all(&self.line)?;
        self.n += 1;
        if keep {
            jsonl.write_all(record.as_bytes())?;
            jsonl.write_all(b"\n")?;
        }
        Ok(event)
    }
}

/// A row's record checked against its digest (`query::check_record`), and
/// the digest.
fn digest_of(
    record: rusqlite::Result<String>,
    digest: rusqlite::Result<Blob>,
    seq: i64,
    event: &Event,
) -> anyhow::Result<(String, [u8; 32])> {
    let record = record?;
    let digest = digest?;
    let columns = chain::canonical(seq, event);
    let record = query::check_record(seq, columns, &record, digest.as_slice())?;
    Ok((record, chain::to32(digest.as_slice())))
}

/// One link of chain.json's list into `out`: `,\n` before it unless it is
/// the first, then `    {"digest":"..","hash":"..","seq":N}`.
fn link_line(out: &mut Vec<u8>, more: bool, digest: &[u8; 32], hash: &[u8; 32], seq: i64) {
    out.clear();
    if more {
        out.extend_from_slice(b",\n");
    }
    out.extend_from_slice(b"    {\"digest\":\"");
    hex_into(out, digest);
    out.extend_from_slice(b"\",\"hash\":\"");
    hex_into(out, hash);
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(Digits::of(seq).as_bytes());
    out.push(b'}');
}

/// `hex::encode`, appended to `out` without a string of its own.
fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// A number's decimal digits as `to_string` writes them, on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(n: i64) -> Self {
        let mut d = Self::of_unsigned(n.unsigned_abs());
        if n < 0 {
            d.start -= 1;
            d.buf[d.start] = b'-';
        }
        d
    }

    fn of_unsigned(mut n: u64) -> Self {
        // u64::MAX has 20 digits; a sign needs one more place before
        // them only for i64, whose magnitude has at most 19.
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The hash a compact row at the start of the window follows: the row
/// before it's (32 zero bytes before the first record). Retention keeps
/// the link on a row whose predecessor it removes, so a missing one is a
/// removed record.
fn hash_before(store: &Store, seq: i64) -> anyhow::Result<[u8; 32]> {
    if seq == 1 {
        return Ok([0; 32]);
    }
    let before: Option<Vec<u8>> = store
        .conn
        .query_row("SELECT hash FROM events WHERE seq = ?1", [seq - 1], |r| {
            r.get(0)
        })
        .optional()?;
    match before {
        Some(h) => Ok(chain::to32(&h)),
        None => bail!("the store's record seq {} is gone and record seq {seq} keeps no link to it (a record was removed outside retention): not exporting", seq - 1),
    }
}

/// Checks the anchor against the record before the window, if still kept.
fn check_anchor(store: &Store, anchor: Option<([u8; 32], i64)>) -> anyhow::Result<()> {
    if let Some((a, seq)) = anchor {
        let before: Option<Vec<u8>> = store
            .conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .ok();
        if before.is_some_and(|b| chain::to32(&b) != a) {
            bail!(
                "the store's chain is broken at seq {}: not exporting",
                seq + 1
            );
        }
    }
    Ok(())
}

/// Records removed from the end of the store break no link: the store's
/// head and its last signed checkpoint still name them. Refuses to export
/// a store whose records stop short of either (retention's removals
/// excepted).
fn check_tail(store: &Store) -> anyhow::Result<()> {
    let last: Option<i64> = store
        .conn
        .query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
    let retained: i64 = store.conn.query_row(
        "SELECT coalesce(max(up_to_seq), 0) FROM retention_log",
        [],
        |r| r.get(0),
    )?;
    let reach = last.unwrap_or(0).max(retained);
    let (head_seq, _) = store.head()?;
    if head_seq > reach {
        bail!("the store's chain head is seq {head_seq} but its last record is seq {reach}: records were removed from its end; not exporting");
    }
    let checkpoint: Option<(i64, i64, Vec<u8>)> = store
        .conn
        .query_row(
            "SELECT unix_nanos, seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((at, seq, hash)) = checkpoint {
        if seq > reach {
            bail!("the checkpoint signed at {} holds seq {seq}, but the store's last record is seq {reach}: records were removed from its end; not exporting", t(at));
        }
        let kept: Option<Vec<u8>> = store
            .conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()?;
        if kept.is_some_and(|h| h != hash) {
            bail!("record seq {seq} differs from the checkpoint signed at {}: the chain was rewritten; not exporting", t(at));
        }
    }
    Ok(())
}

/// The last seq before the window: the anchor's, or (for a window without
/// records) the last record or retention removal before it.
fn prior_seq(store: &Store, req: &Request<'_>, records: &Records) -> anyhow::Result<i64> {
    if let Some((_, seq)) = records.anchor {
        return Ok(seq);
    }
    Ok(store.conn.query_row(
        "SELECT max(coalesce((SELECT max(seq) FROM events WHERE unix_nanos < ?1), 0), coalesce((SELECT max(up_to_seq) FROM retention_log WHERE before_nanos <= ?1), 0))",
        [req.since],
        |r| r.get(0),
    )?)
}

/// `checkpoints.json`: the signed chain heads (heartbeats) made during the
/// window and up to `coverage::MAX_GAP_NANOS` around it.
fn checkpoints_json(store: &Store, list: &[chain::Checkpoint]) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(&json!({
        "signed_message": chain::CHECKPOINT_MESSAGE,
        "store_id": store.store_id()?,
        "checkpoints": list,
    }))?)
}

/// `chain.json`: the links, their anchor and the store's head at export.
/// The links (one a line, as `read_records` wrote them) are copied in
/// last, so the file is written without holding them.
fn chain_json(
    store: &Store,
    records: &Records,
    complete: bool,
    prior: i64,
    cover: &coverage::Coverage,
    links: Part,
    out: &mut Part,
) -> anyhow::Result<()> {
    use std::io::Write;
    out.write_all(&chain_open(store, records, complete, prior, cover)?)?;
    match links.finish()?.body {
        Stored::Memory(v) => out.write_all(&v)?,
        Stored::File(p) => {
            let mut f =
                std::fs::File::open(&p).with_context(|| format!("reading {}", p.display()))?;
            std::io::copy(&mut f, out)?;
            drop(f);
            let _ = std::fs::remove_file(&p);
        }
        Stored::InTar => bail!("the links were written to a tar, not kept"),
    }
    out.write_all(chain_close(records.in_window))?;
    Ok(())
}

/// chain.json up to its links: the header (without its closing brace)
/// and the opening of the list.
fn chain_open(
    store: &Store,
    records: &Records,
    complete: bool,
    prior: i64,
    cover: &coverage::Coverage,
) -> anyhow::Result<Vec<u8>> {
    let (head_seq, head) = store.head()?;
    let anchor_json = match records.anchor {
        Some((h, seq)) => json!({"seq": seq, "hash": hex::encode(h)}),
        None => Value::Null,
    };
    let head_json = serde_json::to_string_pretty(&json!({
        "algorithm": "digest = SHA-256(line of events.jsonl); hash = SHA-256(previous hash || digest); the store's first record follows 32 zero bytes",
        "store_id": store.store_id()?,
        "anchor": anchor_json,
        "complete": complete,
        "records_in_window": records.in_window,
        "records_exported": records.exported,
        "last_seq_before_window": prior,
        "store_head_at_export": {"seq": head_seq, "hash": hex::encode(head)},
        "coverage": cover,
    }))?;
    // `{ ... }` without its closing brace, then the links.
    let open = head_json
        .strip_suffix("\n}")
        .context("chain.json header is an object")?;
    let mut bytes = open.as_bytes().to_vec();
    bytes.extend_from_slice(b",\n  \"links\": [\n");
    Ok(bytes)
}

/// chain.json after its links.
fn chain_close(in_window: usize) -> &'static [u8] {
    if in_window > 0 {
        b"\n  ]\n}"
    } else {
        b"]\n}"
    }
}

/// One row of `flows.csv` under the CLI's column names.
pub(super) fn flow_row<W: std::io::Write>(
    w: &mut csv::Writer<W>,
    f: &query::Flow,
) -> anyhow::Result<()> {
    // The numbers on the stack: no string per field.
    let (first, last) = (t(f.first_seen), t(f.last_seen));
    let count = Digits::of_unsigned(f.count);
    let port = Digits::of_unsigned(u64::from(f.dst_port));
    let packets = Digits::of_unsigned(f.packets);
    let bytes = Digits::of_unsigned(f.bytes);
    w.write_record([
        first.as_bytes(),
        last.as_bytes(),
        count.as_bytes(),
        f.verdict.as_bytes(),
        f.policy.as_bytes(),
        f.cgroup_path.as_bytes(),
        f.pod_uid.as_bytes(),
        f.comm.as_bytes(),
        f.protocol.as_bytes(),
        f.dst_ip.as_bytes(),
        port.as_bytes(),
        f.country.as_bytes(),
        f.continent.as_bytes(),
        f.dns_name.as_bytes(),
        f.cloud_region.as_bytes(),
        packets.as_bytes(),
        bytes.as_bytes(),
        f.exe.as_bytes(),
        f.image.as_bytes(),
    ])?;
    Ok(())
}

/// A stored policy version: name, mode, file, text, first seen.
type Version = (String, String, String, String, i64);

/// The bundle's file name for a policy version's text.
fn policy_text_file(name: &str, sha: &str) -> String {
    format!("policies/{}-{}.yaml", name, &sha[..16.min(sha.len())])
}

/// The policy sets in force during the window (the index's entries) and
/// every version they name, by SHA-256.
fn policy_sets(
    store: &Store,
    req: &Request<'_>,
) -> anyhow::Result<(Vec<Value>, BTreeMap<String, Version>)> {
    let sets = in_force(store, "policy_sets", "members", req.since, req.until)?;
    let mut versions: BTreeMap<String, Version> = BTreeMap::new();
    let mut index = Vec::new();
    for (at, members) in &sets {
        let mut list = Vec::new();
        for m in members.as_array().into_iter().flatten() {
            let sha = m.get(1).and_then(Value::as_str).unwrap_or("").to_string();
            let row = store.conn.query_row(
                "SELECT name, mode, file, text, first_seen FROM policy_versions WHERE sha256 = ?1",
                [&sha],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
            let (name, mode, file, _, _): &Version = versions.entry(sha.clone()).or_insert(row);
            list.push(
                json!({"name": name, "sha256": sha, "mode": mode, "file": file,
                "text_file": policy_text_file(name, &sha)}),
            );
        }
        index.push(
            json!({"effective_from": t(*at), "effective_from_unix_nanos": at, "policies": list}),
        );
    }
    Ok((index, versions))
}

/// Adds each policy version's text and `policies/index.json`.
fn insert_policy_files(
    files: &mut Files,
    index: &[Value],
    versions: &BTreeMap<String, Version>,
) -> anyhow::Result<()> {
    for (sha, (name, _, _, text, _)) in versions {
        files.insert(policy_text_file(name, sha), text.clone().into_bytes());
    }
    files.insert(
        "policies/index.json".into(),
        serde_json::to_vec_pretty(&json!({"policy_sets": index}))?,
    );
    Ok(())
}

/// `geoip.json`: the GeoIP databases in use during the window.
fn geoip_json(store: &Store, req: &Request<'_>) -> anyhow::Result<Value> {
    let geo: Vec<Value> = in_force(store, "geoip", "identity", req.since, req.until)?
        .into_iter()
        .map(|(at, id)| json!({"in_use_from": t(at), "database": id}))
        .collect();
    Ok(json!({"databases": geo}))
}

/// `cloud_ranges.json`: the cloud-range snapshots in force during the
/// window (files, providers, SHA-256, dates); empty without
/// `--cloud-ranges`.
fn cloud_json(store: &Store, req: &Request<'_>) -> anyhow::Result<Value> {
    let snapshots: Vec<Value> = in_force(store, "cloud_ranges", "identity", req.since, req.until)?
        .into_iter()
        .map(|(at, id)| json!({"in_force_from": t(at), "snapshot": id}))
        .collect();
    Ok(json!({"snapshots": snapshots}))
}

/// `host.json`: this host's identity and the agent runs during the window.
fn host_json(store: &Store, req: &Request<'_>) -> anyhow::Result<Vec<u8>> {
    let runs: Vec<Value> = in_force(store, "agent_runs", "info", req.since, req.until)?
        .into_iter()
        .map(|(at, info)| json!({"started": t(at), "agent": info}))
        .collect();
    let host = json!({
        "hostname": read_first_line("/proc/sys/kernel/hostname"),
        "machine_id": read_first_line("/etc/machine-id"),
        "boot_id": read_first_line("/proc/sys/kernel/random/boot_id"),
        "kernel": read_first_line("/proc/sys/kernel/osrelease"),
        "exporting_agent_version": env!("CARGO_PKG_VERSION"),
        "agent_runs": runs,
    });
    Ok(serde_json::to_vec_pretty(&host)?)
}

/// A gap record: time, kind, count, detail.
type Gap = (i64, String, i64, String);

/// The counters: decisions, and what the record lacks (gaps, retention).
fn counters(store: &Store, req: &Request<'_>, summary: &Summary) -> anyhow::Result<Value> {
    let (verdicts, drift) = decisions_in_window(store, req)?;
    let gaps: Vec<Gap> = store
        .conn
        .prepare("SELECT unix_nanos, kind, count, detail FROM gaps WHERE unix_nanos >= ?1 AND unix_nanos < ?2 ORDER BY id")?
        .query_map(params![req.since, req.until], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let retention = retention_runs(store, req)?;
    Ok(json!({
        "decisions_in_window": verdicts,
        "drift_alerts_in_window": drift,
        "records_in_window": summary.in_window,
        "records_exported": summary.exported,
        "gaps": gap_totals(&gaps),
        "gap_records": gaps.iter().map(|g| json!({"at": t(g.0), "kind": g.1, "count": g.2, "detail": g.3})).collect::<Vec<_>>(),
        "retention_runs_touching_window": retention,
    }))
}

/// The number of records in the window per verdict (drift alerts aside),
/// and of drift alerts: one pass over the window's records.
fn decisions_in_window(
    store: &Store,
    req: &Request<'_>,
) -> anyhow::Result<(BTreeMap<String, u64>, i64)> {
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    let mut drift = 0;
    for (v, alert, n) in store
        .conn
        .prepare("SELECT verdict, drift != '', count(*) FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2 GROUP BY verdict, drift != ''")?
        .query_map(params![req.since, req.until], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?)))?
        .collect::<Result<Vec<_>, _>>()?
    {
        if alert {
            drift += n;
        } else {
            verdicts.insert(v, n as u64);
        }
    }
    Ok((verdicts, drift))
}

/// The total count per gap kind, every known kind present (zero if none).
fn gap_totals(gaps: &[Gap]) -> BTreeMap<String, i64> {
    let mut totals: BTreeMap<String, i64> = [
        "lost_for_store",
        "lost_in_kernel",
        "denials_lost_in_kernel",
        "store_degraded",
        "store_reset",
        "lost_at_restart",
        "lost_in_daemon",
    ]
    .iter()
    .map(|k| (k.to_string(), 0))
    .collect();
    for g in gaps {
        *totals.entry(g.1.clone()).or_default() += g.2;
    }
    totals
}

/// The retention runs that removed records from after the window's start.
fn retention_runs(store: &Store, req: &Request<'_>) -> anyhow::Result<Vec<Value>> {
    Ok(store
        .conn
        .prepare("SELECT unix_nanos, reason, events, up_to_seq, before_nanos FROM retention_log WHERE before_nanos > ?1 ORDER BY id")?
        .query_map([req.since], |r| {
            Ok(json!({"at": t(r.get(0)?), "reason": r.get::<_, String>(1)?, "events_removed": r.get::<_, i64>(2)?,
                "up_to_seq": r.get::<_, i64>(3)?, "removed_before": t(r.get(4)?)}))
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Adds `manifest.json` (every file's SHA-256) and its signature `manifest.sig`.
fn sign_manifest(
    store: &Store,
    key: &SigningKey,
    req: &Request<'_>,
    public: &str,
    parts: &mut Parts,
) -> anyhow::Result<()> {
    let digests: BTreeMap<&String, String> = parts
        .iter()
        .map(|(n, m)| (n, hex::encode(m.digest)))
        .collect();
    let manifest = manifest_json(store, req, public, &digests)?;
    let signature = signature_file(key, &manifest);
    parts.insert("manifest.json".into(), in_memory(manifest));
    parts.insert("manifest.sig".into(), in_memory(signature));
    Ok(())
}

/// `manifest.json`: the files' SHA-256 (hex) by name, made now.
fn manifest_json(
    store: &Store,
    req: &Request<'_>,
    public: &str,
    digests: &BTreeMap<&String, String>,
) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(&json!({
        "format": FORMAT,
        "created": t(crate::store::now_nanos()),
        "window": window_json(req.since, req.until),
        "filter": req.filter,
        "node_public_key": public,
        "store_id": store.store_id()?,
        "files": digests,
    }))?)
}

/// `manifest.sig`: the node key's signature of the manifest, in hex.
fn signature_file(key: &SigningKey, manifest: &[u8]) -> Vec<u8> {
    format!("{}\n", hex::encode(key.sign(manifest).to_bytes())).into_bytes()
}

/// A manifest's `window`: both ends as RFC 3339 and as Unix ns.
pub(super) fn window_json(since: i64, until: i64) -> Value {
    json!({"since": t(since), "until": t(until), "since_unix_nanos": since, "until_unix_nanos": until})
}

/// Writes the files as one tar (fixed order: the manifest first).
pub fn write_tar(files: &Files, out: &std::path::Path) -> anyhow::Result<()> {
    let parts: Parts = files
        .iter()
        .map(|(n, b)| (n.clone(), in_memory(b.clone())))
        .collect();
    let dir = PrivateDir::beside(out)?;
    write_parts(&parts, &dir, out)
}

/// The time every entry of a tar made now carries (seconds).
fn tar_mtime() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The files' order in the tar: the manifest, its signature, then the
/// rest by name.
fn tar_order<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut order: Vec<&String> = names.collect();
    order.sort_by_key(|n| {
        (
            n.as_str() != "manifest.json",
            n.as_str() != "manifest.sig",
            n.as_str(),
        )
    });
    order
}

/// Writes the parts as one tar, the manifest first, the spooled ones
/// copied from their files; the tar is written in the private directory
/// `dir` and appears under its name only whole.
fn write_parts(parts: &Parts, dir: &PrivateDir, out: &std::path::Path) -> anyhow::Result<()> {
    let tmp = dir.0.join("bundle.tar.partial");
    let f = create_private(&tmp, 0o600)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
    let now = tar_mtime();
    let written = (|| -> anyhow::Result<()> {
        for name in tar_order(parts.keys()) {
            let made = &parts[name];
            let mut h = tar::Header::new_gnu();
            h.set_size(made.len);
            h.set_mode(0o644);
            h.set_mtime(now);
            h.set_entry_type(tar::EntryType::Regular);
            let path = format!("evidence/{name}");
            match &made.body {
                Stored::Memory(v) => tar.append_data(&mut h, path, v.as_slice())?,
                Stored::File(p) => {
                    let mut f = std::fs::File::open(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    // Through `append_data`: a copy written by hand for the
                    // kernel to do file to file (copy_file_range) was no
                    // faster for 1M records (tar step 1.1-1.2 s against
                    // 0.8-2.5 s, three exports each, alternated).
                    let len = f.metadata()?.len();
                    if len != made.len {
                        bail!(
                            "{} holds {len} bytes, not the {} hashed",
                            p.display(),
                            made.len
                        );
                    }
                    tar.append_data(&mut h, path, &mut f)?;
                }
                Stored::InTar => bail!("{name} is in another tar"),
            }
        }
        let w = tar.into_inner()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", tmp.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::{create_private, PrivateDir};

    /// The private directory is made 0700, or not at all where a name
    /// exists (here a symlink to another directory), and the error names
    /// the path; a file is created only where nothing is, never through a
    /// symlink.
    #[test]
    fn private_paths_are_new_or_refused() {
        let shared = tempfile::tempdir().unwrap();
        let out = shared.path().join("b.tar");
        let dir = PrivateDir::beside(&out).unwrap();
        let meta = std::fs::symlink_metadata(&dir.0).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(dir.0.parent(), Some(shared.path()));
        let made = dir.0.clone();
        drop(dir);
        assert!(!made.exists(), "removed when dropped");

        let victim_dir = shared.path().join("victim-dir");
        std::fs::create_dir(&victim_dir).unwrap();
        let link = shared.path().join("link");
        symlink(&victim_dir, &link).unwrap();
        let err = PrivateDir::at(link.clone()).map(|_| ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} exists (made by someone else?); not used, nothing written",
                link.display()
            )
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(victim_dir.is_dir());

        let victim = shared.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let file_link = shared.path().join("file-link");
        symlink(&victim, &file_link).unwrap();
        let err = create_private(&file_link, 0o600).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("creating {}", file_link.display())),
            "{err:#}"
        );
        // A dangling symlink is not followed to create its target either.
        let dangling = shared.path().join("dangling");
        symlink(shared.path().join("new-victim"), &dangling).unwrap();
        assert!(create_private(&dangling, 0o600).is_err());
        assert!(!shared.path().join("new-victim").exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
