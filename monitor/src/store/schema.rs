//! Tables, pragmas and the statements the writer runs.
use std::path::Path;

use rusqlite::{params, Connection};

use super::{sql, StoreError};

/// `PRAGMA user_version` of the layout below.
pub const VERSION: i64 = 11;

const TABLES: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One row per decision, in arrival order. seq is the chain position:
-- digest = SHA-256(canonical JSON of the record), hash = SHA-256(prev_hash || digest).
-- Since version 7 a row keeps neither its record nor its prev_hash (both
-- empty): the record is the canonical form of its columns and prev_hash
-- the hash of the row before (kept on a row whose predecessor retention
-- removed); its cgroup path is `cgroup_ref` in cgroup_paths (cgroup_path
-- empty). Rows written before keep all three. `drift` is a drift alert's
-- (JSON of its `Drift`), empty on every other row.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    unix_nanos INTEGER NOT NULL,
    verdict TEXT NOT NULL, policy TEXT NOT NULL, rule TEXT NOT NULL, hook TEXT NOT NULL,
    protocol TEXT NOT NULL, family TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL, pid INTEGER NOT NULL, tgid INTEGER NOT NULL,
    uid INTEGER NOT NULL, comm TEXT NOT NULL, cgroup_id INTEGER NOT NULL, cgroup_path TEXT NOT NULL,
    policy_generation INTEGER NOT NULL,
    prev_hash BLOB NOT NULL, digest BLOB NOT NULL, hash BLOB NOT NULL,
    -- The canonical JSON that was hashed, byte for byte (exports write it).
    record TEXT NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', dns_cname TEXT NOT NULL DEFAULT '',
    cloud TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    country_source TEXT NOT NULL DEFAULT '',
    -- The CPU and number the kernel gave the event in its ring (0: none).
    kernel_cpu INTEGER NOT NULL DEFAULT 0, kernel_seq INTEGER NOT NULL DEFAULT 0,
    cgroup_ref INTEGER NOT NULL DEFAULT 0, drift TEXT NOT NULL DEFAULT '',
    -- The process (0: not known): executables and argument vectors by id.
    exe_ref INTEGER NOT NULL DEFAULT 0, args_ref INTEGER NOT NULL DEFAULT 0,
    args_truncated INTEGER NOT NULL DEFAULT 0, ppid INTEGER NOT NULL DEFAULT 0,
    parent_exe_ref INTEGER NOT NULL DEFAULT 0,
    -- What the container's runtime said of it (0: nothing).
    container_ref INTEGER NOT NULL DEFAULT 0
);
-- Every cgroup path once (events and flows name them by id).
CREATE TABLE cgroup_paths (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);-- Executables and argument vectors (JSON arrays of strings) once each.
CREATE TABLE executables (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE arguments (id INTEGER PRIMARY KEY, argv TEXT NOT NULL UNIQUE);
-- What container runtimes said of their containers, each answer once.
CREATE TABLE containers (id INTEGER PRIMARY KEY, container_id TEXT NOT NULL, image TEXT NOT NULL, image_digest TEXT NOT NULL, name TEXT NOT NULL, pod_name TEXT NOT NULL, pod_namespace TEXT NOT NULL, pod_labels TEXT NOT NULL DEFAULT '', UNIQUE (container_id, image, image_digest, name, pod_name, pod_namespace, pod_labels));
CREATE INDEX events_time ON events (unix_nanos);
-- Refusals (denied, would_deny) by record order: the first page of a
-- `--verdict denied` query without a scan; allowed rows take no room here.
CREATE INDEX events_refused ON events (seq) WHERE verdict != 'allowed';
-- Per ring (`epoch`: boot and map) and CPU, the last kernel number the
-- store accounted for (stored, or recorded in a gap). A restart finds
-- what the last run read and never stored from here.
CREATE TABLE kernel_seqs (
    epoch TEXT NOT NULL, cpu INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (epoch, cpu)
) WITHOUT ROWID;
-- The chain's anchor: the last record appended (seq 0 and 32 zero bytes when empty).
CREATE TABLE chain_head (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL, hash BLOB NOT NULL);
-- Signed checkpoints of the chain head, every CHECKPOINT_EVERY and at
-- shutdown: a store cut short after one is caught, and they are the
-- daemon's heartbeat (run, watching) from which coverage is read.
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, seq INTEGER NOT NULL,
    hash BLOB NOT NULL, signature BLOB NOT NULL,
    run INTEGER NOT NULL DEFAULT 0, watching TEXT NOT NULL DEFAULT ''
);
CREATE INDEX checkpoints_time ON checkpoints (unix_nanos);
-- Flows: one row per key and minute; `cgroup` is an id of cgroup_paths,
-- `exe` one of executables (0: not known).
CREATE TABLE flows (
    bucket INTEGER NOT NULL,
    cgroup INTEGER NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    repeats INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, repeat_last INTEGER NOT NULL DEFAULT 0,
    exe INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, cgroup, comm, exe, dst_ip, dst_port, protocol, verdict, policy, dns_name)
) WITHOUT ROWID;
-- What was harvested of each kernel flow entry so far (see FLOW_MARKS).
CREATE TABLE flow_marks (
    key BLOB PRIMARY KEY, first_ns INTEGER NOT NULL,
    count INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL
) WITHOUT ROWID;
-- Policy versions by content, and the sets in force over time.
CREATE TABLE policy_versions (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, mode TEXT NOT NULL, file TEXT NOT NULL,
    text TEXT NOT NULL, first_seen INTEGER NOT NULL
);
CREATE TABLE policy_sets (
    id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, generation INTEGER NOT NULL,
    members TEXT NOT NULL
);
CREATE TABLE geoip (id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, identity TEXT NOT NULL);
CREATE TABLE cloud_ranges (id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, identity TEXT NOT NULL);
CREATE TABLE agent_runs (id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, info TEXT NOT NULL);
-- What the record is missing, and why.
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, kind TEXT NOT NULL,
    count INTEGER NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX gaps_time ON gaps (unix_nanos);
-- Retention runs: what was removed on purpose.
CREATE TABLE retention_log (
    id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, reason TEXT NOT NULL,
    events INTEGER NOT NULL, up_to_seq INTEGER NOT NULL, before_nanos INTEGER NOT NULL
);
";

/// Version 1 to 2: names and cloud regions. Events gain columns; flows gain
/// `dns_name` in their key, so the table is rebuilt (its rows keep an empty
/// name: nothing was known of names then).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE events ADD COLUMN dns_name TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN dns_cname TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN cloud TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN cloud_region TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN country_source TEXT NOT NULL DEFAULT '';
CREATE TABLE flows_v2 (
    bucket INTEGER NOT NULL,
    cgroup_path TEXT NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name)
) WITHOUT ROWID;
INSERT INTO flows_v2 (bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count)
    SELECT bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count FROM flows;
DROP TABLE flows;
ALTER TABLE flows_v2 RENAME TO flows;
CREATE TABLE cloud_ranges (id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, identity TEXT NOT NULL);
PRAGMA user_version = 2;
";

/// Version 2 to 3: flows in the kernel. A flow row gains the repeats the
/// kernel counted without an event, and the packets and bytes it passed;
/// `flow_marks` keeps what was harvested, so a restart counts nothing twice.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE flows ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN packets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN repeat_last INTEGER NOT NULL DEFAULT 0;
CREATE TABLE flow_marks (
    key BLOB PRIMARY KEY, first_ns INTEGER NOT NULL,
    count INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 3;
";

/// Version 3 to 4: signed checkpoints of the chain head.
const MIGRATE_3_TO_4: &str = "
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY, unix_nanos INTEGER NOT NULL, seq INTEGER NOT NULL,
    hash BLOB NOT NULL, signature BLOB NOT NULL
);
PRAGMA user_version = 4;
";

/// Version 5 to 6: kernel event numbers, to count what a killed daemon
/// read and never stored.
const MIGRATE_5_TO_6: &str = "
ALTER TABLE events ADD COLUMN kernel_cpu INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN kernel_seq INTEGER NOT NULL DEFAULT 0;
CREATE TABLE kernel_seqs (
    epoch TEXT NOT NULL, cpu INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (epoch, cpu)
) WITHOUT ROWID;
PRAGMA user_version = 6;
";

/// Version 6 to 7: compact rows (new rows keep no record text, no
/// prev_hash and no path text; see the events table), the index of
/// refusals, cgroup paths by id (the flows are rebuilt with the id in
/// their key; old events keep their path text).
const MIGRATE_6_TO_7: &str = "
CREATE INDEX events_refused ON events (seq) WHERE verdict != 'allowed';
ALTER TABLE events ADD COLUMN cgroup_ref INTEGER NOT NULL DEFAULT 0;
CREATE TABLE cgroup_paths (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
INSERT OR IGNORE INTO cgroup_paths (path) SELECT DISTINCT cgroup_path FROM flows;
CREATE TABLE flows_v7 (
    bucket INTEGER NOT NULL,
    cgroup INTEGER NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    repeats INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, repeat_last INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name)
) WITHOUT ROWID;
INSERT INTO flows_v7 SELECT bucket, (SELECT id FROM cgroup_paths c WHERE c.path = flows.cgroup_path), comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count, dns_name, cloud_region, repeats, packets, bytes, repeat_last FROM flows;
DROP TABLE flows;
ALTER TABLE flows_v7 RENAME TO flows;
PRAGMA user_version = 7;
";

/// Version 9 to 10: who made each attempt. Events gain their process
/// (executable, arguments, parent) by id; flows gain the executable in
/// their key, so the table is rebuilt (its rows keep executable 0: not
/// known then).
const MIGRATE_9_TO_10: &str = "
ALTER TABLE events ADD COLUMN exe_ref INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN args_ref INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN args_truncated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN ppid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN parent_exe_ref INTEGER NOT NULL DEFAULT 0;
CREATE TABLE executables (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE arguments (id INTEGER PRIMARY KEY, argv TEXT NOT NULL UNIQUE);
CREATE TABLE flows_v10 (
    bucket INTEGER NOT NULL,
    cgroup INTEGER NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    repeats INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, repeat_last INTEGER NOT NULL DEFAULT 0,
    exe INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, cgroup, comm, exe, dst_ip, dst_port, protocol, verdict, policy, dns_name)
) WITHOUT ROWID;
INSERT INTO flows_v10 SELECT bucket, cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count, dns_name, cloud_region, repeats, packets, bytes, repeat_last, 0 FROM flows;
DROP TABLE flows;
ALTER TABLE flows_v10 RENAME TO flows;
";

/// Version 10 to 11: what container runtimes say of their containers
/// (image, name, pod), once per answer, and each event's by id.
const MIGRATE_10_TO_11: &str = "
ALTER TABLE events ADD COLUMN container_ref INTEGER NOT NULL DEFAULT 0;
CREATE TABLE containers (id INTEGER PRIMARY KEY, container_id TEXT NOT NULL, image TEXT NOT NULL, image_digest TEXT NOT NULL, name TEXT NOT NULL, pod_name TEXT NOT NULL, pod_namespace TEXT NOT NULL, pod_labels TEXT NOT NULL DEFAULT '', UNIQUE (container_id, image, image_digest, name, pod_name, pod_namespace, pod_labels));
";

/// Version 4 to 5: checkpoints become the daemon's heartbeat (the run that
/// signed them and what its programs watched); old ones keep version 1.
const MIGRATE_4_TO_5: &str = "
ALTER TABLE checkpoints ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN watching TEXT NOT NULL DEFAULT '';
CREATE INDEX checkpoints_time ON checkpoints (unix_nanos);
PRAGMA user_version = 5;
";

pub const INSERT_EVENT: &str = "INSERT INTO events (seq, unix_nanos, verdict, policy, rule, hook, protocol, family, dst_ip, dst_port, country, continent, pid, tgid, uid, comm, cgroup_id, cgroup_path, policy_generation, prev_hash, digest, hash, record, dns_name, dns_cname, cloud, cloud_region, country_source, kernel_cpu, kernel_seq, cgroup_ref, drift, exe_ref, args_ref, args_truncated, ppid, parent_exe_ref, container_ref) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36, ?37, ?38)";

/// A container runtime's answer's id, made if new.
pub const INTERN_CONTAINER: &str = "INSERT INTO containers (container_id, image, image_digest, name, pod_name, pod_namespace, pod_labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO UPDATE SET name = name RETURNING id";

/// A cgroup path's id, made if new.
/// An executable's id, made if new.
pub const INTERN_EXE: &str = "INSERT INTO executables (path) VALUES (?1) ON CONFLICT (path) DO UPDATE SET path = path RETURNING id";
/// An argument vector's id (its JSON), made if new.
pub const INTERN_ARGS: &str = "INSERT INTO arguments (argv) VALUES (?1) ON CONFLICT (argv) DO UPDATE SET argv = argv RETURNING id";

pub const INTERN_CGROUP: &str = "INSERT INTO cgroup_paths (path) VALUES (?1) ON CONFLICT (path) DO UPDATE SET path = path RETURNING id";

/// Adds to the flow row of a minute: an event (`?14` = 1) or what a harvest
/// of the kernel's flow table counted (`?15` repeats, `?16` packets, `?17`
/// bytes; `repeat_last` is their time).
pub const UPSERT_FLOW: &str = "INSERT INTO flows (bucket, cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count, dns_name, cloud_region, repeats, packets, bytes, repeat_last, exe) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?14, ?12, ?13, ?15, ?16, ?17, CASE WHEN ?14 = 0 THEN ?11 ELSE 0 END, ?18) ON CONFLICT (bucket, cgroup, comm, exe, dst_ip, dst_port, protocol, verdict, policy, dns_name) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen), count = count + excluded.count, repeats = repeats + excluded.repeats, packets = packets + excluded.packets, bytes = bytes + excluded.bytes, repeat_last = max(repeat_last, excluded.repeat_last), country = excluded.country, continent = excluded.continent, cloud_region = excluded.cloud_region";

pub const UPSERT_MARK: &str = "INSERT INTO flow_marks (key, first_ns, count, packets, bytes) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key) DO UPDATE SET first_ns = excluded.first_ns, count = excluded.count, packets = excluded.packets, bytes = excluded.bytes";

/// Pragmas and, on a new file, the tables.
pub fn prepare(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let e = |op| sql(path, op);
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(e("busy timeout"))?;
    // Reading the version is the first touch of the file: a file that is
    // not a database fails here.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(e("read schema version"))?;
    if version > VERSION {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found: version,
            expected: VERSION,
        });
    }
    if version == 0 {
        // Before any table exists: lets retention give space back.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .map_err(e("set auto_vacuum"))?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(e("set WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Other {
            path: path.to_path_buf(),
            reason: format!("journal mode is {mode}, not WAL"),
        });
    }
    // A committed batch survives a crash of the daemon and of the machine.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(e("set pragmas"))?;
    if version == 0 {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|err| StoreError::Other {
            path: path.to_path_buf(),
            reason: format!("random store id: {err}"),
        })?;
        let tx = conn.unchecked_transaction().map_err(e("begin"))?;
        tx.execute_batch(TABLES).map_err(e("create tables"))?;
        tx.execute_batch(&super::rollup::create_sql())
            .map_err(e("create the hourly flow tables"))?;
        tx.execute(
            "INSERT INTO chain_head (id, seq, hash) VALUES (0, 0, ?1)",
            params![&[0u8; 32][..]],
        )
        .map_err(e("create chain head"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('store_id', ?1), ('created', ?2)",
            params![hex::encode(id), super::now_nanos().to_string()],
        )
        .map_err(e("write meta"))?;
        tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))
            .map_err(e("write schema version"))?;
        tx.commit().map_err(e("commit schema"))?;
    } else if version < VERSION {
        let tx = conn.unchecked_transaction().map_err(e("begin"))?;
        if version == 1 {
            tx.execute_batch(MIGRATE_1_TO_2)
                .map_err(e("migrate schema 1 to 2"))?;
        }
        if version <= 2 {
            tx.execute_batch(MIGRATE_2_TO_3)
                .map_err(e("migrate schema 2 to 3"))?;
        }
        if version <= 3 {
            tx.execute_batch(MIGRATE_3_TO_4)
                .map_err(e("migrate schema 3 to 4"))?;
        }
        if version <= 4 {
            tx.execute_batch(MIGRATE_4_TO_5)
                .map_err(e("migrate schema 4 to 5"))?;
        }
        if version <= 5 {
            tx.execute_batch(MIGRATE_5_TO_6)
                .map_err(e("migrate schema 5 to 6"))?;
        }
        if version <= 6 {
            tx.execute_batch(MIGRATE_6_TO_7)
                .map_err(e("migrate schema 6 to 7"))?;
        }
        if version <= 7 {
            // Hourly sums of the flows (see `rollup`).
            tx.execute_batch(&super::rollup::create_sql())
                .map_err(e("migrate schema 7 to 8: create the hourly flow tables"))?;
            tx.execute_batch(&super::rollup::fill_sql())
                .map_err(e("migrate schema 7 to 8: fill the hourly flow tables"))?;
        }
        if version <= 8 {
            // Drift alerts.
            tx.execute_batch("ALTER TABLE events ADD COLUMN drift TEXT NOT NULL DEFAULT '';")
                .map_err(e("migrate schema 8 to 9: add the drift column"))?;
        }
        if version <= 9 {
            tx.execute_batch(MIGRATE_9_TO_10)
                .map_err(e("migrate schema 9 to 10: processes"))?;
        }
        if version <= 10 {
            tx.execute_batch(MIGRATE_10_TO_11)
                .map_err(e("migrate schema 10 to 11: containers"))?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))
            .map_err(e("write schema version"))?;
        tx.commit().map_err(e("commit migration"))?;
        log::info!(
            "store {}: schema migrated from version {version} to {VERSION} (names and cloud regions; flows in the kernel; signed checkpoints; heartbeats; kernel event numbers; compact rows; hourly flows; drift alerts; processes; containers)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes a new store back to version 9's layout (what `MIGRATE_9_TO_10`
    /// adds, removed), its flow rows kept.
    /// A store made now, taken back by `back`, given `rows`, and opened
    /// again (migrated): the connection, after checking the version.
    fn migrated_from(path: &Path, back: &str, rows: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        prepare(&conn, path).unwrap();
        conn.execute_batch(back).unwrap();
        conn.execute_batch(rows).unwrap();
        drop(conn);
        let conn = Connection::open(path).unwrap();
        prepare(&conn, path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        conn
    }

    /// A version 11 store as version 10 wrote it.
    const BACK_TO_10: &str = "
ALTER TABLE events DROP COLUMN container_ref;
DROP TABLE containers;
PRAGMA user_version = 10;
";

    /// A version 10 store gains what runtimes say of containers: its
    /// events keep their columns and name no container answer; an answer
    /// interned twice is one row.
    #[test]
    fn a_version_10_store_gains_containers() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated_from(
            &dir.path().join("v10.db"),
            BACK_TO_10,
            "INSERT INTO events (seq, unix_nanos, verdict, policy, rule, hook, protocol, family, dst_ip, dst_port, country, continent, pid, tgid, uid, comm, cgroup_id, cgroup_path, policy_generation, prev_hash, digest, hash, record, exe_ref) VALUES (1, 5, 'denied', 'p', 'default', 'connect4', 'tcp', 'ipv4', '203.0.113.2', 443, 'US', 'NA', 1, 1, 0, 'python3', 7, '/x', 1, x'00', x'00', x'00', '{}', 3);",
        );
        let (exe, container): (i64, i64) = conn
            .query_row(
                "SELECT exe_ref, container_ref FROM events WHERE seq = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (exe, container),
            (3, 0),
            "old events keep their process, name no container"
        );
        let answer = params!["ab", "localhost/p:1", "sha256:aa", "p", "", "", ""];
        let first: i64 = conn
            .query_row(INTERN_CONTAINER, answer, |r| r.get(0))
            .unwrap();
        let again: i64 = conn
            .query_row(INTERN_CONTAINER, answer, |r| r.get(0))
            .unwrap();
        assert_eq!(first, again, "one row per answer");
        let renamed: i64 = conn
            .query_row(
                INTERN_CONTAINER,
                params!["ab", "localhost/p:1", "sha256:aa", "q", "", "", ""],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(
            renamed, first,
            "another answer for the container is a row of its own"
        );
    }

    const BACK_TO_9: &str = "
ALTER TABLE events DROP COLUMN container_ref;
DROP TABLE containers;
ALTER TABLE events DROP COLUMN exe_ref;
ALTER TABLE events DROP COLUMN args_ref;
ALTER TABLE events DROP COLUMN args_truncated;
ALTER TABLE events DROP COLUMN ppid;
ALTER TABLE events DROP COLUMN parent_exe_ref;
DROP TABLE executables;
DROP TABLE arguments;
CREATE TABLE flows_v9 (
    bucket INTEGER NOT NULL,
    cgroup INTEGER NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    repeats INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, repeat_last INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name)
) WITHOUT ROWID;
INSERT INTO flows_v9 SELECT bucket, cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count, dns_name, cloud_region, repeats, packets, bytes, repeat_last FROM flows;
DROP TABLE flows;
ALTER TABLE flows_v9 RENAME TO flows;
PRAGMA user_version = 9;
";

    /// A version 9 store gains processes: its flow rows are kept (with
    /// executable 0), its events gain empty process columns, and a flow
    /// of another executable is a row of its own.
    #[test]
    fn a_version_9_store_gains_processes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = migrated_from(&dir.path().join("v9.db"), BACK_TO_9, "INSERT INTO flows (bucket, cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count) VALUES (0, 1, 'python3', '203.0.113.2', 443, 'tcp', 'denied', 'p', 'US', 'NA', 5, 5, 2);
             INSERT INTO events (seq, unix_nanos, verdict, policy, rule, hook, protocol, family, dst_ip, dst_port, country, continent, pid, tgid, uid, comm, cgroup_id, cgroup_path, policy_generation, prev_hash, digest, hash, record) VALUES (1, 5, 'denied', 'p', 'default', 'connect4', 'tcp', 'ipv4', '203.0.113.2', 443, 'US', 'NA', 1, 1, 0, 'python3', 7, '/x', 1, x'00', x'00', x'00', '{}');");
        let (exe, args, ppid): (i64, i64, i64) = conn
            .query_row(
                "SELECT exe_ref, args_ref, ppid FROM events WHERE seq = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((exe, args, ppid), (0, 0, 0), "old events name no process");
        let (count, exe): (i64, i64) = conn
            .query_row("SELECT count, exe FROM flows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            (count, exe),
            (2, 0),
            "the old flow is kept, executable unknown"
        );
        let evilbin: i64 = conn
            .query_row(INTERN_EXE, params!["/tmp/evilbin"], |r| r.get(0))
            .unwrap();
        conn.execute(
            UPSERT_FLOW,
            params![
                0,
                1,
                "python3",
                "203.0.113.2",
                443,
                "tcp",
                "denied",
                "p",
                "US",
                "NA",
                6,
                "",
                "",
                1,
                0,
                0,
                0,
                evilbin
            ],
        )
        .unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "another executable's flow is a row of its own");
        // The same path interned again is the same id.
        let again: i64 = conn
            .query_row(INTERN_EXE, params!["/tmp/evilbin"], |r| r.get(0))
            .unwrap();
        assert_eq!(again, evilbin);
    }

    /// A version 8 store gains the drift column and keeps its hourly sums
    /// as they were (the 7 to 8 step is not run again).
    #[test]
    fn a_version_8_store_gains_drift_alerts_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v8.db");
        let conn = Connection::open(&path).unwrap();
        prepare(&conn, &path).unwrap();
        conn.execute_batch(
            "INSERT INTO flows_by_place (hour, verdict, policy, protocol, country, continent, cloud_region, first_seen, last_seen, count, packets, bytes) VALUES (0, 'denied', 'p', 'tcp', 'US', 'NA', '', 5, 5, 3, 0, 0);
             PRAGMA user_version = 8;",
        )
        .unwrap();
        conn.execute_batch(BACK_TO_9).unwrap();
        conn.execute_batch("ALTER TABLE events DROP COLUMN drift; PRAGMA user_version = 8;")
            .unwrap();
        drop(conn);
        let conn = Connection::open(&path).unwrap();
        prepare(&conn, &path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let drift: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'drift'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(drift, 1, "the drift column is added");
        let hourly: i64 = conn
            .query_row("SELECT sum(count) FROM flows_by_place", [], |r| r.get(0))
            .unwrap();
        assert_eq!(hourly, 3, "the hourly sums are not filled again");
    }

    /// A store written by version 1 opens: its events keep their records
    /// (and chain) and gain empty name columns, its flows are carried over
    /// into the new key with an empty name.
    #[test]
    fn a_version_1_store_is_migrated_with_nothing_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("v1_tables.sql")).unwrap();
            conn.execute_batch(
                "INSERT INTO chain_head (id, seq, hash) VALUES (0, 1, x'00');
                 INSERT INTO events VALUES (1, 5, 'denied', 'p', 'default', 'connect4', 'tcp', 'ipv4', '203.0.113.2', 443, 'US', 'NA', 1, 1, 0, 'curl', 7, '/x', 1, x'00', x'00', x'00', '{}');
                 INSERT INTO flows VALUES (0, '/x', 'curl', '203.0.113.2', 443, 'tcp', 'denied', 'p', 'US', 'NA', 5, 5, 3);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        prepare(&conn, &path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let (record, name): (String, String) = conn
            .query_row(
                "SELECT record, dns_name FROM events WHERE seq = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((record.as_str(), name.as_str()), ("{}", ""));
        let (count, name): (i64, String) = conn
            .query_row("SELECT count, dns_name FROM flows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, name.as_str()), (3, ""));
        let flow_path: String = conn
            .query_row(
                "SELECT path FROM flows JOIN cgroup_paths ON id = cgroup",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(flow_path, "/x", "the flow's path is kept, by id");
        let hourly: (i64, i64, String) = conn
            .query_row("SELECT hour, count, country FROM flows_by_place", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(
            hourly,
            (0, 3, "US".into()),
            "the hourly sums hold the old flows"
        );
        // The upgraded store has the tables a new one has.
        let tables = |c: &Connection| -> Vec<String> {
            let mut stmt = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .unwrap();
            let names = stmt.query_map([], |r| r.get(0)).unwrap();
            names.collect::<Result<_, _>>().unwrap()
        };
        let fresh = dir.path().join("new.db");
        let new = Connection::open(&fresh).unwrap();
        prepare(&new, &fresh).unwrap();
        assert_eq!(tables(&conn), tables(&new));
        // New rows with names go into the migrated tables.
        conn.execute(
            UPSERT_FLOW,
            params![
                0,
                // The id the migration gave "/x".
                1,
                "curl",
                "203.0.113.2",
                443,
                "tcp",
                "denied",
                "p",
                "US",
                "NA",
                6,
                "api.example",
                "",
                1,
                0,
                0,
                0,
                0
            ],
        )
        .unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "a named flow is a flow of its own");
        // Opening again does nothing more.
        prepare(&conn, &path).unwrap();
    }
}
