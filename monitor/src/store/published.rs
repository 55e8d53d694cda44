//! What NATS JetStream has acknowledged of this store (`fleet::publish`):
//! two cursors in `meta`, written by the publisher's own connection, read
//! by retention, which keeps what is not yet acknowledged (by age) or
//! records its removal as a gap (by size: bounded retention wins).
use rusqlite::{params, Connection, OptionalExtension};

use super::{sql, Store, StoreError};

/// The last event (chain seq) the stream acknowledged.
pub const ACKED_KEY: &str = "nats_acked_seq";
/// Flow minutes before this time (Unix ns) are published.
pub const FLOWS_KEY: &str = "nats_flows_until";
/// Signed checkpoints made up to this time (Unix ns) are published.
pub const CHECKPOINTS_KEY: &str = "nats_checkpoints_until";
/// The gap kind of events removed before the stream had them.
pub const GAP_KIND: &str = "nats_unpublished";

fn read(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .optional()
}

impl Store {
    /// A cursor (`ACKED_KEY`, `FLOWS_KEY`); None before the first
    /// acknowledgement.
    pub fn published(&self, key: &str) -> Result<Option<i64>, StoreError> {
        read(&self.conn, key).map_err(self.err("read the NATS cursor"))
    }

    /// Moves a cursor forward (never back: a late writer cannot undo a
    /// later acknowledgement).
    pub fn set_published(&self, key: &str, value: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                params![key, value],
            )
            .map(|_| ())
            .map_err(self.err("write the NATS cursor"))
    }

    /// Events stored and not yet acknowledged. Positions run without a
    /// hole from the first kept to the last (retention removes from the
    /// start only), so this is a difference of two index lookups, not a
    /// count: the publisher asks after every batch.
    pub fn unpublished(&self) -> Result<u64, StoreError> {
        let acked = self.published(ACKED_KEY)?.unwrap_or(0);
        self.conn
            .query_row(
                "SELECT coalesce((SELECT max(seq) FROM events), 0), coalesce((SELECT min(seq) FROM events), 1)",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map(|(last, first)| (last - acked.max(first - 1)).max(0) as u64)
            .map_err(self.err("count unpublished events"))
    }

    /// The chain hash each record of seq `first..=last` follows (the hash
    /// of the record before it), in seq order: what a published event
    /// carries so a reader can re-link the chain. Retention keeps the link
    /// on a row whose predecessor it removed; the first record follows 32
    /// zero bytes.
    pub fn chain_prevs(&self, first: i64, last: i64) -> Result<Vec<(i64, [u8; 32])>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, prev_hash, hash FROM events WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
            )
            .map_err(self.err("prepare chain hashes"))?;
        let rows = stmt
            .query_map(params![first - 1, last], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(self.err("read chain hashes"))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut before: Option<(i64, [u8; 32])> = None;
        for (seq, stored_prev, hash) in rows {
            let prev = match before {
                Some((b, h)) if b + 1 == seq => Some(h),
                _ if !stored_prev.is_empty() => Some(super::chain::to32(&stored_prev)),
                _ if seq == 1 => Some(super::chain::GENESIS),
                _ => None,
            };
            if seq >= first {
                let prev = prev.ok_or_else(|| StoreError::Other {
                    path: self.path.clone(),
                    reason: format!(
                        "record seq {seq} keeps no link to record seq {}, which is gone",
                        seq - 1
                    ),
                })?;
                out.push((seq, prev));
            }
            before = Some((seq, super::chain::to32(&hash)));
        }
        Ok(out)
    }

    /// The next `limit` checkpoints made after `after` (Unix ns) that sign
    /// no record beyond `acked`, oldest first.
    pub fn checkpoints_to_publish(
        &self,
        after: i64,
        acked: i64,
        limit: usize,
    ) -> Result<Vec<super::chain::Checkpoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT unix_nanos, seq, hash, signature, run, watching FROM checkpoints WHERE unix_nanos > ?1 AND seq <= ?2 ORDER BY id LIMIT ?3")
            .map_err(self.err("prepare checkpoints to publish"))?;
        let rows = stmt
            .query_map(params![after, acked, limit as i64], super::checkpoint_of)
            .and_then(|r| r.collect())
            .map_err(self.err("read checkpoints to publish"))?;
        Ok(rows)
    }

    /// The first flow minute at or after `from` and before `before`.
    pub fn next_flow_minute(&self, from: i64, before: i64) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT min(bucket) FROM flows WHERE bucket >= ?1 AND bucket < ?2",
                params![from, before],
                |r| r.get(0),
            )
            .map_err(self.err("find the next flow minute"))
    }

    /// Opens the store to move the publisher's cursors (the writer keeps
    /// its own connection; this one only touches `meta`).
    pub fn open_cursor(path: &std::path::Path) -> Result<Store, StoreError> {
        let store = Store::open_read(path)?;
        drop(store);
        let conn = Connection::open(path).map_err(sql(path, "open for the NATS cursor"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql(path, "busy timeout"))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            names: Default::default(),
        })
    }
}

/// The oldest time age retention may not reach while events or flow
/// minutes wait for the stream: the first unacknowledged event's, or the
/// first unpublished flow minute. None when nothing waits (or nothing was
/// ever published: no cursor).
pub(crate) fn hold(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let Some(acked) = read(conn, ACKED_KEY)? else {
        return Ok(None);
    };
    let first: Option<i64> = conn.query_row(
        "SELECT min(unix_nanos) FROM events WHERE seq > ?1",
        [acked],
        |r| r.get(0),
    )?;
    let flows = read(conn, FLOWS_KEY)?;
    Ok(match (first, flows) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// In a retention transaction removing events before `cutoff`: records the
/// unacknowledged ones among them as a gap.
pub(crate) fn record_removed(tx: &rusqlite::Transaction<'_>, cutoff: i64) -> rusqlite::Result<()> {
    let Some(acked) = read(tx, ACKED_KEY)? else {
        return Ok(());
    };
    let (n, low, high): (i64, Option<i64>, Option<i64>) = tx.query_row(
        "SELECT count(*), min(seq), max(seq) FROM events WHERE seq > ?1 AND unix_nanos < ?2",
        params![acked, cutoff],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if n > 0 {
        tx.execute(
            "INSERT INTO gaps (unix_nanos, kind, count, detail) VALUES (?1, ?2, ?3, ?4)",
            params![
                super::now_nanos(),
                GAP_KIND,
                n,
                format!(
                    "retention removed {n} events (seq {} to {}) before NATS JetStream acknowledged them",
                    low.unwrap_or(0),
                    high.unwrap_or(0)
                )
            ],
        )?;
    }
    Ok(())
}
