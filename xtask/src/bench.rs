//! `cargo xtask bench`: runs the benchmark suite (`tests/src/bin/bench/`)
//! as root and, with `--readme`, puts its table into the Performance page
//! of the documentation (`docs/performance.md`).
use std::{path::Path, process::Command};

use anyhow::Context;

use crate::{root, run};

/// What the Performance page says about the suite, above the table it writes.
const INTRO: &str = "\
`cargo xtask bench` (root) measures what the monitor costs against the bare
kernel, side by side in one run: one daemon with the full CC0 country
database and two policies of 10,000 extra CIDRs each; the workload (the
`loadgen` binary) runs in its own network namespace, on loopback, in a
cgroup with no program, one with the floor (trivial programs of the same
types on the same cgroup hooks, returning allow at their first
instruction), one under a `monitor` policy, one under an `enforce` policy
and one under the programs' root that no policy selects, alternated round
by round (A B C D E A B C D E ..., 7 rounds of 1 s); each is reported
against no program and against the floor. Rates and latencies are medians over the rounds with their IQR;
ratios are paired per round. Kernel decision cost is `run_time_ns /
run_cnt` with `kernel.bpf_stats_enabled` on (restored afterwards); the
event pipeline runs two generators (both cores) in the monitored cgroup
into one `events --follow` client, every datagram to a destination of its
own (so each is an event). The decision-cost rows name what the hook
meets: a repeated destination (a cache hit), a new one (a decision, an
insert and an event), or a cgroup selected by no policy (`att/unsel`, under
the programs' root). Results land in
`target/bench/results.{json,md}`. The NATS rows restart the daemon
with `--nats-url` on a store of 100,000 recorded events and time the
publisher draining them into a three-server JetStream cluster on the same
machine (`--nats`: only those). `--step connect` runs only the rates
against no program and the floor, `--step cost` only the kernel cost per
hook. `--against REV` measures only the cost of
a repeat (connect4, sendmsg4) of this build against the daemon of git
revision REV, the two daemons taking turns round by round (5 rounds) on
the same cgroups and policies (`target/bench/against.md`). `cargo xtask bench --readme` also
replaces this section. These are one run on a shared 2-core VM: read the
ratios, not the absolute numbers.
";

pub fn bench(
    readme: bool,
    faults: Option<u64>,
    store: Option<u64>,
    nats: bool,
    step: Option<String>,
    against: Option<&str>,
) -> anyhow::Result<()> {
    let release = root().join("target/release");
    // The suite finds the daemon and the probe (test server) next to the
    // directory it runs from, like the integration tests in target/release/deps.
    let dir = release.join("bench-run");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(release.join("bench"), dir.join("bench")).context("copy the bench binary")?;
    let out = root().join("target/bench");
    let mut cmd = if crate::is_root() {
        Command::new(dir.join("bench"))
    } else {
        eprintln!("the suite loads eBPF programs and needs root: running it with sudo -E");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(dir.join("bench"));
        c
    };
    cmd.current_dir(root())
        .env("EGRESS_MONITOR_BIN", release.join("egress-monitor"))
        .env("EGRESS_MONITOR_LOADGEN", release.join("loadgen"))
        .env("EGRESS_MONITOR_GEOIP", crate::geoip_path())
        .env("EGRESS_MONITOR_CLOUD", crate::cloud_ranges_dir())
        .env("EGRESS_MONITOR_BENCH_OUT", &out);
    if let Some(secs) = faults {
        cmd.arg("faults").arg(secs.to_string());
        return run(&mut cmd);
    }
    if let Some(events) = store {
        cmd.arg("store").arg(events.to_string());
        return run(&mut cmd);
    }
    if nats {
        cmd.arg("nats");
        return run(&mut cmd);
    }
    if let Some(step) = step {
        cmd.arg(step);
        return run(&mut cmd);
    }
    if let Some(rev) = against {
        let (other, label) = build_against(rev)?;
        cmd.arg("against").arg(other).arg(label);
        return run(&mut cmd);
    }
    // The version measured: HEAD as it was when the run began.
    let measured = measured_commit();
    run(&mut cmd)?;
    if readme {
        update_page(&root().join("docs/performance.md"), &out.join("results.md"))?;
        update_readme(
            &root().join("README.md"),
            &out.join("results.md"),
            &measured,
        )?;
    }
    Ok(())
}

/// Where the README's summary of the last full run goes.
const README_BEGIN: &str = "<!-- cargo xtask bench --readme: from here -->";
const README_END: &str = "<!-- cargo xtask bench --readme: to here -->";

/// HEAD's short hash, and whether the tracked files differ from it.
fn measured_commit() -> String {
    let commit = Command::new("git")
        .current_dir(root())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .current_dir(root())
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{commit} with uncommitted changes")
    } else {
        commit
    }
}

/// Puts the summary of a full run (its goals, met and missed) between the
/// README's markers.
fn update_readme(readme: &Path, results: &Path, commit: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme).context("read README.md")?;
    let table = std::fs::read_to_string(results).context("read results.md")?;
    let updated = with_summary(&text, &summary(&table, commit))?;
    std::fs::write(readme, updated)?;
    eprintln!("updated the summary in {}", readme.display());
    Ok(())
}

/// The rows of a results table that have a goal, and how many are met.
fn summary(results: &str, commit: &str) -> String {
    let machine = results
        .lines()
        .find_map(|l| l.strip_prefix("Machine: "))
        .and_then(|l| l.split(". Command:").next())
        .unwrap_or("this machine");
    let rows: Vec<&str> = results
        .lines()
        .filter(|l| l.ends_with("| yes |") || l.ends_with("| **no** |"))
        .collect();
    let met = rows.iter().filter(|l| l.ends_with("| yes |")).count();
    format!(
        "One full `cargo xtask bench` of this version (commit {commit}; {machine}) \
         met {met} of its {} goals. The rows with a goal, as it wrote them (every \
         figure, and what the misses are made of: [Performance](docs/performance.md)):\n\n\
         | figure | value | goal | met? |\n| --- | --- | --- | --- |\n{}\n",
        rows.len(),
        rows.join("\n")
    )
}

/// `readme` with what is between the markers replaced by `summary`.
fn with_summary(readme: &str, summary: &str) -> anyhow::Result<String> {
    let (Some(a), Some(b)) = (readme.find(README_BEGIN), readme.find(README_END)) else {
        anyhow::bail!(
            "README.md has no \"{README_BEGIN}\" ... \"{README_END}\" section for the summary"
        );
    };
    anyhow::ensure!(
        a < b,
        "README.md: the summary's end marker comes before its start"
    );
    Ok(format!(
        "{}{README_BEGIN}\n{summary}{}",
        &readme[..a],
        &readme[b..]
    ))
}

/// The short hash of git revision `rev`, or an error naming it.
pub fn revision(rev: &str) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(root())
        .args(["rev-parse", "--verify", "--short=12"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .context("git rev-parse")?;
    if !out.status.success() {
        anyhow::bail!(
            "--against {rev}: not a commit of this repository: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The daemon of git revision `rev`, built from its tree (`git archive`)
/// in `target/against/`, its dependencies shared by every revision built
/// there; returns the binary and a label (`rev` and its short hash).
fn build_against(rev: &str) -> anyhow::Result<(std::path::PathBuf, String)> {
    let short = revision(rev)?;
    let base = root().join("target/against");
    let src = base.join(format!("src-{short}"));
    let bin = base.join(format!("egress-monitor-{short}"));
    if !bin.exists() {
        if !src.join("Cargo.toml").exists() {
            std::fs::create_dir_all(&src)?;
            let archive = Command::new("git")
                .current_dir(root())
                .args(["archive", "--format=tar", &short])
                .output()
                .context("git archive")?;
            anyhow::ensure!(archive.status.success(), "git archive {short} failed");
            let mut tar = Command::new("tar")
                .arg("-x")
                .arg("-C")
                .arg(&src)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("tar")?;
            use std::io::Write;
            tar.stdin
                .take()
                .context("tar's stdin")?
                .write_all(&archive.stdout)?;
            anyhow::ensure!(tar.wait()?.success(), "unpacking {short} failed");
        }
        eprintln!(
            "building the daemon of {rev} ({short}) in {}",
            src.display()
        );
        run(crate::cargo()
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", base.join("target"))
            .args(["build", "--release", "-p", "monitor"]))?;
        std::fs::copy(base.join("target/release/egress-monitor"), &bin)
            .context("copy the built daemon")?;
    }
    Ok((bin, format!("{rev} ({short})")))
}

/// Replaces the table at the top of the Performance page.
fn update_page(page: &Path, results: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(page).unwrap_or_default();
    let table = std::fs::read_to_string(results).context("read results.md")?;
    std::fs::write(page, with_table(&text, &table))?;
    eprintln!("updated the table of {}", page.display());
    Ok(())
}

/// The page with `table` under its title and introduction; the
/// hand-written notes from the first "What the figures say" on stay.
fn with_table(text: &str, table: &str) -> String {
    let head = format!("# Performance\n\n{INTRO}\n{table}\n");
    match text.find("\nWhat the figures say") {
        Some(i) => format!("{}\n{}", head.trim_end_matches('\n'), &text[i..]),
        None => head,
    }
}

#[cfg(test)]
mod tests {
    /// The README's summary counts the goals met, keeps only the rows with
    /// a goal, and replaces an earlier summary between its markers only.
    #[test]
    fn readme_summary_between_its_markers() {
        let results =
            "Machine: AMD EPYC, 2 cores, Linux 6. Command: `cargo xtask bench` (as root).\n\n\
                       | figure | value | goal | met? |\n| --- | --- | --- | --- |\n\
                       | a | 1 | <= 2 | yes |\n| b | 3 | <= 2 | **no** |\n| c | 5 | - | - |\n";
        let s = super::summary(results, "abc");
        assert!(s.contains("met 1 of its 2 goals"), "{s}");
        assert!(s.contains("commit abc; AMD EPYC, 2 cores, Linux 6)"), "{s}");
        assert!(
            s.contains("| a | 1 |") && s.contains("| b | 3 |") && !s.contains("| c |"),
            "{s}"
        );
        let readme = format!(
            "# x\n\n{}\nold\n{}\n\n## next\n",
            super::README_BEGIN,
            super::README_END
        );
        let once = super::with_summary(&readme, &s).unwrap();
        let twice = super::with_summary(&once, &s).unwrap();
        assert_eq!(once, twice);
        assert!(
            !once.contains("old") && once.ends_with(&format!("{}\n\n## next\n", super::README_END)),
            "{once}"
        );
        assert!(super::with_summary("# no markers\n", &s).is_err());
    }

    /// A re-run replaces the table and keeps the notes and the sections
    /// under them.
    #[test]
    fn table_replaced_notes_kept() {
        let first = super::with_table("", "| t1 |\n");
        assert!(first.starts_with("# Performance\n") && first.contains("| t1 |"));
        let noted = format!("{first}\nWhat the figures say: n\n\n## Load and faults\n\nz\n");
        let second = super::with_table(&noted, "| t2 |\n");
        assert!(
            second.contains("| t2 |") && !second.contains("| t1 |"),
            "{second}"
        );
        assert!(
            second.contains("| t2 |\n\nWhat the figures say: n")
                && second.ends_with("## Load and faults\n\nz\n"),
            "{second}"
        );
        assert_eq!(second.matches("# Performance").count(), 1);
        let third = super::with_table(&second, "| t3 |\n");
        assert!(
            third.contains("| t3 |\n\nWhat the figures say: n"),
            "{third}"
        );
    }
}
