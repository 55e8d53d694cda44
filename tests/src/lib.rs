//! Harness for the privileged integration tests: each `TestEnv` creates its
//! own cgroups, a network namespace with test hosts on documentation
//! addresses behind a veth pair, a test GeoIP database, a policy directory
//! and a daemon attached to its own cgroup, and removes all of it on drop,
//! also when a test fails.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod loopback;
pub mod nats;

/// Test hosts inside the namespace, and the countries the test database
/// gives them. Never 192.0.2.0/24: the machines' own network lives there.
pub const DE_V4: &str = "198.51.100.2";
pub const US_V4: &str = "203.0.113.2";
pub const DE_V6: &str = "2001:db8:de::2";
pub const US_V6: &str = "2001:db8:5::2";
pub const US_MAPPED: &str = "::ffff:203.0.113.2";
/// Second hosts on each side: another destination, so a test can make a
/// first attempt again (the kernel counts repeats of a destination in its
/// flow table instead of reporting each).
pub const US2_V4: &str = "203.0.113.3";
pub const US2_V6: &str = "2001:db8:5::3";
pub const DE2_V4: &str = "198.51.100.3";
pub const DE_MAPPED: &str = "::ffff:198.51.100.2";
pub const PORT: u16 = 8080;
/// The test server serves TCP and UDP on this many ports from `PORT` up.
pub const SERVE_PORTS: u16 = 16;

const CLIENT_ADDRS: [&str; 4] = [
    "198.51.100.1/24",
    "203.0.113.1/24",
    "2001:db8:de::1/64",
    "2001:db8:5::1/64",
];
const NS_ADDRS: [&str; 7] = [
    "198.51.100.2/24",
    "203.0.113.2/24",
    "2001:db8:de::2/64",
    "2001:db8:5::2/64",
    "203.0.113.3/24",
    "2001:db8:5::3/64",
    "198.51.100.3/24",
];

/// Sources the workload uses towards the US test hosts.
pub const US_SOURCES: [&str; 2] = ["203.0.113.1", "2001:db8:5::1"];

/// Whether what the test server printed came from the workload's US-side
/// addresses: a TCP accept names its peer in `accepted`, a datagram or
/// stream data in `from`.
pub fn from_us_side(v: &Value) -> bool {
    let from = v["from"].as_str().or(v["accepted"].as_str()).unwrap_or("");
    US_SOURCES
        .iter()
        .any(|s| from == *s || from.ends_with(&format!(":{s}")))
}

/// Networks and countries of the test database.
pub const TEST_DB: [(&str, &str); 4] = [
    ("198.51.100.0/24", "DE"),
    ("203.0.113.0/24", "US"),
    ("2001:db8:de::/48", "DE"),
    ("2001:db8:5::/48", "US"),
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The repository's root (deploy/, policies/, docs/ live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

pub fn cgroup2_mount() -> PathBuf {
    monitor::cgroups::find_cgroup2_mount().expect("cgroup v2 is mounted")
}

fn bin_dir() -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn daemon_bin() -> PathBuf {
    std::env::var_os("EGRESS_MONITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("egress-monitor"))
}

pub fn probe_bin() -> PathBuf {
    bin_dir().join("probe")
}

/// The load generator (`src/bin/loadgen.rs`).
pub fn loadgen_bin() -> PathBuf {
    bin_dir().join("loadgen")
}

/// The DNS server and resolve-then-connect client (`src/bin/dnsprobe`).
pub fn dnsprobe_bin() -> PathBuf {
    bin_dir().join("dnsprobe")
}

/// The test hosts' resolver: `dnsprobe serve` inside the test hosts'
/// namespace (port 53 of the DE test address), ended on drop.
pub struct DnsServer {
    child: Child,
    pub addr: String,
    /// What the server printed: one line per query it received.
    pub queries: Arc<Mutex<Vec<Value>>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw gRPC client (`src/bin/grpc_call.rs`).
pub fn grpc_call_bin() -> PathBuf {
    bin_dir().join("grpc-call")
}

pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests need root: run `cargo xtask test` as root"
    );
}

/// Result of one probe run.
#[derive(Debug, Clone)]
pub struct Probe {
    pub ok: bool,
    pub errno: i64,
    pub pid: u64,
    pub raw: Value,
}

pub struct TestEnv {
    pub id: String,
    /// The test hosts' namespace.
    pub netns: String,
    /// The workload's namespace: the probes run here, so nothing a test
    /// sends touches the machine's own network namespace.
    pub client_ns: String,
    pub cgroup_root: PathBuf,
    pub mount: PathBuf,
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    server: Option<Child>,
    received: Arc<Mutex<Vec<Value>>>,
    /// Where the daemon attaches (default: `cgroup_root`).
    pub attach_root: Option<PathBuf>,
    /// RLIMIT_NOFILE (soft and hard) the daemon starts with (default: the
    /// test's own).
    pub daemon_nofile: Option<u64>,
    events_rx: Option<mpsc::Receiver<Value>>,
    pub seen: Vec<Value>,
    log: Arc<Mutex<String>>,
    /// The next of the test server's ports `fresh_port` hands out.
    next_port: std::sync::atomic::AtomicU16,
}

impl TestEnv {
    /// Network namespace, veth, cgroups and test database; no daemon yet.
    #[allow(clippy::new_without_default)] // it creates kernel objects
    pub fn new() -> Self {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:x}", std::process::id() * 16 + n);
        let mount = cgroup2_mount();
        let mut env = TestEnv {
            netns: format!("emt-{id}"),
            client_ns: format!("emc-{id}"),
            cgroup_root: mount.join(format!("emt-{id}")),
            mount,
            id,
            dir: tempfile::tempdir().expect("tempdir"),
            daemon: None,
            server: None,
            received: Arc::new(Mutex::new(Vec::new())),
            attach_root: None,
            daemon_nofile: None,
            events_rx: None,
            seen: Vec::new(),
            log: Arc::new(Mutex::new(String::new())),
            next_port: std::sync::atomic::AtomicU16::new(PORT + 1),
        };
        // Traversable by the unprivileged users of the access tests.
        std::fs::set_permissions(
            env.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        env.setup_network();
        for sub in ["", "sel", "unsel"] {
            std::fs::create_dir_all(env.cgroup_root.join(sub)).expect("create test cgroup");
        }
        std::fs::create_dir_all(env.policy_dir()).unwrap();
        std::fs::write(env.geoip(), monitor::geo::writer::country_code_db(&TEST_DB)).unwrap();
        env
    }

    fn setup_network(&mut self) {
        let (ns, cns) = (self.netns.clone(), self.client_ns.clone());
        let h = format!("emh{}", self.id);
        let peer = format!("emn{}", self.id);
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "netns", "add", &cns]);
        sh(&[
            "ip", "-n", &cns, "link", "add", &h, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "-n", &cns, "link", "set", &peer, "netns", &ns]);
        for a in CLIENT_ADDRS {
            let mut args = vec!["ip", "-n", &cns, "addr", "add", a, "dev", &h];
            if a.contains(':') {
                args.push("nodad");
            }
            sh(&args);
        }
        sh(&["ip", "-n", &cns, "link", "set", &h, "up"]);
        sh(&["ip", "-n", &cns, "link", "set", "lo", "up"]);
        for a in NS_ADDRS {
            let mut args = vec!["ip", "-n", &ns, "addr", "add", a, "dev", &peer];
            if a.contains(':') {
                args.push("nodad");
            }
            sh(&args);
        }
        sh(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // Nothing is sent unless every test address routes through our link.
        for addr in [DE_V4, US_V4, DE_V6, US_V6, US2_V4, US2_V6, DE2_V4] {
            let route = sh(&["ip", "-n", &cns, "route", "get", addr]);
            assert!(
                route.contains(&format!("dev {h} ")),
                "test address {addr} does not route through the test link {h}: {route}; refusing to send"
            );
        }
        // The server inside the namespace, bounded in time.
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(probe_bin())
            .args(["serve", &PORT.to_string(), "300"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start test server");
        let mut reader = BufReader::new(server.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.contains("serving"),
            "test server did not start: {line}"
        );
        // What reaches the test hosts, for proving that nothing did.
        let received = self.received.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    received.lock().unwrap().push(v);
                }
            }
        });
        self.server = Some(server);
        // Ping sockets for root in the workload's namespace.
        sh(&[
            "ip",
            "netns",
            "exec",
            &cns,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
    }

    /// Everything the test hosts received so far (accepted connections,
    /// stream data, datagrams, ICMP echo requests), as the server printed it.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// The daemon's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("state/egress-monitor.sock")
    }

    /// Runs the CLI against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(daemon_bin())
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("run CLI")
    }

    /// Runs the CLI on this daemon's socket; it must succeed. Returns its
    /// standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A gRPC client on this daemon's socket.
    pub async fn client(
        &self,
    ) -> monitor::api::pb::egress_monitor_client::EgressMonitorClient<tonic::transport::Channel>
    {
        let args = monitor::api::client::ConnectArgs {
            socket: Some(self.socket()),
            server: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_server_name: None,
        };
        monitor::api::client::connect(&args)
            .await
            .expect("connect to the daemon socket")
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// This environment's pin directory in bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/emt-{}", self.id))
    }

    pub fn geoip(&self) -> PathBuf {
        self.dir.path().join("test.mmdb")
    }

    /// The cloud-range directory the daemon gets when a test gives none
    /// (empty until a test writes into it; `spawn_daemon` makes it).
    pub fn no_cloud_dir(&self) -> PathBuf {
        self.dir.path().join("no-cloud-ranges")
    }

    /// The selector path (relative to the cgroup2 mount) of a test cgroup.
    pub fn rel(&self, sub: &str) -> String {
        let p = if sub.is_empty() {
            self.cgroup_root.clone()
        } else {
            self.cgroup_root.join(sub)
        };
        monitor::cgroups::relative(&self.mount, &p).unwrap()
    }

    pub fn cgroup(&self, sub: &str) -> PathBuf {
        self.cgroup_root.join(sub)
    }

    /// Writes a policy file atomically (write aside, rename).
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policy_dir().join(name)).unwrap();
    }

    /// A policy selecting `sel` with the given mode and allow/deny body.
    pub fn policy(&self, name: &str, mode: &str, sub: &str, body: &str) -> String {
        format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  selector:\n    cgroupPaths: [\"{}\"]\n{body}",
            self.rel(sub)
        )
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Starts the daemon on this environment and waits until it runs.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        self.spawn_daemon(extra);
        self.wait_log("egress-monitor running", Duration::from_secs(30));
    }

    /// Starts the daemon on this environment without waiting for it.
    pub fn spawn_daemon(&mut self, extra: &[&str]) {
        // A fresh log per daemon, emptied before it can write a line.
        self.log.lock().unwrap().clear();
        let mut cmd = Command::new(daemon_bin());
        if let Some(n) = self.daemon_nofile {
            // SAFETY: one setrlimit between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // No cloud snapshot unless a test gives one (`--cloud-ranges` wins
        // over the variable): the daemon's default directory, when a setup
        // installed it, must not change what a test judges.
        let no_cloud = self.no_cloud_dir();
        std::fs::create_dir_all(&no_cloud).unwrap();
        cmd.env("EGRESS_MONITOR_CLOUD_RANGES", &no_cloud);
        let mut child = cmd
            .arg("daemon")
            .arg("--policies")
            .arg(self.policy_dir())
            .arg("--geoip")
            .arg(self.geoip())
            .arg("--cgroup-root")
            .arg(self.attach_root.as_ref().unwrap_or(&self.cgroup_root))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .args(["--log-events", "--rescan-interval", "0.2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start daemon");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("daemon stdout is not JSON ({e}): {line}"),
                }
            }
        });
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        self.daemon = Some(child);
        self.events_rx = Some(rx);
    }

    /// Waits until the daemon's log contains `needle` (bounded).
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            if let Some(d) = self.daemon.as_mut() {
                if let Ok(Some(status)) = d.try_wait() {
                    panic!(
                        "daemon exited ({status}) while waiting for {needle:?}; log:\n{}",
                        self.log()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon log never showed {needle:?}; log:\n{}", self.log());
    }

    /// How many times the log contains `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// The probe as a workload: in the client namespace, in a test cgroup
    /// (moved there before it execs; nsenter execs the probe in the same
    /// process, so the pid and the cgroup carry over).
    pub fn probe_command(&self, sub: &str, args: &[&str]) -> Command {
        self.workload_command(sub, &probe_bin(), args)
    }

    /// `program ARGS` as a workload of cgroup `sub`, in the client
    /// namespace, as `probe_command` runs the probe.
    pub fn workload_command(&self, sub: &str, program: &Path, args: &[&str]) -> Command {
        let procs = self.cgroup(sub).join("cgroup.procs");
        // nsenter joins only the network namespace (`ip netns exec` would
        // also remount /sys, hiding the cgroup tree from the probe).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.client_ns))
            .arg(program)
            .args(args);
        // SAFETY: only async-signal-safe work between fork and exec: one
        // open/write/close through std::fs on a path computed before fork.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, b"0"));
        }
        cmd
    }

    /// Starts the test resolver on `DE_V4:53` in the test hosts' namespace,
    /// answering from `zone` (dnsprobe's zone JSON), for at most 300 s.
    pub fn dns_server(&self, zone: &Value) -> DnsServer {
        let zone_file = self.dir.path().join("zone.json");
        std::fs::write(&zone_file, serde_json::to_vec(zone).unwrap()).unwrap();
        let addr = format!("{DE_V4}:53");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(dnsprobe_bin())
            .args(["serve", "--bind", &addr, "--zone"])
            .arg(&zone_file)
            .args(["--seconds", "300"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test DNS server");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.contains("serving"),
            "test DNS server did not start: {line}"
        );
        let queries = Arc::new(Mutex::new(Vec::new()));
        let q = queries.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    q.lock().unwrap().push(v);
                }
            }
        });
        DnsServer {
            child,
            addr,
            queries,
        }
    }

    /// Runs `dnsprobe ARGS` as a workload of cgroup `sub` in the workload's
    /// namespace, whatever it ends with.
    pub fn dnsprobe_output(&self, sub: &str, args: &[&str]) -> std::process::Output {
        let procs = self.cgroup(sub).join("cgroup.procs");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.client_ns))
            .arg(dnsprobe_bin())
            .args(args);
        // SAFETY: as in `probe_command`.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, b"0"));
        }
        cmd.output().expect("run dnsprobe")
    }

    /// Runs `dnsprobe ARGS` as a workload of cgroup `sub`; it must succeed.
    /// Returns the JSON it printed last.
    pub fn dnsprobe(&self, sub: &str, args: &[&str]) -> Value {
        let out = self.dnsprobe_output(sub, args);
        assert!(
            out.status.success(),
            "dnsprobe {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("dnsprobe {args:?} printed no JSON ({e}): {text}"))
    }

    /// Runs the probe as a workload of cgroup `sub` inside the network
    /// namespace `netns` (one the test made); returns its JSON.
    pub fn probe_in(&self, netns: &str, sub: &str, args: &[&str]) -> Value {
        let procs = self.cgroup(sub).join("cgroup.procs");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg(probe_bin())
            .args(args);
        // SAFETY: as in `probe_command`.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, b"0"));
        }
        let out = cmd.output().expect("run probe");
        assert!(
            out.status.success(),
            "probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("probe output is JSON")
    }

    /// Runs the probe as a workload and reads its result.
    pub fn probe(&self, sub: &str, args: &[&str]) -> Probe {
        let out = self.probe_command(sub, args).output().expect("run probe");
        assert!(
            out.status.success(),
            "probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw: Value = serde_json::from_slice(&out.stdout).expect("probe output is JSON");
        Probe {
            ok: raw["result"] == "ok",
            errno: raw["errno"].as_i64().unwrap_or(0),
            pid: raw["pid"].as_u64().unwrap(),
            raw,
        }
    }

    /// Runs the probe as a workload started under the file name `name`
    /// (a symlink to the probe in the test's directory: the kernel's comm
    /// is the first 15 bytes of it) and reads its raw result.
    pub fn probe_named(&self, sub: &str, name: &str, args: &[&str]) -> Value {
        let named = self.dir.path().join(name);
        if !named.exists() {
            std::os::unix::fs::symlink(probe_bin(), &named).unwrap();
        }
        let cmd = self.probe_command(sub, args);
        // The probe command, started as `name`.
        let cmd_args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
        assert_eq!(cmd_args[1], probe_bin().as_os_str());
        let mut named_cmd = Command::new(cmd.get_program());
        named_cmd.arg(&cmd_args[0]).arg(&named).args(&cmd_args[2..]);
        let procs = self.cgroup(sub).join("cgroup.procs");
        // SAFETY: as in probe_command: one write to a path computed
        // before fork.
        unsafe {
            named_cmd.pre_exec(move || std::fs::write(&procs, b"0"));
        }
        drop(cmd);
        let out = named_cmd.output().unwrap();
        serde_json::from_slice(&out.stdout).expect("probe output is JSON")
    }

    /// Known traffic from `sub`, whose policy allows DE only: `denied` TCP
    /// connections to `US_V4` (each refused), then `allowed` UDP datagrams
    /// to `DE_V4` (each let through). The probes' pids, in that order.
    pub fn denied_then_allowed(&self, sub: &str, denied: usize, allowed: usize) -> Vec<u64> {
        let port = PORT.to_string();
        let mut pids = Vec::new();
        for _ in 0..denied {
            let r = self.probe(sub, &["tcp", US_V4, &port]);
            assert!(!r.ok, "US is refused: {:?}", r.raw);
            pids.push(r.pid);
        }
        for _ in 0..allowed {
            let r = self.probe(sub, &["udp", DE_V4, &port]);
            assert!(r.ok, "DE is allowed: {:?}", r.raw);
            pids.push(r.pid);
        }
        pids
    }

    /// The first event (seen before or arriving within `timeout`) that
    /// matches; panics with what did arrive otherwise.
    pub fn expect_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        // A matched event is consumed: the next expectation needs an event
        // of its own.
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + timeout;
        let rx = self.events_rx.as_ref().expect("daemon started");
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(e) => {
                    if pred(&e) {
                        return e;
                    }
                    self.seen.push(e);
                }
                Err(_) => break,
            }
        }
        panic!(
            "no event {what} within {timeout:?}; events seen: {:#?}\nlog:\n{}",
            self.seen,
            self.log()
        );
    }

    /// Collects events for `wait` and returns those matching.
    pub fn events_within(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let rx = self.events_rx.as_ref().expect("daemon started");
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.seen.iter().filter(|e| pred(e)).cloned().collect()
    }

    /// Kills the daemon with SIGKILL (no chance to clean up).
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `egress-monitor uninstall` for this environment's pins.
    pub fn uninstall(&self) -> std::process::Output {
        Command::new(daemon_bin())
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("run uninstall")
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop_daemon(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_daemon(libc::SIGTERM)
    }

    /// The daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// Sends `signal` to the daemon and returns its exit status (SIGKILL
    /// after 10 s).
    pub fn signal_daemon(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.daemon.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_daemon();
        if self.pin_dir().exists() {
            let out = self.uninstall();
            if !out.status.success() {
                eprintln!("uninstall failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        // No daemon holds this environment's pin-directory lock any more.
        let _ = std::fs::remove_file(monitor::kernel::pins::lock_path(&self.pin_dir()));
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        sh_quiet(&["ip", "netns", "del", &self.netns]);
        sh_quiet(&["ip", "netns", "del", &self.client_ns]);
        // A failed test may leave workloads of its own running in its
        // cgroups: end them (cgroup.kill ends exactly the processes in this
        // test's subtree), then remove the cgroups, deepest first.
        let _ = std::fs::write(self.cgroup_root.join("cgroup.kill"), b"1");
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.cgroup_root.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Nothing of this test stays on the machine: a leak fails the test
        // that made it (not a later one), unless it failed already.
        let left = self.leftovers();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("test {} left behind: {}", self.id, left.join(", "));
        }
    }
}

impl TestEnv {
    /// What of this environment is still on the machine: cgroups, network
    /// namespaces, pins, the pin-directory lock, a daemon.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.cgroup_root.exists() {
            left.push(format!("cgroup {}", self.cgroup_root.display()));
        }
        for ns in [&self.netns, &self.client_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                left.push(format!("network namespace {ns}"));
            }
        }
        if self.pin_dir().exists() {
            left.push(format!("pins {}", self.pin_dir().display()));
        }
        let lock = monitor::kernel::pins::lock_path(&self.pin_dir());
        if lock.exists() {
            left.push(format!("lock file {}", lock.display()));
        }
        if self.daemon.is_some() {
            left.push("the daemon".into());
        }
        left
    }
}

/// A tool of the test virtualenv (`cargo xtask setup` makes it).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("EGRESS_MONITOR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv"));
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup`",
        bin.display()
    );
    bin
}

/// Field accessors for events.
/// Runs `cmd` to its end: its output, and stdout then stderr as text.
pub fn command_output(cmd: &mut Command) -> (std::process::Output, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// Every document of a YAML file, as JSON values: PyYAML from the test
/// virtualenv (kubernetes-validate brings it) parses, JSON crosses over.
pub fn load_yaml(path: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
        print(json.dumps(docs, default=str))\n";
    let out = Command::new(venv_bin("python"))
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running python on {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "parsing {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(docs) => docs,
        other => panic!("{}: not a list of documents: {other}", path.display()),
    }
}

/// The flow table's count `name` in a `status -o json` (`flows` list): a
/// count of 0 is left out of the JSON, the name never is, so None only
/// where `status` has no count of that name.
pub fn flow_count(status: &Value, name: &str) -> Option<u64> {
    let count = status["flows"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?;
    Some(count["count"].as_u64().unwrap_or(0))
}

/// An event's `args`, as strings.
pub fn args_of(e: &Value) -> Vec<String> {
    e["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn s<'a>(e: &'a Value, key: &str) -> &'a str {
    e[key].as_str().unwrap_or("")
}

/// Per CPU, the last number the kernel gave an event in the pinned maps
/// under `pin_dir` (`LOST` at `lost::SEQ`), read with bpftool: the
/// ground truth of how many events the kernel numbered.
pub fn kernel_event_numbers(pin_dir: &Path) -> Vec<u64> {
    let map = std::fs::read_dir(pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|d| d.path().join(monitor_common::names::LOST))
        .find(|p| p.exists())
        .expect("a pinned LOST map");
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&map)
        .args(["key"])
        .args(
            monitor_common::lost::SEQ
                .to_le_bytes()
                .map(|b| b.to_string()),
        )
        .output()
        .expect("bpftool (Debian package)");
    assert!(
        out.status.success(),
        "bpftool map lookup {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let values = v["values"].as_array().expect("per-CPU values").clone();
    values
        .iter()
        .map(|c| match &c["value"] {
            Value::Number(n) => n.as_u64().expect("a counter"),
            // Without BTF: the bytes, little-endian, as hex strings.
            Value::Array(bytes) => bytes.iter().rev().fold(0u64, |acc, b| {
                let b = b.as_str().expect("a hex byte").trim_start_matches("0x");
                (acc << 8) | u64::from_str_radix(b, 16).expect("hex")
            }),
            other => panic!("bpftool value {other}"),
        })
        .collect()
}

/// Names of the programs bpftool shows attached to a cgroup.
pub fn attached_programs(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (Debian package)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Our programs that attach to the cgroup root: every program but the
/// global ones (the LSM hook and the process tracepoints).
pub fn cgroup_programs() -> Vec<&'static str> {
    use monitor_common::names;
    names::ALL_PROGRAMS
        .into_iter()
        .filter(|p| *p != names::PROG_SOCKET_CREATE && !names::PROCESS_PROGRAMS.contains(p))
        .collect()
}

/// How many of our programs bpftool shows among `names` (every copy, so a
/// second copy of any is seen).
pub fn ours(names: &[String]) -> usize {
    let ours = cgroup_programs();
    names.iter().filter(|n| ours.contains(&n.as_str())).count()
}

/// Attaches a program that allows every connect4 to `cgroup` with the legacy
/// BPF_PROG_ATTACH API and the given flags (0, BPF_F_ALLOW_OVERRIDE = 1,
/// BPF_F_ALLOW_MULTI = 2): somebody else trying to undo our verdict. The
/// attachment lives until the cgroup is removed. Returns the errno of the
/// attach, 0 on success.
pub fn attach_permissive_connect4(cgroup: &Path, flags: u32) -> i32 {
    use std::os::fd::AsRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    const BPF_CGROUP_INET4_CONNECT: u32 = 10;
    // r0 = 1; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_CGROUP_INET4_CONNECT.to_ne_bytes());
    // SAFETY: bpf(2) with a fully initialised attribute block.
    let prog = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    assert!(
        prog >= 0,
        "loading the permissive program: {}",
        std::io::Error::last_os_error()
    );
    let dir = std::fs::File::open(cgroup).expect("open cgroup");
    let mut attach = [0u8; 128];
    attach[0..4].copy_from_slice(&(dir.as_raw_fd() as u32).to_ne_bytes());
    attach[4..8].copy_from_slice(&(prog as u32).to_ne_bytes());
    attach[8..12].copy_from_slice(&BPF_CGROUP_INET4_CONNECT.to_ne_bytes());
    attach[12..16].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            attach.as_ptr(),
            attach.len(),
        )
    };
    let errno = if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    };
    // SAFETY: our own descriptor; the attachment holds the program.
    unsafe { libc::close(prog as i32) };
    errno
}

/// Now, in RFC 3339 with nanoseconds (a --since or --until).
pub fn now_rfc3339() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    monitor::events::rfc3339_nanos(n as i128)
}

/// Exports [since, until) of the daemon's store (its state directory is
/// `DIR/state`) to `name` in the test's directory; it must succeed.
pub fn export_window(env: &TestEnv, since: &str, until: &str, name: &str) -> PathBuf {
    let bundle = env.dir.path().join(name);
    let out = Command::new(daemon_bin())
        .args(["export", "--since", since, "--until", until, "--out"])
        .arg(&bundle)
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle
}

/// `tar -xOf BUNDLE evidence/NAME`: one file of a bundle.
pub fn bundle_file(bundle: &Path, name: &str) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(bundle)
        .arg(format!("evidence/{name}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} in {}", bundle.display());
    String::from_utf8(out.stdout).unwrap()
}

/// The policy body allowing these countries (`"DE"`, `"DE, US"`).
pub fn allow_countries(countries: &str) -> String {
    format!("  allow:\n    countries: [{countries}]\n")
}

impl TestEnv {
    /// Writes the usual policy: `eu-only` on the `sel` cgroup, in `mode`,
    /// allowing `countries`.
    pub fn set_policy(&self, mode: &str, countries: &str) {
        self.write_policy(
            "p.yaml",
            &self.policy("eu-only", mode, "sel", &allow_countries(countries)),
        );
    }

    /// A new environment with the usual policy and a running daemon.
    pub fn started(mode: &str, countries: &str, extra: &[&str]) -> TestEnv {
        let mut env = TestEnv::new();
        env.set_policy(mode, countries);
        env.start_daemon(extra);
        env
    }
}

impl TestEnv {
    /// An `events --follow` client of this daemon, reading nothing.
    pub fn spawn_follower(&self) -> Child {
        Command::new(daemon_bin())
            .args(["events", "--follow", "--socket"])
            .arg(self.socket())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start events --follow")
    }

    /// `events --follow -o json EXTRA` of this daemon, its output
    /// collected as it comes.
    pub fn follow_events(&self, extra: &[&str]) -> Follower {
        let mut child = Command::new(daemon_bin())
            .args(["events", "--follow", "-o", "json", "--socket"])
            .arg(self.socket())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start events --follow");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("events -o json printed no JSON ({e}): {line}"));
                l.lock().unwrap().push(v);
            }
        });
        let err = BufReader::new(child.stderr.take().unwrap());
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Follower {
            child,
            lines,
            stderr,
        }
    }

    /// `status -o json` of the running daemon.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Polls `status` until `pred` holds (bounded); returns the status
    /// that satisfied it, or panics with the last one.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.status();
            if pred(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "status never showed {what} within {timeout:?}; last: {last:#}\nlog:\n{}",
            self.log()
        );
    }

    /// Polls the store (`events --since 10m -o json ARGS`) until an event
    /// matches `pred` (the writer stores a batch within a second); returns
    /// every event the last query gave, or panics with them.
    pub fn wait_stored(
        &self,
        what: &str,
        args: &[&str],
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut all = vec!["events", "--since", "10m", "-o", "json"];
        all.extend_from_slice(args);
        let deadline = Instant::now() + timeout;
        loop {
            let stored = json_lines(&self.cli(&all));
            if stored.iter().any(&pred) {
                return stored;
            }
            assert!(
                Instant::now() < deadline,
                "no stored event {what} within {timeout:?} (events {args:?}): {stored:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A port of the test server no earlier call of this environment
    /// returned (after `PORT`; they repeat after `SERVE_PORTS - 1`): a
    /// connection to it is a destination of its own, so a first decision
    /// and an event.
    pub fn fresh_port(&self) -> u16 {
        let n = self.next_port.fetch_add(1, Ordering::SeqCst);
        PORT + 1 + (n - PORT - 1) % (SERVE_PORTS - 1)
    }

    /// The flows of the last hour (`flows -o json`, full key), plus `extra`
    /// arguments.
    pub fn flows(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["flows", "-o", "json", "--limit", "10000"];
        args.extend_from_slice(extra);
        json_lines(&self.cli(&args))
    }

    /// Polls the flows until the attempts (`count`) of those that match
    /// `pred` add up to `want` (the daemon harvests the kernel's counters
    /// every second); panics with what it saw when they do not within
    /// `timeout`, or when they go past `want`. Returns the matching flows.
    pub fn wait_flow_count(
        &self,
        what: &str,
        want: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_flow_sum(what, "count", want, timeout, pred)
    }

    /// `wait_flow_count` for any counter of a flow (`count`, `packets`,
    /// `bytes`).
    pub fn wait_flow_sum(
        &self,
        what: &str,
        field: &str,
        want: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_flow_sum_of(what, &[], field, want, timeout, pred)
    }

    /// `wait_flow_sum` over `flows EXTRA` (filters that keep the flows
    /// looked for within the query's limit).
    pub fn wait_flow_sum_of(
        &self,
        what: &str,
        extra: &[&str],
        field: &str,
        want: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let sum = |fs: &[Value]| -> u64 { fs.iter().map(|f| f[field].as_u64().unwrap_or(0)).sum() };
        loop {
            let matching: Vec<Value> = self.flows(extra).into_iter().filter(|f| pred(f)).collect();
            let n = sum(&matching);
            assert!(
                n <= want,
                "{what}: {field} adds up to {n}, more than the {want} made: {matching:#?}"
            );
            if n == want {
                return matching;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {field} adds up to {n} of {want} within {timeout:?}: {matching:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// An `events --follow` client (`TestEnv::follow_events`); killed on drop.
pub struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Follower {
    /// What it printed so far, one JSON value per line.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until it has printed `pred` (bounded); panics with what it
    /// printed otherwise.
    pub fn wait_lines(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.lines()) {
            assert!(
                Instant::now() < deadline,
                "events --follow never printed {what} within {timeout:?}: {:#?}\nstderr: {}",
                self.lines(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for it to exit (bounded); its status and stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for events --follow") {
                // Its stderr is read to the end by the reader thread.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "events --follow still runs after {timeout:?}; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A successful CLI run's stdout as JSON lines.
pub fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A dead-end network namespace: loopback and blackhole default routes
/// (IPv4 and IPv6), checked with `ip route get`. The cgroup hooks judge a
/// connect from here, then an allowed one fails with EINVAL (or
/// ENETUNREACH) and no packet is built: the way to judge real internet
/// addresses. Removed on drop.
pub struct DeadEnd(pub String);

impl DeadEnd {
    pub fn new(name: &str) -> Self {
        let ok = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ok(&["netns", "add", name]);
        let ns = DeadEnd(name.to_string());
        ok(&["-n", name, "link", "set", "lo", "up"]);
        ok(&["-n", name, "route", "add", "blackhole", "default"]);
        ok(&["-n", name, "-6", "route", "add", "blackhole", "default"]);
        for probe in ["8.8.8.8", "2a00:1450::1"] {
            let route = Command::new("ip")
                .args(["-n", name, "route", "get", probe])
                .output()
                .expect("ip route get");
            let text = String::from_utf8_lossy(&route.stdout);
            assert!(
                text.contains("blackhole") || !route.status.success(),
                "the dead-end namespace routes {probe} somewhere: {text}"
            );
        }
        ns
    }
}

impl Drop for DeadEnd {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Whether a test may connect to `ip` even from a dead end: not loopback
/// (the namespace's own), unspecified, multicast or broadcast, and not the
/// machines' own network 192.0.2.0/24.
pub fn judgeable(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || o[0] == 0
                || v4.is_multicast()
                || v4.is_broadcast()
                || (o[0], o[1], o[2]) == (192, 0, 2))
        }
        std::net::IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Forbidden traffic hammered from a selected cgroup across a transition:
/// TCP connects and UDP sends to the denied (US) test hosts, IPv4 and
/// IPv6, as fast as they go. The ground truth is the test server, which
/// counts what arrived.
pub struct Hammer {
    child: Child,
    reader: BufReader<std::process::ChildStdout>,
}

/// The denied side of the test network, as the hammer aims at it.
pub const FORBIDDEN: [&str; 2] = [US_V4, US_V6];

impl TestEnv {
    /// Starts hammering `FORBIDDEN` from cgroup `sub` for `ms`
    /// milliseconds; returns once the first attempt is about to be made.
    pub fn hammer(&self, sub: &str, ms: u64) -> Hammer {
        let mut args = vec!["hammer".to_string(), PORT.to_string(), ms.to_string()];
        args.extend(FORBIDDEN.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self
            .probe_command(sub, &args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the hammer");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.contains("hammering"),
            "the hammer did not start: {line}"
        );
        Hammer { child, reader }
    }

    /// What reached the denied test hosts: connections accepted and
    /// datagrams received from the workload's addresses on the US side.
    pub fn arrived_forbidden(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| {
                (r.get("accepted").is_some() || r.get("datagram").is_some()) && from_us_side(r)
            })
            .collect()
    }

    /// Waits for the hammer, then checks the ground truth: nothing reached
    /// a denied host, and the client saw only refusals. Returns what the
    /// client counted.
    pub fn assert_nothing_through(&self, hammer: Hammer, during: &str) -> Value {
        let result = hammer.finish();
        // What was sent last is on the wire within milliseconds.
        std::thread::sleep(Duration::from_millis(200));
        let arrived = self.arrived_forbidden();
        assert!(
            arrived.is_empty(),
            "{during}: {} forbidden connections or datagrams arrived at the test hosts \
             (first: {}); the client saw {result}",
            arrived.len(),
            arrived[0]
        );
        assert_eq!(result["connected"], 0, "{during}: {result}");
        assert_eq!(result["sent"], 0, "{during}: {result}");
        assert!(
            result["tcp_eperm"].as_u64().unwrap_or(0) > 0
                && result["udp_eperm"].as_u64().unwrap_or(0) > 0,
            "{during}: the hammer made no refused attempt: {result}"
        );
        result
    }
}

impl Hammer {
    /// Waits for the end of the run; what the client counted.
    pub fn finish(mut self) -> Value {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut self.reader, &mut text).unwrap();
        let status = self.child.wait().expect("wait for the hammer");
        assert!(status.success(), "the hammer failed: {status}: {text}");
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("hammer printed no JSON ({e}): {text}"))
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        // A failed test does not leave the hammer running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TestEnv {
    /// The refusals the hammer saw are in the flows of cgroup `sub` as
    /// denied attempts, every one of them (the kernel counts each attempt
    /// in its flow table; the daemon harvests the counts every second).
    /// Returns how many more were counted than made: attempts judged by two
    /// builds at once during an upgrade are counted by both.
    pub fn assert_refusals_counted(&self, sub: &str, result: &Value) -> u64 {
        self.assert_refusals_counted_but(sub, result, 0)
    }

    /// `assert_refusals_counted` where `lost` events are recorded as lost
    /// (a SIGKILL loses what the daemon had read and not stored, and the
    /// next start records it as a `lost_at_restart` gap): the flows count
    /// every refusal but those.
    pub fn assert_refusals_counted_but(&self, sub: &str, result: &Value, lost: u64) -> u64 {
        let made = result["tcp_eperm"].as_u64().unwrap() + result["udp_eperm"].as_u64().unwrap();
        let want = made - lost.min(made);
        let path = self.rel(sub);
        let port = PORT.to_string();
        // Filtered in the store: a flood leaves more flows than a query
        // returns (`flows` takes the largest counts first, and a first
        // attempt's own row counts 1), so an unfiltered query can leave
        // out the very rows counted here.
        let cidrs: Vec<String> = FORBIDDEN
            .iter()
            .map(|ip| format!("{ip}/{}", if ip.contains(':') { 128 } else { 32 }))
            .collect();
        let mut filter = vec!["--verdict", "denied", "--port", port.as_str()];
        for c in &cidrs {
            filter.extend(["--to-cidr", c.as_str()]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let matching: Vec<Value> = self
                .flows(&filter)
                .into_iter()
                .filter(|f| {
                    f["cgroup_path"].as_str() == Some(path.as_str())
                        && FORBIDDEN.contains(&f["dst_ip"].as_str().unwrap_or(""))
                        && f["verdict"].as_str() == Some("denied")
                        && f["dst_port"].as_u64() == Some(u64::from(PORT))
                })
                .collect();
            let n: u64 = matching
                .iter()
                .map(|f| f["count"].as_u64().unwrap_or(0))
                .sum();
            if n >= want {
                return n - want;
            }
            assert!(
                Instant::now() < deadline,
                "{n} of the hammer's {want} refusals counted in the flows within 10 s: {matching:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A cgroup of the test's own directly under the cgroup2 mount, removed on
/// drop (a `TempDir` there cannot be: cgroupfs refuses to unlink the
/// interface files, so only `rmdir` removes a cgroup).
pub struct ScratchCgroup(PathBuf);

impl ScratchCgroup {
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = cgroup2_mount().join(format!("{prefix}-{:x}-{n}", std::process::id()));
        std::fs::create_dir(&path).expect("create scratch cgroup");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), b"1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !std::thread::panicking() {
            assert!(
                !self.0.exists(),
                "scratch cgroup {} left behind",
                self.0.display()
            );
        }
    }
}
