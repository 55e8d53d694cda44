//! What became of every event the kernel numbered. The kernel gives each
//! event it puts in the ring a number, per CPU, from 1 for as long as the
//! pinned maps live (`DecisionEvent::seq`). The writer follows the numbers
//! of what reaches it: a number skipped is an event lost on the way (the
//! pipeline hands every event to the writer, so within a run none should
//! be; one would be recorded as `lost_in_daemon`). The one loss no running
//! daemon can see, the events a
//! killed daemon had read from the ring and not yet stored, shows as the
//! skip between the last number the store holds (kept per CPU in
//! `kernel_seqs`, in the transaction that stored it) and the first one the
//! next run reads: `lost_at_restart`. A CPU the next run reads nothing
//! from has it counted up to the kernel's own counter instead, as read
//! when the run began (`SeqBook::numbered`).
use std::collections::{HashMap, HashSet};

/// The ring the numbers belong to: the boot and the ring map's id, which
/// the kernel does not reuse within a boot. New maps start at 1 again.
pub type Epoch = String;

/// Skipped numbers remembered per skip, for late arrivals.
const MAX_REMEMBERED: u64 = 65_536;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqBook {
    pub epoch: Epoch,
    /// Per CPU, the next number expected.
    next: HashMap<u32, u64>,
    /// CPUs seen in this run (a skip at a CPU's first event is a restart's).
    seen: HashSet<u32>,
    /// Skips, to be recorded as gaps.
    pub at_restart: u64,
    pub unexplained: u64,
    /// The numbers skipped since the skips were last recorded (and whether
    /// at a restart), so one arriving late is taken back.
    skipped: HashMap<(u32, u64), bool>,
    /// Numbers seen twice: two tasks of one CPU numbered at once (the
    /// kernel's per-CPU counter is not atomic); each counted once.
    pub shared_numbers: u64,
    /// Whether the numbers already stored are known (false: the store
    /// could not be read when the run began; the first number per CPU is
    /// then taken as it comes, and nothing is claimed about the restart).
    known: bool,
}

impl SeqBook {
    /// The book of `epoch` as the store left it: per CPU the last number
    /// accounted for.
    pub fn resume(epoch: Epoch, stored: &[(i64, i64)]) -> Self {
        let mut b = SeqBook {
            epoch,
            known: true,
            ..Default::default()
        };
        for &(cpu, seq) in stored {
            if cpu >= 0 {
                b.next.insert(cpu as u32, seq.max(0) as u64 + 1);
            }
        }
        b
    }

    /// A book for a ring whose stored numbers could not be read.
    pub fn unknown(epoch: Epoch) -> Self {
        SeqBook {
            epoch,
            known: false,
            ..Default::default()
        }
    }

    /// An event numbered `seq` on `cpu` reached the writer.
    pub fn saw(&mut self, cpu: u32, seq: u32) {
        if seq == 0 {
            return;
        }
        let seq = u64::from(seq);
        let first = self.seen.insert(cpu);
        let expected = match self.next.get(&cpu) {
            Some(&n) => n,
            None if self.known => 1,
            None => seq,
        };
        if seq > expected {
            self.skip(cpu, expected, seq, first);
        } else if seq < expected {
            match self.skipped.remove(&(cpu, seq)) {
                // Late (a task preempted between its place in the ring and
                // its number): the skip counted it; take it back.
                Some(true) => self.at_restart = self.at_restart.saturating_sub(1),
                Some(false) => self.unexplained = self.unexplained.saturating_sub(1),
                // A number given twice.
                None => self.shared_numbers += 1,
            }
        }
        self.next.insert(cpu, expected.max(seq + 1));
    }

    /// The kernel had numbered up to `last` on `cpu` when this run began,
    /// and the ring has been read once since. A CPU this run has seen
    /// nothing from then lost (`at_restart`) every number the store does
    /// not hold up to `last`: without this, that loss would show only
    /// when the CPU next numbers an event. (A CPU this run has seen had
    /// its skip counted at its first event; a number up to `last` still to
    /// come was in flight, and is taken back as any late one.)
    pub fn numbered(&mut self, cpu: u32, last: u32) {
        if !self.known || last == 0 || self.seen.contains(&cpu) {
            return;
        }
        let last = u64::from(last);
        let expected = self.next.get(&cpu).copied().unwrap_or(1);
        if last < expected {
            return;
        }
        self.seen.insert(cpu);
        self.skip(cpu, expected, last + 1, true);
        self.next.insert(cpu, last + 1);
    }

    /// Numbers `from..to` of `cpu` never reached the writer: counted, and
    /// the last of them remembered (a late one arrives right after).
    fn skip(&mut self, cpu: u32, from: u64, to: u64, at_restart: bool) {
        if at_restart {
            self.at_restart += to - from;
        } else {
            self.unexplained += to - from;
        }
        for n in to.saturating_sub(MAX_REMEMBERED).max(from)..to {
            self.skipped.insert((cpu, n), at_restart);
        }
    }

    /// The skips were recorded as gaps: start counting anew.
    pub fn recorded(&mut self) {
        self.at_restart = 0;
        self.unexplained = 0;
        self.skipped.clear();
    }

    /// The rows `kernel_seqs` holds for this book: per CPU the last number
    /// accounted for.
    pub fn rows(&self) -> Vec<(i64, i64)> {
        let mut rows: Vec<(i64, i64)> = self
            .next
            .iter()
            .map(|(&cpu, &n)| (i64::from(cpu), n as i64 - 1))
            .collect();
        rows.sort_unstable();
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_numbers_lose_nothing() {
        let mut b = SeqBook::resume("e".into(), &[]);
        for s in 1..=100 {
            b.saw(0, s);
            b.saw(1, s);
        }
        assert_eq!((b.at_restart, b.unexplained), (0, 0));
        assert_eq!(b.rows(), [(0, 100), (1, 100)]);
    }

    #[test]
    fn a_restart_counts_what_the_last_run_never_stored() {
        // The store holds up to 40 on CPU 0 and 7 on CPU 1; the new run
        // reads 56 and 7+1 first: 15 were read and lost on CPU 0.
        let mut b = SeqBook::resume("e".into(), &[(0, 40), (1, 7)]);
        b.saw(0, 56);
        b.saw(1, 8);
        b.saw(0, 57);
        assert_eq!((b.at_restart, b.unexplained), (15, 0));
    }

    #[test]
    fn a_skip_within_a_run_is_unexplained_and_a_late_number_is_taken_back() {
        let mut b = SeqBook::resume("e".into(), &[]);
        b.saw(0, 1);
        b.saw(0, 4); // 2 and 3 skipped...
        b.saw(0, 2); // ... 2 only late
        assert_eq!((b.at_restart, b.unexplained), (0, 1));
        assert_eq!(b.rows(), [(0, 4)]);
        // A number given twice takes nothing back.
        b.saw(0, 4);
        b.saw(0, 2);
        assert_eq!((b.unexplained, b.shared_numbers), (1, 2));
        b.recorded();
        b.saw(0, 3); // late, but its skip is recorded already: a number twice
        assert_eq!((b.unexplained, b.shared_numbers), (0, 3));
    }

    #[test]
    fn a_cpu_silent_since_the_restart_counts_its_loss_from_the_kernels_number() {
        // The store holds up to 40 on CPU 0, 7 on CPU 1 and nothing of
        // CPU 2; the kernel had numbered 90, 12 and 5 when the run began.
        let mut b = SeqBook::resume("e".into(), &[(0, 40), (1, 7)]);
        b.saw(1, 11); // CPU 1 was read: its skip counted at its first event
        b.numbered(0, 90);
        b.numbered(1, 12);
        b.numbered(2, 5);
        assert_eq!((b.at_restart, b.unexplained), (50 + 3 + 5, 0));
        assert_eq!(b.rows(), [(0, 90), (1, 11), (2, 5)]);
        // One in flight at the start arrives late: taken back.
        b.saw(0, 90);
        assert_eq!((b.at_restart, b.shared_numbers), (57, 0));
        // Later numbers of CPU 0 are this run's.
        b.saw(0, 92);
        assert_eq!((b.at_restart, b.unexplained), (57, 1));
        // What the store holds already is no loss.
        let mut c = SeqBook::resume("e".into(), &[(0, 40)]);
        c.numbered(0, 40);
        assert_eq!(c.at_restart, 0);
        // An unknown store claims nothing.
        let mut u = SeqBook::unknown("e".into());
        u.numbered(0, 90);
        assert_eq!((u.at_restart, u.rows()), (0, vec![]));
    }

    #[test]
    fn an_unknown_store_claims_nothing_about_the_restart() {
        let mut b = SeqBook::unknown("e".into());
        b.saw(0, 500);
        b.saw(0, 501);
        assert_eq!((b.at_restart, b.unexplained), (0, 0));
        // New maps: numbering starts at 1, so a first 3 lost 1 and 2.
        let mut fresh = SeqBook::resume("new".into(), &[]);
        fresh.saw(0, 3);
        assert_eq!(fresh.at_restart, 2);
    }
}
