-- The tables of store version 6 (for the upgrade test).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One row per decision, in arrival order. seq is the chain position:
-- digest = SHA-256(canonical JSON of the record), hash = SHA-256(prev_hash || digest).
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
    kernel_cpu INTEGER NOT NULL DEFAULT 0, kernel_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX events_time ON events (unix_nanos);
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
-- Flows: one row per key and minute.
CREATE TABLE flows (
    bucket INTEGER NOT NULL,
    cgroup_path TEXT NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    dns_name TEXT NOT NULL DEFAULT '', cloud_region TEXT NOT NULL DEFAULT '',
    repeats INTEGER NOT NULL DEFAULT 0, packets INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, repeat_last INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name)
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
