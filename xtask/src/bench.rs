//! `cargo xtask bench`: runs the benchmark suite (`tests/src/bin/bench/`)
//! as root and, with `--readme`, puts its table into README.md's
//! "## Performance" section.
use std::{path::Path, process::Command};

use anyhow::{bail, Context};

use crate::{root, run};

/// What the README says about the suite, above the table it writes.
const INTRO: &str = "\
`cargo xtask bench` (root) measures what the monitor costs against the bare
kernel, side by side in one run: one daemon with the full CC0 country
database and two policies of 10,000 extra CIDRs each; the workload (the
`loadgen` binary) runs in its own network namespace, on loopback, in a
cgroup with no program, one under a `monitor` policy and one under an
`enforce` policy, alternated round by round (A B C A B C ..., 7 rounds of
1 s). Rates and latencies are medians over the rounds with their IQR;
ratios are paired per round. Kernel decision cost is `run_time_ns /
run_cnt` with `kernel.bpf_stats_enabled` on (restored afterwards); the
event pipeline runs two generators (both cores) in the monitored cgroup
into one `events --follow` client, every datagram to a destination of its
own (so each is an event). The decision-cost rows name what the hook
meets: a repeated destination (a cache hit), a new one (a decision, an
insert and an event), or a cgroup selected by no policy (`att/unsel`, under
the programs' root). Results land in
`target/bench/results.{json,md}`; `cargo xtask bench --readme` also
replaces this section. These are one run on a shared 2-core VM: read the
ratios, not the absolute numbers.
";

pub fn bench(readme: bool, faults: Option<u64>, store: Option<u64>) -> anyhow::Result<()> {
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
    run(&mut cmd)?;
    if readme {
        update_readme(&root().join("README.md"), &out.join("results.md"))?;
    }
    Ok(())
}

/// Replaces (or adds, before "## How it works") the "## Performance" section.
fn update_readme(readme: &Path, results: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let table = std::fs::read_to_string(results).context("read results.md")?;
    std::fs::write(readme, with_section(&text, &table)?)?;
    eprintln!("updated the Performance section of {}", readme.display());
    Ok(())
}

fn with_section(text: &str, table: &str) -> anyhow::Result<String> {
    let section = format!("## Performance\n\n{INTRO}\n{table}\n");
    let new = if let Some(start) = text.find("\n## Performance\n") {
        let start = start + 1;
        let end = text[start + 3..]
            .find("\n## ")
            .map(|i| start + 3 + i + 1)
            .unwrap_or(text.len());
        // Hand-written notes under the table stay.
        let notes = text[start..end]
            .find("\nWhat the figures say")
            .map(|i| &text[start + i + 1..end])
            .unwrap_or("");
        let section = if notes.is_empty() {
            section
        } else {
            format!("{}\n\n{notes}", section.trim_end_matches('\n'))
        };
        format!("{}{section}{}", &text[..start], &text[end..])
    } else if let Some(at) = text.find("\n## How it works\n") {
        format!("{}\n{section}{}", &text[..at], &text[at + 1..])
    } else {
        bail!("README.md has neither a Performance nor a How it works section");
    };
    Ok(new)
}

#[cfg(test)]
mod tests {
    /// A re-run replaces the table, keeps the notes and the other sections.
    #[test]
    fn section_replaced_notes_kept() {
        let first = super::with_section("# x\n\n## How it works\n\nz\n", "| t1 |\n").unwrap();
        let noted = first.replace("| t1 |\n", "| t1 |\n\nWhat the figures say: n\n");
        let second = super::with_section(&noted, "| t2 |\n").unwrap();
        assert!(second.contains("| t2 |") && !second.contains("| t1 |"));
        assert!(
            second.contains("What the figures say: n")
                && second.ends_with("## How it works\n\nz\n")
        );
        assert_eq!(second.matches("## Performance").count(), 1);
        // The notes stay a paragraph of their own, so a third run finds them.
        assert!(
            second.contains("| t2 |\n\nWhat the figures say: n"),
            "{second}"
        );
        let third = super::with_section(&second, "| t3 |\n").unwrap();
        assert!(
            third.contains("| t3 |\n\nWhat the figures say: n"),
            "{third}"
        );
    }
}
