//! A three-server NATS JetStream cluster on loopback for the fleet tests,
//! from Debian's `nats-server` (`cargo xtask setup` installs it): client
//! ports 14220-14222, cluster 14230-14232, monitoring 14240-14242, stores
//! in a temporary directory. Each server dies with the test (SIGKILL at
//! its parent's death) and is killed by pid in `Drop`; the directory goes
//! with the `TempDir`.
use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The cluster's servers.
pub const SERVERS: usize = 3;
const CLIENT_PORT: u16 = 14220;
const CLUSTER_PORT: u16 = 14230;
const MONITOR_PORT: u16 = 14240;

/// The users the servers know: one with every right, one that may only
/// publish on `egress.>` (no JetStream API: no stream to look up or make).
pub const USER: (&str, &str) = ("egress", "egress-test");
pub const FENCED: (&str, &str) = ("fenced", "fenced-test");

pub struct NatsCluster {
    pub dir: tempfile::TempDir,
    servers: Vec<Option<Child>>,
}

fn server_bin() -> PathBuf {
    for p in ["/usr/bin/nats-server", "/usr/sbin/nats-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nats-server is not installed: run `cargo xtask setup` (Debian package nats-server)");
}

impl NatsCluster {
    /// Starts the three servers and waits until JetStream answers on each.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the NATS cluster");
        let mut cluster = NatsCluster {
            dir,
            servers: (0..SERVERS).map(|_| None).collect(),
        };
        for i in 0..SERVERS {
            cluster.write_config(i);
        }
        for i in 0..SERVERS {
            cluster.spawn(i);
        }
        for i in 0..SERVERS {
            cluster.wait_ready(i);
        }
        cluster
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.conf"))
    }

    fn write_config(&self, i: usize) {
        let routes: Vec<String> = (0..SERVERS)
            .map(|j| format!("nats-route://127.0.0.1:{}", CLUSTER_PORT + j as u16))
            .collect();
        let store = self.dir.path().join(format!("n{i}"));
        let text = format!(
            r#"server_name: n{i}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{monitor}
log_file: "{log}"
jetstream {{ store_dir: "{store}", max_mem: 64MB, max_file: 1GB }}
cluster {{ name: egress-test, listen: 127.0.0.1:{cluster}, routes: [{routes}] }}
authorization {{
  users = [
    {{ user: {u}, password: {p} }}
    {{ user: {fu}, password: {fp}, permissions: {{ publish: {{ allow: ["egress.>"] }}, subscribe: {{ allow: ["_INBOX.>"] }} }} }}
  ]
}}
"#,
            client = CLIENT_PORT + i as u16,
            monitor = MONITOR_PORT + i as u16,
            cluster = CLUSTER_PORT + i as u16,
            log = self.log_path(i).display(),
            store = store.display(),
            routes = routes.join(", "),
            u = USER.0,
            p = USER.1,
            fu = FENCED.0,
            fp = FENCED.1,
        );
        std::fs::write(self.config(i), text).expect("write a NATS server config");
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.log"))
    }

    fn spawn(&mut self, i: usize) {
        let port = CLIENT_PORT + i as u16;
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} is taken (a NATS server left by another run?): the fleet tests need 14220-14242"
        );
        let mut cmd = Command::new(server_bin());
        cmd.arg("-c")
            .arg(self.config(i))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: one prctl between fork and exec: the server dies with
        // the test that started it, even when the test is killed.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.servers[i] = Some(cmd.spawn().expect("start nats-server"));
    }

    /// Waits (bounded) until server `i` says it is healthy, JetStream too.
    fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.servers[i].as_mut().map(|c| c.try_wait()) {
                panic!("nats-server n{i} exited ({status}); log:\n{}", self.log(i));
            }
            last = http_get(MONITOR_PORT + i as u16, "/healthz");
            if last.contains("\"ok\"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "nats-server n{i} not healthy within 30 s (last answer {last:?}); log:\n{}",
            self.log(i)
        );
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Every server, for `--nats-url`, as `user`.
    pub fn url_as(&self, user: (&str, &str)) -> String {
        (0..SERVERS)
            .map(|i| {
                format!(
                    "nats://{}:{}@127.0.0.1:{}",
                    user.0,
                    user.1,
                    CLIENT_PORT + i as u16
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn url(&self) -> String {
        self.url_as(USER)
    }

    /// The process ids of the servers that run.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().flatten().map(|c| c.id()).collect()
    }

    /// Kills server `i` (SIGKILL: no goodbye to its peers).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its store and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(i);
    }

    pub fn kill_all(&mut self) {
        for i in 0..SERVERS {
            self.kill(i);
        }
    }

    /// Starts every server that is down, then waits for them all.
    pub fn start_all(&mut self) {
        for i in 0..SERVERS {
            if self.servers[i].is_none() {
                self.spawn(i);
            }
        }
        for i in 0..SERVERS {
            self.wait_ready(i);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A GET on loopback; the body, or empty when nothing answered.
pub fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
