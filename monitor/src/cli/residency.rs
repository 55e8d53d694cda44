//! `egress-monitor test -- COMMAND`: a residency test for a CI job. COMMAND
//! (a connector's integration tests, a container's smoke test) runs in a
//! fresh cgroup of its own under one policy, judged by a daemon of its own
//! attached to that cgroup only (its own state, socket and pins: a node's
//! daemon, if any, is not touched); when COMMAND and everything it started
//! are done, the daemon stops, and the report lists every destination
//! reached or attempted, by verdict, from the daemon's store.
//!
//! Exit status: COMMAND's own when it failed; otherwise [`VIOLATION`] when
//! anything was denied or would be denied; 0 when all was allowed;
//! [`OWN_FAILURE`] when the test itself could not be run.
use std::{
    ffi::{CString, OsString},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, ExitCode, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;

use super::output::Format;
use crate::{
    api::{client::ConnectArgs, pb},
    policy::{self, Mode},
};

/// Exit status when COMMAND succeeded but something was denied or would be.
pub const VIOLATION: u8 = 3;
/// Exit status when the test could not be run (no root, a bad policy, the
/// daemon would not start).
pub const OWN_FAILURE: u8 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Monitor,
    Enforce,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The policy file or directory; it must hold one policy, or name one
    /// with --policy-name. Its selector is replaced by the test's cgroup.
    #[arg(long, default_value = super::daemon::DEFAULT_POLICIES, value_name = "FILE|DIR")]
    pub policy: PathBuf,
    /// Which policy of --policy, when it holds several.
    #[arg(long, value_name = "NAME")]
    pub policy_name: Option<String>,
    /// Judge in this mode instead of the policy's own: `monitor` lets
    /// everything through and reports what would be denied.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Also write the report as JUnit XML (one test case per destination,
    /// a failure for each denied or would-be-denied one).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// The country database.
    #[arg(long, default_value = super::daemon::DEFAULT_GEOIP, env = "EGRESS_MONITOR_GEOIP")]
    pub geoip: PathBuf,
    /// The cloud providers' ranges (see `daemon --help`) [default: the
    /// daemon's, when it exists].
    #[arg(long, value_name = "DIR", env = "EGRESS_MONITOR_CLOUD_RANGES")]
    pub cloud_ranges: Option<PathBuf>,
    /// Resolvers whose answers teach names (see `daemon --help`).
    #[arg(long, value_name = "CIDR")]
    pub dns_resolver: Vec<ipnetwork::IpNetwork>,
    /// Also learn names from resolvers on loopback (see `daemon --help`).
    #[arg(long)]
    pub dns_trust_loopback: bool,
    /// Seconds to wait, once COMMAND exited, for what it started in its
    /// cgroup to end; what still runs then is killed (and said so).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub linger: u64,
    /// The cgroup under which the test's cgroup is made [default: the
    /// cgroup2 mount].
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// What the test made, removed on every way out (an error, a panic, a
/// signal handled by `run`): COMMAND's cgroup and everything in it, the
/// daemon, its pins and its state.
struct Made {
    cgroup: PathBuf,
    pin_dir: PathBuf,
    work: PathBuf,
    daemon: Option<Child>,
}

impl Made {
    fn stop_daemon(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.daemon.take()?;
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let _ = kill_cgroup(&self.cgroup);
        self.stop_daemon();
        if self.pin_dir.exists() {
            if let Ok(exe) = std::env::current_exe() {
                let _ = std::process::Command::new(exe)
                    .args(["uninstall", "--force", "--pin-dir"])
                    .arg(&self.pin_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Ends every process in `cgroup` (cgroup.kill) and waits, bounded, until
/// it is empty.
fn kill_cgroup(cgroup: &Path) -> std::io::Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    std::fs::write(cgroup.join("cgroup.kill"), b"1")?;
    wait_empty(cgroup, Duration::from_secs(5));
    Ok(())
}

/// Whether `cgroup` has no process left, waiting up to `limit`.
fn wait_empty(cgroup: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let populated = std::fs::read_to_string(cgroup.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false);
        if !populated {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one policy to judge with, and its YAML with the selector replaced
/// by `cgroup` (relative to the mount) and the mode by `mode`.
fn test_policy(
    path: &Path,
    name: Option<&str>,
    cgroup: &str,
    mode: Option<ModeArg>,
) -> anyhow::Result<(String, Mode, String)> {
    let (files, dir) = if path.is_dir() {
        let files = policy::policy_files(path)
            .map_err(|e| anyhow::anyhow!("reading policy directory {}: {e}", path.display()))?;
        (files, Some(path))
    } else {
        (vec![path.to_path_buf()], None)
    };
    let mut all = Vec::new();
    for f in &files {
        let compiled = match dir {
            Some(dir) => policy::compile_dir_file(dir, f),
            None => policy::compile_file(f),
        };
        all.extend(compiled.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    policy::check_unique_names(&all).map_err(|e| anyhow::anyhow!("{e}"))?;
    let names = || {
        all.iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match name {
        Some(n) => all.iter().find(|p| p.name == n).with_context(|| {
            format!(
                "no policy {n:?} in {} (it has: {})",
                path.display(),
                names()
            )
        })?,
        None if all.len() == 1 => &all[0],
        None if all.is_empty() => bail!("{} holds no policy", path.display()),
        None => bail!(
            "{} holds {} policies ({}): name the one to test with --policy-name",
            path.display(),
            all.len(),
            names()
        ),
    };
    let text = std::fs::read_to_string(&chosen.file)
        .with_context(|| format!("reading {}", chosen.file))?;
    let doc = policy::model::documents(&text)
        .into_iter()
        .find_map(|d| {
            let v: serde_norway::Value = serde_norway::from_str(d.text).ok()?;
            (v["metadata"]["name"].as_str() == Some(chosen.name.as_str())).then_some(v)
        })
        .with_context(|| format!("policy {} not found again in {}", chosen.name, chosen.file))?;
    let mode = match mode {
        Some(ModeArg::Monitor) => Mode::Monitor,
        Some(ModeArg::Enforce) => Mode::Enforce,
        None => chosen.mode,
    };
    let mut doc = doc;
    let spec = doc
        .get_mut("spec")
        .and_then(|s| s.as_mapping_mut())
        .context("the policy has no spec")?;
    let mut selector = serde_norway::Mapping::new();
    selector.insert(
        "cgroupPaths".into(),
        serde_norway::Value::Sequence(vec![cgroup.into()]),
    );
    spec.insert("selector".into(), serde_norway::Value::Mapping(selector));
    spec.insert("mode".into(), mode.to_string().into());
    let yaml = serde_norway::to_string(&doc).context("writing the test's policy")?;
    Ok((chosen.name.clone(), mode, yaml))
}

/// Moves the calling process into `procs` (a cgroup.procs path) before it
/// execs: only raw calls, as between fork and exec.
fn into_cgroup(cmd: &mut std::process::Command, procs: &Path) -> anyhow::Result<()> {
    let path = CString::new(procs.as_os_str().as_encoded_bytes())?;
    // SAFETY: the closure runs in the child between fork and exec and
    // makes only async-signal-safe calls (open, write, close) on memory
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    match test(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("egress-monitor test: {}", super::error_chain(&e));
            Ok(ExitCode::from(OWN_FAILURE))
        }
    }
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "it loads eBPF programs and makes a cgroup, which needs root: run it as root \
             (in CI: sudo -E egress-monitor test ...)"
        );
    }
    let mount = crate::cgroups::find_cgroup2_mount().map_err(|e| {
        anyhow::anyhow!("{e}: egress-monitor test runs COMMAND in a cgroup v2 cgroup of its own")
    })?;
    let parent = args.cgroup_parent.clone().unwrap_or_else(|| mount.clone());
    let id = std::process::id();
    let cgroup = parent.join(format!("egress-test-{id}"));
    let rel = crate::cgroups::relative(&mount, &cgroup).with_context(|| {
        format!(
            "--cgroup-parent {} is not inside the cgroup2 mount {}",
            parent.display(),
            mount.display()
        )
    })?;
    let (name, mode, yaml) =
        test_policy(&args.policy, args.policy_name.as_deref(), &rel, args.mode)?;
    if !args.geoip.exists() {
        bail!(
            "the country database {} does not exist (--geoip)",
            args.geoip.display()
        );
    }
    note_signals();
    let work = PathBuf::from(format!("/run/egress-monitor-test-{id}"));
    let mut made = Made {
        cgroup: cgroup.clone(),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/egress-test-{id}")),
        work: work.clone(),
        daemon: None,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .with_context(|| format!("making {}", work.display()))?;
    }
    std::fs::create_dir(work.join("policies"))?;
    std::fs::write(work.join("policies/test.yaml"), yaml)?;
    std::fs::create_dir(&cgroup)
        .with_context(|| format!("making the cgroup {}", cgroup.display()))?;

    let exe = std::env::current_exe().context("finding this program")?;
    let log = std::fs::File::create(work.join("daemon.log"))?;
    let state = work.join("state");
    let mut daemon = std::process::Command::new(&exe);
    daemon
        .arg("daemon")
        .arg("--cgroup-root")
        .arg(&cgroup)
        .arg("--policies")
        .arg(work.join("policies"))
        .arg("--geoip")
        .arg(&args.geoip)
        .arg("--state-dir")
        .arg(&state)
        .arg("--pin-dir")
        .arg(&made.pin_dir)
        .args(["--detach-on-exit", "--require-policies"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C at the terminal reaches COMMAND,
        // and the daemon is stopped by us once the report is safe.
        .process_group(0);
    if let Some(dir) = super::daemon::cloud_dir_or_default(args.cloud_ranges.as_deref()) {
        daemon.arg("--cloud-ranges").arg(dir);
    }
    if args.dns_trust_loopback {
        daemon.arg("--dns-trust-loopback");
    }
    for r in &args.dns_resolver {
        daemon.arg("--dns-resolver").arg(r.to_string());
    }
    made.daemon = Some(daemon.spawn().context("starting the test's daemon")?);
    let connect = ConnectArgs {
        socket: Some(state.join("egress-monitor.sock")),
        ..ConnectArgs::default()
    };
    let ready = super::block_on(super::status::wait_for_status(&connect, 120));
    let got = GOT.load(Ordering::SeqCst);
    if got != 0 {
        eprintln!("egress-monitor test: interrupted (signal {got}) before COMMAND ran");
        drop(made);
        return Ok(ExitCode::from(128 + got as u8));
    }
    if let Err(e) = ready {
        let log = std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "the test's daemon did not start: {e:#}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    // COMMAND, in the test's cgroup from its first instruction.
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    into_cgroup(&mut cmd, &cgroup.join("cgroup.procs"))?;
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!(
                "egress-monitor test: cannot run {}: {e}",
                args.command[0].to_string_lossy()
            );
            return Ok(ExitCode::from(code));
        }
    };
    let interrupted = wait_handling_signals(&mut child, &cgroup)?;
    let status = child.wait()?;
    let lingered = if interrupted.is_some() {
        kill_cgroup(&cgroup)?;
        false
    } else if !wait_empty(&cgroup, Duration::from_secs(args.linger)) {
        kill_cgroup(&cgroup)?;
        true
    } else {
        false
    };
    let took = started.elapsed();
    // The kernel's loss, asked before the daemon stops; then the daemon's
    // last harvest and flush, and the report from its store.
    let lost = super::block_on(super::status::get_status(&connect))
        .ok()
        .and_then(|s| s.counters)
        .map_or(0, |c| c.lost_in_kernel);
    let stopped = made.stop_daemon();
    if !stopped.is_some_and(|s| s.success()) {
        bail!(
            "the test's daemon did not stop cleanly ({stopped:?}); its log: {}",
            work.join("daemon.log").display()
        );
    }
    let flows = crate::api::history::query_flows(
        &state.join("store.db"),
        pb::QueryFlowsRequest {
            group_by: [
                "destination",
                "port",
                "protocol",
                "verdict",
                "name",
                "country",
                "cloud",
            ]
            .map(String::from)
            .to_vec(),
            limit: 100_000,
            ..Default::default()
        },
    )
    .map_err(|s| anyhow::anyhow!("reading the test's store: {}", s.message()))?
    .flows;
    let report = Report {
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        policy: name,
        mode,
        status,
        seconds: took.as_secs_f64(),
        lingered,
        lost,
        flows,
    };
    report.print(args.output)?;
    if let Some(path) = &args.junit {
        std::fs::write(path, report.junit())
            .with_context(|| format!("writing the JUnit report {}", path.display()))?;
    }
    drop(made);
    if let Some(signal) = interrupted {
        return Ok(ExitCode::from(128 + signal as u8));
    }
    Ok(report.exit_code())
}

/// The SIGINT or SIGTERM this process received, 0 for none.
static GOT: AtomicI32 = AtomicI32::new(0);

/// From here on SIGINT and SIGTERM are noted instead of ending the process
/// at once, so what the test made is removed on the way out.
fn note_signals() {
    extern "C" fn note(signal: libc::c_int) {
        GOT.store(signal, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, note as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, note as *const () as libc::sighandler_t);
    }
}

/// Waits for COMMAND; SIGINT and SIGTERM to this process are passed on to
/// it, and what still runs in `cgroup` 5 s later is killed. Returns the
/// signal that interrupted the test, if any.
fn wait_handling_signals(child: &mut Child, cgroup: &Path) -> anyhow::Result<Option<i32>> {
    let mut passed: Option<Instant> = None;
    loop {
        if child.try_wait()?.is_some() {
            let got = GOT.load(Ordering::SeqCst);
            return Ok((got != 0).then_some(got));
        }
        let got = GOT.load(Ordering::SeqCst);
        match passed {
            None if got != 0 => {
                // SAFETY: kill has no memory preconditions; the pid is our child's.
                unsafe { libc::kill(child.id() as i32, got) };
                passed = Some(Instant::now());
            }
            Some(at) if at.elapsed() > Duration::from_secs(5) => {
                kill_cgroup(cgroup)?;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the test saw.
struct Report {
    command: Vec<String>,
    policy: String,
    mode: Mode,
    status: std::process::ExitStatus,
    seconds: f64,
    lingered: bool,
    lost: u64,
    flows: Vec<pb::Flow>,
}

/// The verdicts, in the order the report gives them.
const VERDICTS: [(&str, &str); 3] = [
    ("denied", "DENIED"),
    ("would_deny", "WOULD BE DENIED (monitor mode: let through)"),
    ("allowed", "ALLOWED"),
];

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

impl Report {
    fn violations(&self) -> usize {
        self.flows.iter().filter(|f| f.verdict != "allowed").count()
    }

    /// The command as a shell would take it back.
    fn command_line(&self) -> String {
        self.command
            .iter()
            .map(|a| {
                let plain = !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
                if plain {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', "'\\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn exit_code(&self) -> ExitCode {
        match self.status.code() {
            Some(0) if self.violations() > 0 => ExitCode::from(VIOLATION),
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(code as u8),
            None => ExitCode::from(128 + self.status.signal().unwrap_or(0) as u8),
        }
    }

    fn exited(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "ended".into(),
        }
    }

    fn print(&self, output: Format) -> anyhow::Result<()> {
        if output == Format::Json {
            let v = serde_json::json!({
                "command": self.command,
                "policy": self.policy,
                "mode": self.mode.to_string(),
                "exit_code": self.status.code(),
                "signal": self.status.signal(),
                "seconds": self.seconds,
                "lingered": self.lingered,
                "lost_in_kernel": self.lost,
                "violations": self.violations(),
                "destinations": self.flows,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!(
            "residency test of `{}` under policy {} ({}): the command {} after {:.1} s",
            self.command_line(),
            self.policy,
            self.mode,
            self.exited(),
            self.seconds
        );
        if self.lingered {
            println!("processes it started were still running afterwards: killed");
        }
        if self.lost > 0 {
            println!(
                "WARNING: the kernel lost {} events: destinations may be missing below",
                self.lost
            );
        }
        if self.flows.is_empty() {
            println!("no outbound connection was attempted");
        }
        for (verdict, title) in VERDICTS {
            let rows: Vec<&pb::Flow> = self.flows.iter().filter(|f| f.verdict == verdict).collect();
            if rows.is_empty() {
                continue;
            }
            println!("\n{title}: {}", rows.len());
            println!(
                "  {:<30} {:<30} {:<8} {:<22} {:>8}",
                "NAME", "DESTINATION", "COUNTRY", "CLOUD REGION", "COUNT"
            );
            for f in rows {
                println!(
                    "  {:<30} {:<30} {:<8} {:<22} {:>8}",
                    or_dash(&f.dns_name),
                    f.destination(),
                    or_dash(&f.country),
                    or_dash(&f.cloud_region),
                    f.count
                );
            }
        }
        let v = self.violations();
        if v > 0 {
            println!(
                "\nresidency violated: {v} destination{} outside what policy {} allows",
                if v == 1 { "" } else { "s" },
                self.policy
            );
        }
        Ok(())
    }

    /// JUnit XML: one test case per destination, a failure for each one
    /// denied or that would be denied.
    fn junit(&self) -> String {
        let mut cases = String::new();
        for f in &self.flows {
            let name = match f.dns_name.as_str() {
                "" => f.destination(),
                n => format!("{n} ({})", f.destination()),
            };
            let place = format!(
                "{}{}",
                or_dash(&f.country),
                match f.cloud_region.as_str() {
                    "" => String::new(),
                    c => format!(" {c}"),
                }
            );
            cases.push_str(&format!(
                "    <testcase classname=\"egress.{}\" name=\"{}\" time=\"0\">\n",
                xml(&self.policy),
                xml(&name)
            ));
            if f.verdict != "allowed" {
                cases.push_str(&format!(
                    "      <failure type=\"{}\" message=\"{}\">{} attempts to {} ({place}), {} by policy {}</failure>\n",
                    xml(&f.verdict),
                    xml(&format!("{name} in {place} is outside what policy {} allows", self.policy)),
                    f.count,
                    xml(&name),
                    if f.verdict == "denied" { "refused" } else { "not refused (monitor mode)" },
                    xml(&self.policy),
                ));
            }
            cases.push_str("    </testcase>\n");
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"egress residency: {}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">\n    <properties>\n      <property name=\"command\" value=\"{}\"/>\n      <property name=\"mode\" value=\"{}\"/>\n      <property name=\"exit\" value=\"{}\"/>\n      <property name=\"lost_in_kernel\" value=\"{}\"/>\n    </properties>\n{cases}  </testsuite>\n</testsuites>\n",
            xml(&self.policy),
            self.flows.len(),
            self.violations(),
            self.seconds,
            xml(&self.command_line()),
            self.mode,
            xml(&self.exited()),
            self.lost,
        )
    }
}

/// Text made safe for an XML attribute or element.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(verdict: &str, ip: &str, name: &str) -> pb::Flow {
        pb::Flow {
            dst_ip: ip.into(),
            dst_port: 443,
            protocol: "tcp".into(),
            verdict: verdict.into(),
            country: "US".into(),
            dns_name: name.into(),
            count: 2,
            ..Default::default()
        }
    }

    fn report(code: i32, flows: Vec<pb::Flow>) -> Report {
        Report {
            command: vec!["pytest".into(), "-k".into(), "a<b".into()],
            policy: "eu".into(),
            mode: Mode::Enforce,
            status: std::process::ExitStatus::from_raw(code << 8),
            seconds: 1.0,
            lingered: false,
            lost: 0,
            flows,
        }
    }

    /// The command's own failure first, then a violation, then success.
    #[test]
    fn exit_status_says_what_failed() {
        let bad = || vec![flow("denied", "203.0.113.2", "")];
        assert_eq!(report(0, vec![]).exit_code(), ExitCode::SUCCESS);
        assert_eq!(report(0, bad()).exit_code(), ExitCode::from(VIOLATION));
        assert_eq!(report(7, bad()).exit_code(), ExitCode::from(7));
        let would = vec![flow("would_deny", "2001:db8::1", "")];
        assert_eq!(report(0, would).exit_code(), ExitCode::from(VIOLATION));
    }

    /// One case per destination, failures for the violations, and text
    /// from the command line and the names escaped.
    #[test]
    fn junit_has_a_case_per_destination_and_fails_the_violations() {
        let r = report(
            0,
            vec![
                flow("allowed", "198.51.100.2", "ok.test"),
                flow("denied", "203.0.113.2", "a&b.test"),
                flow("would_deny", "2001:db8::1", ""),
            ],
        );
        let x = r.junit();
        assert_eq!(x.matches("<testcase ").count(), 3, "{x}");
        assert_eq!(x.matches("<failure ").count(), 2, "{x}");
        assert!(x.contains("tests=\"3\" failures=\"2\""), "{x}");
        assert!(
            x.contains("name=\"a&amp;b.test (203.0.113.2:443/tcp)\""),
            "{x}"
        );
        assert!(x.contains("name=\"[2001:db8::1]:443/tcp\""), "{x}");
        assert!(x.contains("value=\"pytest -k &apos;a&lt;b&apos;\""), "{x}");
        assert!(!x.contains("a&b"), "{x}");
    }

    /// The selector is the test's cgroup whatever the policy selected, and
    /// --mode overrides the policy's mode.
    #[test]
    fn the_policy_judges_the_tests_cgroup() {
        let dir = std::env::temp_dir().join(format!("emt-residency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: a}\nspec:\n  mode: enforce\n  selector: {pods: [\"1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506\"]}\n  allow: {countries: [DE]}\n---\napiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: b}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/x\"]}\n  allow: {countries: [FR]}\n",
        )
        .unwrap();
        let e = test_policy(&dir, None, "/egress-test-1", None).unwrap_err();
        assert!(
            e.to_string()
                .contains("holds 2 policies (a, b): name the one"),
            "{e}"
        );
        let e = test_policy(&dir, Some("c"), "/egress-test-1", None).unwrap_err();
        assert!(e.to_string().contains("no policy \"c\""), "{e}");
        let (name, mode, yaml) =
            test_policy(&dir, Some("a"), "/egress-test-1", Some(ModeArg::Monitor)).unwrap();
        assert_eq!((name.as_str(), mode), ("a", Mode::Monitor));
        let p = &policy::compile_text(Path::new("t.yaml"), &yaml).unwrap()[0];
        assert_eq!(p.cgroup_globs, ["/egress-test-1"]);
        assert!(p.pods.is_empty(), "the pod selector is gone: {yaml}");
        assert_eq!(p.mode, Mode::Monitor);
        assert!(p.allowed_countries.contains("DE"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
