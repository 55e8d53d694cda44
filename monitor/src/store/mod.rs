//! The history on disk: every decision as a hash-chained row, flows
//! aggregated per minute, the policy sets and GeoIP databases that were in
//! force, and what was lost and why. SQLite (WAL) in `STATE_DIR/store.db`.
//!
//! One writer (the daemon's store thread, `writer.rs`) appends; queries and
//! exports open their own read connections. Data flows one way: the event
//! pipeline publishes, the writer subscribes.
pub mod chain;
pub mod coverage;
pub mod flow;
pub mod published;
pub mod query;
pub mod retention;
pub mod rollup;
pub mod schema;
pub mod seqbook;
pub mod time;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::events::Event;

/// File name of the store inside the state directory.
pub const FILE_NAME: &str = "store.db";

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {op}: {source}", path.display())]
    Sql {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {}: schema version {found}, this agent reads version {expected}", path.display())]
    Version {
        path: PathBuf,
        found: i64,
        expected: i64,
    },
    #[error("store {}: {reason}", path.display())]
    Other { path: PathBuf, reason: String },
}

impl StoreError {
    /// A row differs from the record the chain covers (see `query::event_of`).
    pub fn is_tampered(&self) -> bool {
        matches!(self, StoreError::Sql { source: rusqlite::Error::ToSqlConversionFailure(e), .. } if e.is::<query::Tampered>())
    }

    /// The file is not a database or is damaged (as opposed to a full disk
    /// or a transient I/O error).
    pub fn is_corrupt(&self) -> bool {
        match self {
            StoreError::Sql { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            ),
            _ => false,
        }
    }
}

pub(crate) fn sql(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Sql { path, op, source }
}

/// A policy set as recorded: its generation and its members as (name,
/// sha256).
pub type RecordedSet = (u32, Vec<(String, String)>);

/// A policy version as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyVersion {
    pub name: String,
    pub mode: String,
    pub file: String,
    pub sha256: String,
    pub text: String,
}

/// The store, open for writing (the daemon) or reading (queries, export).
pub struct Store {
    pub conn: Connection,
    pub path: PathBuf,
    /// The ids of the cgroup paths, executables, argument vectors and
    /// containers committed so far (`append`), so a batch asks SQLite only
    /// for new ones.
    names: Names,
}

impl Store {
    /// Opens or creates the store for writing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Private from its first byte: SQLite would make it 0644, and its
        // WAL and shared-memory files take the database's mode.
        crate::private_file::create(path, 0o600).map_err(|e| StoreError::Other {
            path: path.to_path_buf(),
            reason: format!("creating it private: {e}"),
        })?;
        let conn = Connection::open(path).map_err(sql(path, "open"))?;
        schema::prepare(&conn, path)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            names: Names::default(),
        })
    }

    /// Opens an existing store for reading only.
    pub fn open_read(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Other {
                path: path.to_path_buf(),
                reason: "no such file (has the daemon run with this --state-dir?)".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path, "open read-only"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql(path, "busy timeout"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql(path, "read schema version"))?;
        if version != schema::VERSION {
            return Err(StoreError::Version {
                path: path.to_path_buf(),
                found: version,
                expected: schema::VERSION,
            });
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            names: Names::default(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        sql(&self.path, op)
    }

    /// The store's identity: a random id made when the file was created.
    pub fn store_id(&self) -> Result<String, StoreError> {
        self.meta("store_id").map(|v| v.unwrap_or_default())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err("read meta"))
    }

    /// The chain head: the last record's sequence number and hash.
    pub fn head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        let (seq, hash): (i64, Vec<u8>) = self
            .conn
            .query_row("SELECT seq, hash FROM chain_head WHERE id = 0", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(self.err("read chain head"))?;
        Ok((seq, chain::to32(&hash)))
    }

    /// What the store accounted for of the kernel ring `epoch`'s numbers
    /// (see `seqbook`): (cpu, last number).
    pub fn kernel_seqs(&self, epoch: &str) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT cpu, seq FROM kernel_seqs WHERE epoch = ?1")
            .map_err(self.err("read kernel numbers"))?;
        let rows = stmt
            .query_map(params![epoch], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err("read kernel numbers"))?;
        Ok(rows)
    }

    /// The kernel numbers the store holds in [since, until), per CPU:
    /// (cpu, distinct numbers, lowest, highest). Within one ring, `highest -
    /// lowest + 1 - distinct` numbers are missing there, which the gaps of
    /// the window must account for (a number two events share under
    /// preemption counts once).
    pub fn kernel_numbers(
        &self,
        since: i64,
        until: i64,
    ) -> Result<Vec<(i64, i64, i64, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kernel_cpu, count(DISTINCT kernel_seq), min(kernel_seq), max(kernel_seq) FROM events WHERE kernel_seq > 0 AND unix_nanos >= ?1 AND unix_nanos < ?2 GROUP BY kernel_cpu ORDER BY kernel_cpu")
            .map_err(self.err("read kernel numbers"))?;
        let rows = stmt
            .query_map(params![since, until], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err("read kernel numbers"))?;
        Ok(rows)
    }

    /// Events stored more than once in [since, until): rows beyond the
    /// first with the same kernel number (CPU, number) and time, which one
    /// event read once can only make if a batch was written twice.
    pub fn duplicate_events(&self, since: i64, until: i64) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM events WHERE kernel_seq > 0 AND unix_nanos >= ?1 AND unix_nanos < ?2 GROUP BY kernel_cpu, kernel_seq, unix_nanos HAVING n > 1)",
                params![since, until],
                |r| r.get(0),
            )
            .map_err(self.err("count duplicate events"))
    }

    /// The events the gaps in [since, until) say were lost on the way to
    /// the store (by kind), which a missing kernel number must be one of.
    pub fn lost_by_kind(&self, since: i64, until: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, sum(count) FROM gaps WHERE unix_nanos >= ?1 AND unix_nanos < ?2 GROUP BY kind ORDER BY kind")
            .map_err(self.err("read gaps"))?;
        let rows = stmt
            .query_map(params![since, until], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err("read gaps"))?;
        Ok(rows)
    }

    /// Signs the chain head with what the daemon run `run` watches and
    /// keeps the checkpoint (the daemon's heartbeat, see `coverage`).
    pub fn checkpoint(
        &mut self,
        key: &ed25519_dalek::SigningKey,
        run: i64,
        watching: &str,
    ) -> Result<chain::Checkpoint, StoreError> {
        let (seq, hash) = self.head()?;
        self.checkpoint_at(key, run, watching, now_nanos(), seq, hash)
    }

    /// A heartbeat made at `unix_nanos` over the head (`seq`, `hash`) the
    /// store had then, written now: one held in memory while the store
    /// could not be written.
    pub fn checkpoint_at(
        &mut self,
        key: &ed25519_dalek::SigningKey,
        run: i64,
        watching: &str,
        unix_nanos: i64,
        seq: i64,
        hash: [u8; 32],
    ) -> Result<chain::Checkpoint, StoreError> {
        use ed25519_dalek::Signer;
        let mut cp = chain::Checkpoint {
            unix_nanos,
            seq,
            hash: hex::encode(hash),
            run,
            watching: watching.to_string(),
            signature: String::new(),
        };
        let sig = key.sign(cp.message(&self.store_id()?).as_bytes());
        self.conn
            .execute(
                "INSERT INTO checkpoints (unix_nanos, seq, hash, signature, run, watching) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![cp.unix_nanos, seq, &hash[..], &sig.to_bytes()[..], run, watching],
            )
            .map_err(self.err("write checkpoint"))?;
        cp.signature = hex::encode(sig.to_bytes());
        Ok(cp)
    }

    /// The checkpoints made in [since, until), oldest first.
    pub fn checkpoints_between(
        &self,
        since: i64,
        until: i64,
    ) -> Result<Vec<chain::Checkpoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT unix_nanos, seq, hash, signature, run, watching FROM checkpoints WHERE unix_nanos >= ?1 AND unix_nanos < ?2 ORDER BY id")
            .map_err(self.err("prepare checkpoints"))?;
        let rows = stmt
            .query_map([since, until], checkpoint_of)
            .and_then(|r| r.collect())
            .map_err(self.err("read checkpoints"))?;
        Ok(rows)
    }

    /// The policies of the last set recorded in force, as (file, text) in
    /// the set's order of names: what a restart falls back to for a file
    /// that is broken when it starts.
    pub fn last_policy_set(&self) -> Result<Vec<(String, String)>, StoreError> {
        let members = self
            .last_policy_set_members()?
            .map(|(_, m)| m)
            .unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare("SELECT file, text FROM policy_versions WHERE sha256 = ?1")
            .map_err(self.err("prepare policy versions"))?;
        let mut out = Vec::new();
        for (_name, sha256) in members {
            let row: Option<(String, String)> = stmt
                .query_row([&sha256], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(self.err("read a policy version"))?;
            out.extend(row);
        }
        Ok(out)
    }

    /// The last policy set recorded in force: its generation and its
    /// members as (name, sha256), by name; None before the first.
    pub fn last_policy_set_members(&self) -> Result<Option<RecordedSet>, StoreError> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT generation, members FROM policy_sets ORDER BY unix_nanos DESC, id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err("read the last policy set"))?;
        Ok(row.map(|(generation, members)| {
            (
                generation as u32,
                serde_json::from_str(&members).unwrap_or_default(),
            )
        }))
    }

    /// What was harvested of each kernel flow entry (see `Mark`).
    pub fn flow_marks(&self) -> Result<Vec<(Vec<u8>, Mark)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, first_ns, count, packets, bytes FROM flow_marks")
            .map_err(self.err("prepare flow marks"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    Mark {
                        first_ns: r.get::<_, i64>(1)? as u64,
                        count: r.get::<_, i64>(2)? as u64,
                        packets: r.get::<_, i64>(3)? as u64,
                        bytes: r.get::<_, i64>(4)? as u64,
                    },
                ))
            })
            .and_then(|r| r.collect())
            .map_err(self.err("read flow marks"))?;
        Ok(rows)
    }

    /// Appends events, flows, policy sets and gap records in one
    /// transaction; all or nothing.
    pub fn append(&mut self, batch: &Batch) -> Result<(), StoreError> {
        // Taken out while the transaction runs: ids it made are known only
        // once it commits, and a failed batch leaves the names empty.
        let mut names = std::mem::take(&mut self.names);
        self.append_named(batch, &mut names)?;
        names.bound();
        self.names = names;
        Ok(())
    }

    fn append_named(&mut self, batch: &Batch, names: &mut Names) -> Result<(), StoreError> {
        let Names { cgroups, processes } = names;
        let path = self.path.clone();
        let e = |op| sql(&path, op);
        let tx = self.conn.transaction().map_err(e("begin"))?;
        {
            let (mut seq, mut prev): (i64, Vec<u8>) = tx
                .query_row("SELECT seq, hash FROM chain_head WHERE id = 0", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(e("read chain head"))?;
            let mut ins = tx
                .prepare_cached(schema::INSERT_EVENT)
                .map_err(e("prepare insert"))?;
            let mut flow = tx
                .prepare_cached(schema::UPSERT_FLOW)
                .map_err(e("prepare flow upsert"))?;
            let mut hourly = rollup::Pending::default();
            for ev in &batch.events {
                let process = processes.get(&tx, ev).map_err(e("name a process"))?;
                let (cgroup, path) = cgroups
                    .get(&tx, &ev.cgroup_path)
                    .map_err(e("name a cgroup path"))?;
                seq += 1;
                let canonical = chain::canonical(seq, ev);
                let compact = query::restorable(ev, path);
                let digest: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
                let hash = chain::link(&chain::to32(&prev), &digest);
                ins.execute(params![
                    seq,
                    ev.unix_nanos as i64,
                    ev.verdict,
                    ev.policy,
                    ev.rule,
                    ev.hook,
                    ev.protocol,
                    ev.family,
                    ev.dst_ip,
                    ev.dst_port,
                    ev.country,
                    ev.continent,
                    ev.pid,
                    ev.tgid,
                    ev.uid,
                    ev.comm,
                    ev.cgroup_id as i64,
                    // By id (`cgroup_ref`).
                    "",
                    ev.policy_generation,
                    // Compact rows: the record is the canonical form of
                    // the columns, prev_hash the hash of the row before.
                    &[] as &[u8],
                    &digest[..],
                    &hash[..],
                    if compact { "" } else { canonical.as_str() },
                    ev.dns_name,
                    ev.dns_cname,
                    ev.cloud,
                    ev.cloud_region,
                    ev.country_source,
                    ev.kernel_cpu,
                    ev.kernel_seq,
                    cgroup,
                    query::drift_column(ev),
                    process.exe,
                    process.args,
                    ev.args_truncated,
                    ev.ppid,
                    process.parent_exe,
                    process.container,
                ])
                .map_err(e("insert event"))?;
                // A drift alert is about an attempt its own event counts.
                if ev.drift.is_none() {
                    upsert_flow(&mut flow, ev, cgroup, process.exe, 1, 0, 0, 0)
                        .map_err(e("upsert flow"))?;
                    hourly.add(ev, cgroup, 1, 0, 0);
                }
                prev = hash.to_vec();
            }
            tx.execute(
                "UPDATE chain_head SET seq = ?1, hash = ?2 WHERE id = 0",
                params![seq, prev],
            )
            .map_err(e("update chain head"))?;
            drop(flow);
            append_harvest(&tx, batch, cgroups, processes, &mut hourly)
                .map_err(e("record harvested flows"))?;
            hourly.write(&tx).map_err(e("add to the hourly flows"))?;
            for g in &batch.gaps {
                tx.execute(
                    "INSERT INTO gaps (unix_nanos, kind, count, detail) VALUES (?1, ?2, ?3, ?4)",
                    params![g.unix_nanos, g.kind, g.count as i64, g.detail],
                )
                .map_err(e("insert gap"))?;
            }
            for set in &batch.policy_sets {
                record_policy_set(&tx, set).map_err(e("record policy set"))?;
            }
            for (t, geo) in &batch.geo {
                tx.execute(
                    "INSERT INTO geoip (unix_nanos, identity) VALUES (?1, ?2)",
                    params![t, geo],
                )
                .map_err(e("record geoip"))?;
            }
            for (t, cloud) in &batch.cloud {
                tx.execute(
                    "INSERT INTO cloud_ranges (unix_nanos, identity) VALUES (?1, ?2)",
                    params![t, cloud],
                )
                .map_err(e("record cloud ranges"))?;
            }
            if let Some((epoch, rows)) = &batch.kernel_seqs {
                let mut up = tx
                    .prepare_cached("INSERT INTO kernel_seqs (epoch, cpu, seq) VALUES (?1, ?2, ?3) ON CONFLICT (epoch, cpu) DO UPDATE SET seq = excluded.seq")
                    .map_err(e("prepare kernel numbers"))?;
                for (cpu, seq) in rows {
                    up.execute(params![epoch, cpu, seq])
                        .map_err(e("record kernel numbers"))?;
                }
            }
            for (t, run) in &batch.runs {
                tx.execute(
                    "INSERT INTO agent_runs (unix_nanos, info) VALUES (?1, ?2)",
                    params![t, run],
                )
                .map_err(e("record agent run"))?;
            }
            if !batch.id.is_empty() {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('last_batch', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![batch.id],
                )
                .map_err(e("record the batch"))?;
            }
        }
        tx.commit().map_err(e("commit"))
    }

    /// The name of the last batch the writer committed (`Batch::id`; empty
    /// when none was named).
    pub fn last_batch(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'last_batch'", [], |r| {
                r.get(0)
            })
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(sql(&self.path, "read the last batch"))
    }
}

/// A policy set taking effect.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub unix_nanos: i64,
    pub generation: u32,
    pub policies: Vec<PolicyVersion>,
}

/// Something missing from the record: events the store could not take,
/// the kernel could not queue, or a store reset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub unix_nanos: i64,
    /// `lost_for_store` (older stores: the store fell behind the stream),
    /// `lost_in_kernel` (the ring buffer was full; refusals apart:)
    /// `denials_lost_in_kernel` (decisions that are not "allow" that found
    /// even the ring's reserve full), `store_degraded`, `store_reset`, `lost_at_restart`
    /// (read from the kernel by a run that was killed before storing it),
    /// `lost_in_daemon` (a kernel number skipped with no known cause).
    pub kind: String,
    pub count: u64,
    pub detail: String,
}

/// What one transaction appends.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<std::sync::Arc<Event>>,
    pub gaps: Vec<Gap>,
    pub policy_sets: Vec<PolicySet>,
    /// (time, GeoIP identity as JSON).
    pub geo: Vec<(i64, String)>,
    /// (time, cloud-range snapshot in force as JSON).
    pub cloud: Vec<(i64, String)>,
    /// (time, agent start as JSON: version, kernel, boot id).
    pub runs: Vec<(i64, String)>,
    /// Harvested from the kernel's flow table, with what is now harvested
    /// of each entry (and the entries that are gone), in the same
    /// transaction: a restart neither loses nor doubles a count.
    pub repeats: Vec<Repeat>,
    pub marks: Vec<(Vec<u8>, Mark)>,
    pub unmarks: Vec<Vec<u8>>,
    /// With the last chunk of a complete harvest: every count the kernel
    /// made before this time (Unix ns) is stored once this batch is (the
    /// writer says so, `writer::Handle::harvested`; nothing is written).
    pub harvested_through: Option<i64>,
    /// The kernel numbers now accounted for (`seqbook`), as of this batch.
    pub kernel_seqs: Option<(seqbook::Epoch, Vec<(i64, i64)>)>,
    /// The writer's name for this batch (empty: none), kept in the same
    /// transaction: a commit that reported a failure and was written all
    /// the same (the disk filled after the last frame) is found and not
    /// written twice (`Store::last_batch`).
    pub id: String,
}

/// What a flow entry in the kernel counted since its last harvest: attempts
/// that were not events, and packets and bytes. `event` carries the flow's
/// key and place (its time is the entry's last activity).
#[derive(Debug, Clone)]
pub struct Repeat {
    pub event: Event,
    pub count: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The counters of a kernel flow entry as last harvested; `first_ns` tells
/// the entry from a later one under the same key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub first_ns: u64,
    pub count: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.repeats.is_empty()
            && self.marks.is_empty()
            && self.unmarks.is_empty()
            && self.events.is_empty()
            && self.gaps.is_empty()
            && self.policy_sets.is_empty()
            && self.geo.is_empty()
            && self.cloud.is_empty()
            && self.runs.is_empty()
    }
}

/// What a transaction has looked up by name, once per batch: AHash, seeded
/// per process (the names are workloads' paths and arguments; SipHash was
/// 3% of the daemon's time at 10k events/s).
type Interned<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// The ids committed so far of what events name by id.
#[derive(Default)]
struct Names {
    cgroups: Cgroups,
    processes: Processes,
}

impl Names {
    /// At most this many of each are kept: a node that runs ever new
    /// command lines asks SQLite again rather than growing without end.
    const MOST: usize = 16_384;

    fn bound(&mut self) {
        if self.cgroups.ids.len() > Self::MOST {
            self.cgroups = Cgroups::default();
        }
        let p = &mut self.processes;
        if p.exes.len() > Self::MOST {
            p.exes.clear();
        }
        if p.args.len() > Self::MOST {
            p.args.clear();
        }
        if p.containers.len() > Self::MOST {
            p.containers.clear();
        }
    }
}

/// The cgroup paths named by id: each one's id (made in the transaction
/// if new) and what reading it back attributes, worked out once per path
/// rather than per event. A known path costs one hash (its place in
/// `known`).
#[derive(Default)]
struct Cgroups {
    ids: Interned<String, usize>,
    known: Vec<(i64, crate::events::CgroupInfo)>,
}

impl Cgroups {
    fn get(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        path: &str,
    ) -> rusqlite::Result<(i64, &crate::events::CgroupInfo)> {
        if let Some(&i) = self.ids.get(path) {
            let (id, info) = &self.known[i];
            return Ok((*id, info));
        }
        let id = tx
            .prepare_cached(schema::INTERN_CGROUP)?
            .query_row(params![path], |r| r.get(0))?;
        let info = crate::events::CgroupInfo::of_path(path.to_string());
        self.ids.insert(path.to_string(), self.known.len());
        self.known.push((id, info));
        let (id, info) = &self.known[self.known.len() - 1];
        Ok((*id, info))
    }
}

/// Executables, argument vectors and what runtimes said of containers,
/// by id (made in the transaction if new): each is stored
/// once, not per event.
#[derive(Default)]
struct Processes {
    exes: Interned<String, i64>,
    args: Interned<Vec<String>, i64>,
    /// By container id, each description a runtime gave of it: looked up
    /// by the event's borrowed fields, so a known one costs no copy.
    containers: Interned<String, Vec<(crate::containers::Meta, i64)>>,
}

/// An event's process and container columns (0: not known).
#[derive(Debug, Clone, Copy)]
struct ProcessRefs {
    exe: i64,
    args: i64,
    parent_exe: i64,
    container: i64,
}

impl Processes {
    /// Descriptions kept per container id (see `containers`).
    const SAID_MOST: usize = 8;

    fn exe(&mut self, tx: &rusqlite::Transaction<'_>, path: &str) -> rusqlite::Result<i64> {
        if path.is_empty() {
            return Ok(0);
        }
        if let Some(id) = self.exes.get(path) {
            return Ok(*id);
        }
        let id = tx
            .prepare_cached(schema::INTERN_EXE)?
            .query_row(params![path], |r| r.get(0))?;
        self.exes.insert(path.to_string(), id);
        Ok(id)
    }

    fn get(&mut self, tx: &rusqlite::Transaction<'_>, ev: &Event) -> rusqlite::Result<ProcessRefs> {
        let args = if ev.args.is_empty() {
            0
        } else if let Some(id) = self.args.get(&ev.args) {
            *id
        } else {
            let json = serde_json::to_string(&ev.args)
                .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
            let id = tx
                .prepare_cached(schema::INTERN_ARGS)?
                .query_row(params![json], |r| r.get(0))?;
            self.args.insert(ev.args.clone(), id);
            id
        };
        Ok(ProcessRefs {
            exe: self.exe(tx, &ev.exe)?,
            args,
            parent_exe: self.exe(tx, &ev.parent_exe)?,
            container: self.container(tx, ev)?,
        })
    }

    fn container(&mut self, tx: &rusqlite::Transaction<'_>, ev: &Event) -> rusqlite::Result<i64> {
        if !ev.has_container_meta() {
            return Ok(0);
        }
        let known = self
            .containers
            .get(ev.container_id.as_str())
            .and_then(|said| said.iter().find(|(m, _)| ev.says_container(m)));
        if let Some((_, id)) = known {
            return Ok(*id);
        }
        let Some(m) = ev.container_meta() else {
            return Ok(0);
        };
        let id = tx.prepare_cached(schema::INTERN_CONTAINER)?.query_row(
            params![
                ev.container_id,
                m.image,
                m.image_digest,
                m.name,
                m.pod_name,
                m.pod_namespace,
                labels_json(&m.pod_labels)
            ],
            |r| r.get(0),
        )?;
        let said = self.containers.entry(ev.container_id.clone()).or_default();
        // A container whose description keeps changing (relabelled
        // again and again) is asked of SQLite again past this many.
        if said.len() >= Processes::SAID_MOST {
            said.clear();
        }
        said.push((m, id));
        Ok(id)
    }
}

/// Pod labels as the store keeps them: a JSON object, empty for none.
fn labels_json(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        serde_json::to_string(labels).unwrap_or_default()
    }
}

/// Pod labels from the store (`labels_json`); a column that does not read
/// back leaves none, and the record check then fails the row as edited.
pub(crate) fn labels_of(column: Option<String>) -> std::collections::BTreeMap<String, String> {
    column
        .filter(|c| !c.is_empty())
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn upsert_flow(
    stmt: &mut rusqlite::CachedStatement<'_>,
    ev: &Event,
    cgroup: i64,
    exe: i64,
    events: i64,
    repeats: u64,
    packets: u64,
    bytes: u64,
) -> rusqlite::Result<usize> {
    let t = ev.unix_nanos as i64;
    stmt.execute(params![
        query::bucket_of(t),
        cgroup,
        ev.comm,
        ev.dst_ip,
        ev.dst_port,
        ev.protocol,
        ev.verdict,
        ev.policy,
        ev.country,
        ev.continent,
        t,
        ev.dns_name,
        cloud_place(ev),
        events,
        repeats as i64,
        packets as i64,
        bytes as i64,
        exe,
    ])
}

/// The repeats and marks of a harvest.
fn append_harvest<'a>(
    tx: &rusqlite::Transaction<'_>,
    batch: &'a Batch,
    cgroups: &mut Cgroups,
    processes: &mut Processes,
    hourly: &mut rollup::Pending<'a>,
) -> rusqlite::Result<()> {
    if !batch.repeats.is_empty() {
        let mut up = tx.prepare_cached(schema::UPSERT_FLOW)?;
        for r in &batch.repeats {
            let (cgroup, _) = cgroups.get(tx, &r.event.cgroup_path)?;
            let exe = processes.exe(tx, &r.event.exe)?;
            upsert_flow(
                &mut up, &r.event, cgroup, exe, 0, r.count, r.packets, r.bytes,
            )?;
            hourly.add(
                &r.event,
                cgroup,
                r.count as i64,
                r.packets as i64,
                r.bytes as i64,
            );
        }
    }
    if !batch.marks.is_empty() {
        let mut up = tx.prepare_cached(schema::UPSERT_MARK)?;
        for (key, m) in &batch.marks {
            up.execute(params![
                key,
                m.first_ns as i64,
                m.count as i64,
                m.packets as i64,
                m.bytes as i64
            ])?;
        }
    }
    for key in &batch.unmarks {
        tx.execute("DELETE FROM flow_marks WHERE key = ?1", params![key])?;
    }
    Ok(())
}

/// Records a policy set when it differs from the last one recorded.
fn record_policy_set(tx: &rusqlite::Transaction<'_>, set: &PolicySet) -> rusqlite::Result<()> {
    let mut members: Vec<(String, String)> = set
        .policies
        .iter()
        .map(|p| (p.name.clone(), p.sha256.clone()))
        .collect();
    members.sort();
    let members_json = serde_json::to_string(&members).unwrap_or_default();
    let last: Option<String> = tx
        .query_row(
            "SELECT members FROM policy_sets ORDER BY unix_nanos DESC, id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if last.as_deref() == Some(members_json.as_str()) {
        return Ok(());
    }
    for p in &set.policies {
        tx.execute(
            "INSERT OR IGNORE INTO policy_versions (sha256, name, mode, file, text, first_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![p.sha256, p.name, p.mode, p.file, p.text, set.unix_nanos],
        )?;
    }
    tx.execute(
        "INSERT INTO policy_sets (unix_nanos, generation, members) VALUES (?1, ?2, ?3)",
        params![set.unix_nanos, set.generation, members_json],
    )?;
    Ok(())
}

/// Now, as Unix nanoseconds.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn first_line(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// A row of `checkpoints` (unix_nanos, seq, hash, signature, run,
/// watching).
fn checkpoint_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<chain::Checkpoint> {
    Ok(chain::Checkpoint {
        unix_nanos: r.get(0)?,
        seq: r.get(1)?,
        hash: hex::encode(r.get::<_, Vec<u8>>(2)?),
        signature: hex::encode(r.get::<_, Vec<u8>>(3)?),
        run: r.get(4)?,
        watching: r.get(5)?,
    })
}

/// An agent start as recorded: version, kernel, host and boot, node key
/// (hex).
pub fn agent_run_json(node_public_key: &str) -> String {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": first_line("/proc/sys/kernel/osrelease"),
        "hostname": first_line("/proc/sys/kernel/hostname"),
        "machine_id": first_line("/etc/machine-id"),
        "boot_id": first_line("/proc/sys/kernel/random/boot_id"),
        "node_public_key": node_public_key,
    })
    .to_string()
}

/// The GeoIP database's identity as recorded.
pub fn geo_json(g: &crate::geo::GeoIdentity) -> String {
    serde_json::json!({
        "path": g.path.display().to_string(),
        "database_type": g.database_type,
        "schema": g.schema,
        "build_epoch": g.build_epoch,
        "build_time": crate::events::rfc3339_nanos(i128::from(g.build_epoch) * 1_000_000_000),
        "sha256": g.sha256,
        "networks": g.networks,
        "prefixes": g.prefixes,
    })
    .to_string()
}

/// `provider:region` of an event's address, or empty.
pub fn cloud_place(e: &Event) -> String {
    if e.cloud.is_empty() {
        String::new()
    } else {
        crate::cloud::place_label(&e.cloud, &e.cloud_region)
    }
}
