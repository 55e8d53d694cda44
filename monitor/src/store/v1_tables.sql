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
    record TEXT NOT NULL
);
CREATE INDEX events_time ON events (unix_nanos);
-- The chain's anchor: the last record appended (seq 0 and 32 zero bytes when empty).
CREATE TABLE chain_head (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL, hash BLOB NOT NULL);
-- Flows: one row per key and minute.
CREATE TABLE flows (
    bucket INTEGER NOT NULL,
    cgroup_path TEXT NOT NULL, comm TEXT NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
    protocol TEXT NOT NULL, verdict TEXT NOT NULL, policy TEXT NOT NULL,
    country TEXT NOT NULL, continent TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy)
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
