//! Retention: by age and by size, oldest first. What is removed is logged
//! in the store (`retention_log`), so an export can tell a purge from a
//! loss; the chain stays checkable from the first record kept (its
//! `prev_hash`, kept on it when its predecessor goes, is the anchor).
use std::time::Duration;

use rusqlite::params;

use super::{query::bucket_of, Store, StoreError};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// Age retention keeps what NATS has not acknowledged yet
    /// (`--nats-url`; see `published`); size retention does not, and
    /// records what it removed as a gap.
    pub keep_unpublished: bool,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }

    /// How often to run: a tenth of the age limit, between 1 s and 60 s.
    pub fn interval(&self) -> Duration {
        self.max_age
            .map(|a| a / 10)
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub events_by_age: u64,
    pub events_by_size: u64,
}

impl Store {
    /// Bytes in use (pages holding data; free pages are given back by
    /// incremental vacuum).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let q = |p: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                .map_err(self.err("read page counts"))
        };
        let used = (q("page_count")? - q("freelist_count")?).max(0) * q("page_size")?;
        Ok(used as u64)
    }

    /// Removes every event before `cutoff` (Unix nanoseconds) and what only
    /// described them; returns how many events went.
    pub fn purge_before(&mut self, cutoff: i64, reason: &str) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |op| super::sql(&path, op);
        let tx = self.conn.transaction().map_err(e("begin"))?;
        let (n, up_to): (i64, Option<i64>) = tx
            .query_row(
                "SELECT count(*), max(seq) FROM events WHERE unix_nanos < ?1",
                [cutoff],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(e("count old events"))?;
        // A compact row keeps no link to the row before it (see the
        // events table): one whose predecessor goes keeps it now.
        tx.execute(
            "UPDATE events SET prev_hash = (SELECT p.hash FROM events p WHERE p.seq = events.seq - 1) WHERE seq IN (SELECT seq + 1 FROM events WHERE unix_nanos < ?1) AND unix_nanos >= ?1 AND length(prev_hash) = 0",
            [cutoff],
        )
        .map_err(e("keep the links of the first records kept"))?;
        super::published::record_removed(&tx, cutoff)
            .map_err(e("record unpublished events removed"))?;
        tx.execute("DELETE FROM events WHERE unix_nanos < ?1", [cutoff])
            .map_err(e("delete old events"))?;
        // A flow minute goes once it is wholly before the cutoff.
        tx.execute("DELETE FROM flows WHERE bucket < ?1", [bucket_of(cutoff)])
            .map_err(e("delete old flows"))?;
        super::rollup::remove_before(&tx, cutoff).map_err(e("delete old hourly flows"))?;
        tx.execute("DELETE FROM gaps WHERE unix_nanos < ?1", [cutoff])
            .map_err(e("delete old gaps"))?;
        // Heartbeats go with the history they cover; the newest stays (it
        // anchors the chain head, see `evidence::bundle::check_tail`).
        tx.execute(
            "DELETE FROM checkpoints WHERE unix_nanos < ?1 AND id < (SELECT max(id) FROM checkpoints)",
            [cutoff],
        )
        .map_err(e("delete old checkpoints"))?;
        if n > 0 {
            tx.execute(
                "INSERT INTO retention_log (unix_nanos, reason, events, up_to_seq, before_nanos) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![super::now_nanos(), reason, n, up_to.unwrap_or(0), cutoff],
            )
            .map_err(e("log retention"))?;
        }
        tx.commit().map_err(e("commit retention"))?;
        Ok(n as u64)
    }

    /// Applies both limits at `now`.
    pub fn enforce_retention(&mut self, r: &Retention, now: i64) -> Result<Removed, StoreError> {
        let mut removed = Removed::default();
        if let Some(age) = r.max_age {
            let mut cutoff = now.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX));
            if r.keep_unpublished {
                if let Some(hold) =
                    super::published::hold(&self.conn).map_err(self.err("read the NATS cursor"))?
                {
                    cutoff = cutoff.min(hold);
                }
            }
            removed.events_by_age = self.purge_before(cutoff, "age")?;
        }
        if let Some(max) = r.max_bytes {
            // Oldest first, a share at a time, until under the limit.
            for _ in 0..64 {
                let used = self.used_bytes()?;
                if used <= max {
                    break;
                }
                let (count, oldest): (i64, Option<i64>) = self
                    .conn
                    .query_row("SELECT count(*), min(unix_nanos) FROM events", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(self.err("count events"))?;
                let Some(_) = oldest else { break };
                let share = ((used - max) as f64 / used as f64 * count as f64).ceil() as i64;
                let n = share.clamp(1, count).max((count / 20).min(count));
                let cutoff: i64 = self
                    .conn
                    .query_row(
                        "SELECT unix_nanos FROM events ORDER BY unix_nanos LIMIT 1 OFFSET ?1",
                        [n - 1],
                        |r| r.get(0),
                    )
                    .map_err(self.err("find size cutoff"))?;
                removed.events_by_size += self.purge_before(cutoff + 1, "size")?;
                self.conn
                    .execute_batch("PRAGMA incremental_vacuum")
                    .map_err(self.err("incremental vacuum"))?;
            }
        }
        if removed != Removed::default() {
            self.conn
                .execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(self.err("vacuum after retention"))?;
        }
        Ok(removed)
    }
}
