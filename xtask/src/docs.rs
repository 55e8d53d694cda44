//! `cargo xtask docs-check`: runs the README's tour against a real daemon
//! and fails when what a command prints no longer matches the sample under
//! it.
//!
//! The tour is the part of README.md between `<!-- tour -->` and
//! `<!-- /tour -->`. In its ```` ```console ```` blocks a line starting with
//! `$ ` is a command (a trailing `\` continues it on the next line) and the
//! lines up to the next command are what it prints (stdout and stderr).
//! All commands run in one bash session, in order, from the checkout, half
//! a second apart, so variables and background jobs carry over as in a
//! reader's terminal.
//!
//! A sample matches when, line by line, after the volatile parts are
//! masked on both sides (times, process ids, program and link ids, long
//! hex digests, durations, runs of spaces): a sample line `...` stands for
//! any number of lines, and `...` within a line for any text.
use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

const START: &str = "<!-- tour -->";
const END: &str = "<!-- /tour -->";
/// The whole tour's time limit.
const LIMIT: Duration = Duration::from_secs(300);

/// One command of the tour and the sample printed under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub command: String,
    pub sample: Vec<String>,
    /// 1-based line of the command in the file.
    pub line: usize,
}

/// The tour's steps, in order.
pub fn steps(text: &str) -> anyhow::Result<Vec<Step>> {
    let start = text
        .find(START)
        .with_context(|| format!("no {START} marker"))?;
    let end = text[start..]
        .find(END)
        .map(|i| start + i)
        .with_context(|| format!("no {END} marker after {START}"))?;
    let first_line = text[..start].lines().count();
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut continued = false;
    for (i, line) in text[start..end].lines().enumerate() {
        let at = first_line + i + 1;
        if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```console";
            continued = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if continued {
            let step = steps.last_mut().expect("a continued command");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: cmd.to_string(),
                sample: Vec::new(),
                line: at,
            });
            continued = cmd.ends_with('\\');
        } else {
            match steps.last_mut() {
                Some(step) => step.sample.push(line.to_string()),
                None => bail!("README.md:{at}: output before the tour's first command"),
            }
        }
    }
    if steps.is_empty() {
        bail!("the tour has no commands");
    }
    Ok(steps)
}

/// A line with its volatile parts masked and its runs of spaces made one.
pub fn masked(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &line[i..];
        // 2026-12-04T03:37:57.444Z (any precision)
        if rest.len() >= 20
            && b[i].is_ascii_digit()
            && rest.as_bytes()[4] == b'-'
            && rest.as_bytes()[10] == b'T'
            && rest[..4].bytes().all(|c| c.is_ascii_digit())
        {
            let len = rest
                .find(|c: char| !(c.is_ascii_digit() || "-:.TZ+".contains(c)))
                .unwrap_or(rest.len());
            out.push_str("<time>");
            i += len;
            continue;
        }
        // A hex digest or key of 16 digits or more.
        let hex = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if hex >= 16 && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            out.push_str("<hex>");
            i += hex;
            continue;
        }
        // A process id as the tables show it: `bash[19024]`.
        if b[i] == b'[' {
            let digits = rest[1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - 1);
            if digits > 0 && rest[1 + digits..].starts_with(']') {
                out.push_str("[<pid>]");
                i += digits + 2;
                continue;
            }
        }
        // Any other number (ids, sizes, durations, counts) is kept: a
        // sample line with a volatile number writes `...` in its place.
        if b[i] == b' ' {
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            out.push(' ');
            continue;
        }
        let c = rest.chars().next().expect("not at the end");
        out.push(c);
        i += c.len_utf8();
    }
    out.trim_end().to_string()
}

/// Whether `line` matches `pattern` (masked both), `...` within the
/// pattern standing for any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut at = first.len();
    for part in &parts[1..parts.len() - 1] {
        match line[at..].find(part) {
            Some(i) => at += i + part.len(),
            None => return false,
        }
    }
    line[at..].ends_with(last)
}

/// Whether `lines` match the `sample` (both masked); a sample line that is
/// `...` alone matches any number of lines.
pub fn matches(sample: &[String], lines: &[String]) -> bool {
    match sample.split_first() {
        None => lines.is_empty(),
        Some((p, rest)) if p.trim() == "..." => {
            (0..=lines.len()).any(|skip| matches(rest, &lines[skip..]))
        }
        Some((p, rest)) => {
            !lines.is_empty() && line_matches(p, &lines[0]) && matches(rest, &lines[1..])
        }
    }
}

/// What the tour leaves when it stops early: its daemon (a job of the
/// session), its pins, namespace, cgroups and files.
const CLEANUP: &str = r#"
__tour_cleanup() {
    for p in $(jobs -p); do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    target/release/egress-monitor uninstall --force --pin-dir /sys/fs/bpf/egress-tour >/dev/null 2>&1
    rm -rf /sys/fs/bpf/egress-tour
    ip netns del egress-tour 2>/dev/null
    cg=$(findmnt -t cgroup2 -no TARGET | head -1)
    if [ -d "$cg/egress-tour.slice" ]; then
        echo 1 > "$cg/egress-tour.slice/cgroup.kill" 2>/dev/null
        for d in "$cg"/egress-tour.slice/*/ "$cg/egress-tour.slice"; do rmdir "$d" 2>/dev/null; done
    fi
    rm -rf /tmp/egress-tour /tmp/egress-tour.log /tmp/egress-tour-evidence.tar /tmp/egress-tour-baseline.yaml
}
trap __tour_cleanup EXIT
"#;

/// Marks the output of step `i` in the session's output.
fn marker(i: usize) -> String {
    format!("@@egress-tour-step-{i}@@")
}

/// Runs the tour in `root` and compares every step's output with its
/// sample; says which differ, with both.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let readme = root.join("README.md");
    let text = std::fs::read_to_string(&readme)
        .with_context(|| format!("reading {}", readme.display()))?;
    let steps = steps(&text)?;
    let mut script = String::from(CLEANUP);
    script.push_str("__tour_cleanup\n");
    for (i, step) in steps.iter().enumerate() {
        // A reader's pace: what a command set off (an event on its way
        // to the daemon) has arrived when the next one is typed; `$?`
        // carries over the pause and the marker, as `echo $?` expects.
        script.push_str(&format!(
            "__tour_status=$?\nsleep 0.5\necho '{}'\n(exit $__tour_status)\n{}\n",
            marker(i),
            step.command
        ));
    }
    script.push_str(&format!("echo '{}'\n", marker(steps.len())));
    let mut child = Command::new("timeout")
        .args([
            "--kill-after=10",
            &LIMIT.as_secs().to_string(),
            "bash",
            "-s",
        ])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting bash for the tour")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("exec 2>&1\n{script}").as_bytes())?;
    let out = child.wait_with_output()?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (from, to) = (marker(i), marker(i + 1));
        let Some(start) = output.find(&from) else {
            failures.push(format!(
                "README.md:{}: `{}` never ran (the tour stopped before it)",
                step.line, step.command
            ));
            break;
        };
        let body = &output[start + from.len()..];
        let body = &body[..body.find(&to).unwrap_or(body.len())];
        let got: Vec<String> = body.trim_matches('\n').lines().map(masked).collect();
        let got = if got == [""] { Vec::new() } else { got };
        let want: Vec<String> = step.sample.iter().map(|l| masked(l)).collect();
        if !matches(&want, &got) {
            failures.push(format!(
                "README.md:{}: `{}` printed\n{}\n-- where the README shows\n{}",
                step.line,
                step.command,
                body.trim_matches('\n'),
                step.sample.join("\n")
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "the README's tour no longer matches what the commands print ({} of {} steps):\n\n{}",
            failures.len(),
            steps.len(),
            failures.join("\n\n")
        );
    }
    eprintln!(
        "docs-check: the README's tour matches ({} commands)",
        steps.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(masked).collect()
    }

    #[test]
    fn steps_are_commands_with_their_samples() {
        let text = "intro\n<!-- tour -->\ntext\n```console\n$ a \\\n  --b\nout 1\nout 2\n$ c\n```\n```sh\n$ not a step\n```\n<!-- /tour -->\n";
        let s = steps(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].command, "a \\\n  --b");
        assert_eq!(s[0].sample, ["out 1", "out 2"]);
        assert_eq!(s[0].line, 5);
        assert_eq!((s[1].command.as_str(), s[1].sample.len()), ("c", 0));
        assert!(steps("no markers").is_err());
    }

    #[test]
    fn volatile_parts_are_masked() {
        assert_eq!(
            masked("2026-12-04T03:37:57.444Z denied   bash[24938]   sha256 0123456789abcdef0123"),
            "<time> denied bash[<pid>] sha256 <hex>"
        );
    }

    #[test]
    fn ellipses_stand_for_text_and_lines() {
        let want = lines("a ... c\n...\nz");
        assert!(matches(&want, &lines("a b c\nx\ny\nz")));
        assert!(matches(&want, &lines("a b  b c\nz")));
        assert!(!matches(&want, &lines("a b d\nz")));
        assert!(!matches(&want, &lines("a b c")));
        assert!(!matches(&lines("exact"), &lines("exact\nmore")));
    }
}
