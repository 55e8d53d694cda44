//! What a window's record covers: the spans in which a daemon ran with its
//! programs attached, read from the signed checkpoints (the daemon's
//! heartbeat, every `CHECKPOINT_EVERY`). A window without heartbeats, or
//! with a heartbeat that saw the programs detached, is not claimed as
//! watched: no record of it can be complete.
use serde::{Deserialize, Serialize};

use super::chain::Checkpoint;

/// What a checkpoint says the daemon's programs were doing.
pub mod watching {
    /// Attached since the previous checkpoint of the run.
    pub const ATTACHED: &str = "attached";
    /// Found detached (or not attachable) since the previous checkpoint:
    /// nothing was observed or enforced for part of that span.
    pub const DETACHED: &str = "detached";
    /// The run's last checkpoint, at shutdown: watched up to here.
    pub const STOPPING: &str = "stopping";
}

/// The longest span between two heartbeats of one run that still counts as
/// watched (2.5 heartbeat intervals: one late write is not a gap).
pub const MAX_GAP_NANOS: i64 = 25_000_000_000;

/// A part of the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub since_unix_nanos: i64,
    pub until_unix_nanos: i64,
    pub watched: bool,
    /// Why it was not watched; for the last watched span of a running
    /// daemon, that no heartbeat has signed it yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
}

impl Span {
    pub fn nanos(&self) -> i64 {
        self.until_unix_nanos - self.since_unix_nanos
    }
}

/// The window cut into watched and unwatched spans, in time order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Coverage {
    pub spans: Vec<Span>,
    pub watched_nanos: i64,
    pub window_nanos: i64,
    /// The end of the window after the last heartbeat of a daemon that was
    /// still running (at most `MAX_GAP_NANOS`): counted as watched, not yet
    /// signed.
    #[serde(default)]
    pub unsigned_tail_nanos: i64,
}

impl Coverage {
    /// Every part of the window was watched.
    pub fn complete(&self) -> bool {
        self.spans.iter().all(|s| s.watched)
    }

    pub fn unwatched(&self) -> impl Iterator<Item = &Span> {
        self.spans.iter().filter(|s| !s.watched)
    }
}

/// Why the span between two consecutive checkpoints was not watched, or
/// `None` when it was.
fn between(a: &Checkpoint, b: &Checkpoint) -> Option<String> {
    use watching::*;
    if a.watching.is_empty() || b.watching.is_empty() {
        return Some("no heartbeat: checkpoints made before coverage was recorded".into());
    }
    if a.run != b.run || a.watching == STOPPING {
        return Some(if a.watching == STOPPING {
            "no daemon ran (stopped)".into()
        } else {
            "no daemon ran (it ended without a shutdown checkpoint: killed or crashed)".into()
        });
    }
    let gap = b.unix_nanos - a.unix_nanos;
    if gap > MAX_GAP_NANOS {
        return Some(format!(
            "no heartbeat for {} s (the daemon stalled or its store could not be written)",
            gap / 1_000_000_000
        ));
    }
    if a.watching == DETACHED || b.watching == DETACHED {
        return Some(
            "the programs were detached: nothing was observed or enforced for part of this span"
                .into(),
        );
    }
    None
}

/// Cuts [since, until) by the checkpoints around it (they should reach
/// `MAX_GAP_NANOS` before and after the window).
pub fn coverage(checkpoints: &[Checkpoint], since: i64, until: i64) -> Coverage {
    let mut cps: Vec<&Checkpoint> = checkpoints.iter().collect();
    cps.sort_by_key(|c| c.unix_nanos);
    let mut raw: Vec<Span> = Vec::new();
    let mut push = |from: i64, to: i64, why: Option<String>| {
        let (from, to) = (from.max(since), to.min(until));
        if from < to {
            raw.push(Span {
                since_unix_nanos: from,
                until_unix_nanos: to,
                watched: why.is_none(),
                why: why.unwrap_or_default(),
            });
        }
    };
    let mut tail = 0;
    match (cps.first(), cps.last()) {
        (Some(first), Some(last)) => {
            push(
                since,
                first.unix_nanos,
                Some("no daemon ran (no heartbeat before this)".into()),
            );
            for w in cps.windows(2) {
                push(w[0].unix_nanos, w[1].unix_nanos, between(w[0], w[1]));
            }
            let open = until - last.unix_nanos;
            if last.watching == watching::ATTACHED && open <= MAX_GAP_NANOS {
                tail = open.max(0);
                push(last.unix_nanos, until, None);
            } else if last.watching == watching::STOPPING {
                push(
                    last.unix_nanos,
                    until,
                    Some("no daemon ran (stopped)".into()),
                );
            } else {
                push(
                    last.unix_nanos,
                    until,
                    Some("no heartbeat after this (the daemon ended or stalled)".into()),
                );
            }
        }
        _ => push(
            since,
            until,
            Some("no daemon ran (no heartbeat in or around the window)".into()),
        ),
    }
    // Neighbours of one kind become one span.
    let mut spans: Vec<Span> = Vec::new();
    for s in raw {
        match spans.last_mut() {
            Some(p)
                if p.watched == s.watched
                    && p.why == s.why
                    && p.until_unix_nanos == s.since_unix_nanos =>
            {
                p.until_unix_nanos = s.until_unix_nanos;
            }
            _ => spans.push(s),
        }
    }
    Coverage {
        watched_nanos: spans.iter().filter(|s| s.watched).map(Span::nanos).sum(),
        window_nanos: (until - since).max(0),
        unsigned_tail_nanos: tail,
        spans,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn cp(t: i64, run: i64, w: &str) -> Checkpoint {
        Checkpoint {
            unix_nanos: t * S,
            seq: 0,
            hash: String::new(),
            run,
            watching: w.into(),
            signature: String::new(),
        }
    }

    fn shape(c: &Coverage) -> Vec<(i64, i64, bool)> {
        c.spans
            .iter()
            .map(|s| (s.since_unix_nanos / S, s.until_unix_nanos / S, s.watched))
            .collect()
    }

    #[test]
    fn heartbeats_of_one_run_cover_the_window() {
        let cps: Vec<_> = (0..=10).map(|i| cp(i * 10, 1, "attached")).collect();
        let c = coverage(&cps, 5 * S, 95 * S);
        assert_eq!(shape(&c), vec![(5, 95, true)]);
        assert!(c.complete());
        assert_eq!(c.watched_nanos, 90 * S);
        assert_eq!(c.unsigned_tail_nanos, 0);
    }

    #[test]
    fn no_checkpoint_means_no_daemon_watched() {
        let c = coverage(&[], 0, 60 * S);
        assert_eq!(shape(&c), vec![(0, 60, false)]);
        assert!(c.spans[0].why.contains("no daemon ran"));
        assert_eq!(c.watched_nanos, 0);
    }

    #[test]
    fn a_stop_and_a_kill_leave_unwatched_spans_with_their_reason() {
        let cps = vec![
            cp(0, 1, "attached"),
            cp(10, 1, "attached"),
            cp(12, 1, "stopping"),
            cp(40, 2, "attached"),
            cp(50, 2, "attached"),
            cp(90, 3, "attached"),
            cp(100, 3, "attached"),
        ];
        let c = coverage(&cps, 0, 100 * S);
        assert_eq!(
            shape(&c),
            vec![
                (0, 12, true),
                (12, 40, false),
                (40, 50, true),
                (50, 90, false),
                (90, 100, true)
            ]
        );
        assert!(c.spans[1].why.contains("stopped"));
        assert!(c.spans[3].why.contains("killed or crashed"));
        assert!(!c.complete());
    }

    #[test]
    fn detached_programs_and_a_stalled_heartbeat_are_not_watched() {
        let cps = vec![
            cp(0, 1, "attached"),
            cp(5, 1, "detached"),
            cp(15, 1, "attached"),
            cp(25, 1, "attached"),
            cp(60, 1, "attached"),
        ];
        let c = coverage(&cps, 0, 60 * S);
        assert_eq!(
            shape(&c),
            vec![(0, 15, false), (15, 25, true), (25, 60, false)]
        );
        assert!(c.spans[0].why.contains("detached"));
        assert!(c.spans[2].why.contains("no heartbeat for 35 s"));
    }

    #[test]
    fn a_running_daemon_covers_a_short_unsigned_tail_only() {
        let cps = vec![cp(0, 1, "attached"), cp(10, 1, "attached")];
        let c = coverage(&cps, 0, 20 * S);
        assert!(c.complete());
        assert_eq!(c.unsigned_tail_nanos, 10 * S);
        let c = coverage(&cps, 0, 60 * S);
        assert_eq!(shape(&c), vec![(0, 10, true), (10, 60, false)]);
    }

    #[test]
    fn version_one_checkpoints_prove_nothing() {
        let cps = vec![cp(0, 0, ""), cp(10, 0, "")];
        let c = coverage(&cps, 0, 10 * S);
        assert_eq!(shape(&c), vec![(0, 10, false)]);
    }
}
