use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;

use crate::{
    api::{
        auth::{gid_of, AuthConfig},
        server::{ApiConfig, TlsFiles},
    },
    daemon::{self, DaemonConfig},
};

/// Where the daemon reads its policies unless told otherwise.
pub const DEFAULT_POLICIES: &str = "/etc/egress-monitor/policies";
/// Where the image and `cargo xtask setup` (run as root) install the
/// country database and the pinned cloud snapshot: the defaults of
/// `--geoip` and `--cloud-ranges`.
pub const DEFAULT_GEOIP: &str = "/usr/share/egress-monitor/country.mmdb";
pub const DEFAULT_CLOUD_RANGES: &str = "/usr/share/egress-monitor/cloud";

/// `given`, or else [`DEFAULT_CLOUD_RANGES`] when it exists.
pub fn cloud_dir_or_default(given: Option<&std::path::Path>) -> Option<PathBuf> {
    given.map(PathBuf::from).or_else(|| {
        let default = PathBuf::from(DEFAULT_CLOUD_RANGES);
        default.is_dir().then_some(default)
    })
}

/// What a decision is made from: the policies, the country database, the
/// cloud ranges, the resolvers names are learned from (the daemon's,
/// `policy check`'s and `policy explain`'s offline).
#[derive(Debug, Args)]
pub struct Sources {
    /// Directory of policy files (*.yaml); watched for changes.
    #[arg(
        long,
        default_value = DEFAULT_POLICIES,
        env = "EGRESS_MONITOR_POLICIES"
    )]
    pub policies: PathBuf,
    /// MaxMind-format country database (GeoIP2/GeoLite2 or ip-location-db).
    #[arg(long, default_value = DEFAULT_GEOIP, env = "EGRESS_MONITOR_GEOIP")]
    pub geoip: PathBuf,
    /// Directory of cloud providers' published ranges (AWS ip-ranges.json,
    /// Google Cloud cloud.json, Azure Service Tags JSON, or CSV
    /// `cidr,provider,region,service`); watched for changes. Where a range
    /// has a region, the region's documented location decides the
    /// address's country. Without it, cloudRegions rules match nothing
    /// (said in the log, `status` and the metrics)
    /// [default: /usr/share/egress-monitor/cloud, when it exists]
    #[arg(long, env = "EGRESS_MONITOR_CLOUD_RANGES")]
    pub cloud_ranges: Option<PathBuf>,
    /// A resolver (address or CIDR) whose answers teach names (repeatable).
    /// Only answers from these are read: an allowed address running a DNS
    /// server of the workload's own must not vouch for names. Default: the
    /// nameservers of /etc/resolv.conf (on Kubernetes give the cluster DNS
    /// service, e.g. 10.96.0.10). Without one (a loopback one counts only
    /// with --dns-trust-loopback), domain rules match nothing
    #[arg(long)]
    pub dns_resolver: Vec<ipnetwork::IpNetwork>,
    /// Also learn names from resolvers on loopback (a local stub such as
    /// systemd-resolved at 127.0.0.53). Off by default: a workload could
    /// answer its own queries there
    #[arg(long)]
    pub dns_trust_loopback: bool,
}

impl Sources {
    /// `--cloud-ranges`, or else the default directory when it exists.
    pub fn cloud_dir(&self) -> Option<PathBuf> {
        cloud_dir_or_default(self.cloud_ranges.as_deref())
    }

    /// The resolvers names are learned from (see `daemon::dns_resolvers`).
    pub fn resolvers(&self) -> crate::policy::lint::Resolvers {
        crate::policy::lint::Resolvers::new(
            daemon::dns_resolvers(&self.dns_resolver),
            self.dns_trust_loopback,
        )
    }
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Cgroup to attach to; everything below it is covered [default: the cgroup2 mount].
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Directory for the daemon's state.
    #[arg(long, default_value = crate::statedir::default_dir().as_os_str())]
    pub state_dir: PathBuf,
    /// Print every decision as a JSON line on stdout.
    #[arg(long)]
    pub log_events: bool,
    /// Refuse to start unless the policy directory holds at least one valid
    /// policy (for a DaemonSet: an empty or broken ConfigMap fails the pod
    /// instead of running a node with nothing in force).
    #[arg(long, env = "EGRESS_MONITOR_REQUIRE_POLICIES")]
    pub require_policies: bool,
    /// Size of the kernel ring buffer in bytes (a power of two, >= 4096).
    #[arg(long, default_value_t = monitor_common::limits::DEFAULT_RING_BYTES, value_parser = ring_size)]
    pub ring_buffer_bytes: u32,
    /// Flows (cgroup, destination, port, protocol) the kernel keeps a
    /// cached decision and counters for. A decision that finds the table
    /// full is reported as an event instead (the metric
    /// egress_monitor_flow_decisions_total{what="overflow"} counts them).
    #[arg(long, default_value_t = monitor_common::limits::FLOW_ENTRIES, value_parser = clap::value_parser!(u32).range(16..=monitor_common::limits::MAX_FLOW_ENTRIES as i64))]
    pub flow_table_entries: u32,
    /// Size of each of the two kernel country-table slots, in MiB (the
    /// table of the CC0 database takes 28). Kernel memory is 2x this,
    /// allocated at the first start; a restart keeps the pinned size
    /// (`egress-monitor uninstall` to change it).
    #[arg(long, default_value_t = monitor_common::limits::GEO_TABLE_WORDS / (1 << 18), value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub geo_table_mib: u32,
    /// How often the flow harvest reads the kernel's whole flow tables, in
    /// seconds. Between whole reads it reads, every second, only the
    /// entries the kernel listed as changed. A whole read also removes the
    /// flows idle for 2 minutes, so one leaves the table at most this long
    /// after; over tables so large that a whole read would take more than
    /// 0.2% of a core at this pace, whole reads are spaced further.
    #[arg(long, default_value_t = crate::pipeline::harvest::WHOLE_EVERY.as_secs_f64())]
    pub flow_whole_read_interval: f64,
    /// How often the cgroup tree is re-read, in seconds (a new cgroup is also classified when it is made: the kernel wakes the daemon at its mkdir).
    #[arg(long, default_value_t = 2.0)]
    pub rescan_interval: f64,
    /// Events kept in memory for clients asking for recent history.
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
    /// The gRPC unix socket [default: STATE_DIR/egress-monitor.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Group whose members may read events and status over the socket (viewers).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Group whose members may also reload policies (admins; root always is).
    #[arg(long)]
    pub admin_group: Option<String>,
    /// Also serve gRPC over TCP with TLS on this address (e.g. 0.0.0.0:50051).
    #[arg(long, requires_all = ["tls_cert", "tls_key", "tls_client_ca"])]
    pub listen: Option<std::net::SocketAddr>,
    /// Server certificate (PEM) for --listen.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM) for --listen.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are accepted on --listen.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Client certificate common name that gets the admin role (repeatable).
    #[arg(long)]
    pub tls_admin_name: Vec<String>,
    /// Where programs, links and maps are pinned in bpffs (a 0700 directory).
    #[arg(long, default_value = daemon::default_pin_dir().as_os_str())]
    pub pin_dir: PathBuf,
    /// Detach and remove everything on exit. By default enforcement stays on
    /// when the daemon stops, and a restart adopts it.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090) [default: off].
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keep history (events, flows) for this many days (fractions allowed).
    #[arg(long)]
    pub retention_days: Option<f64>,
    /// Keep the history store under this many MiB (oldest removed first).
    #[arg(long)]
    pub retention_max_mb: Option<u64>,
    /// A DNS record counts at least this many seconds, whatever its TTL
    #[arg(long, default_value_t = 30)]
    pub dns_min_ttl: u32,
    /// Seconds a DNS record keeps counting after its TTL
    #[arg(long, default_value_t = 60)]
    pub dns_grace: u32,
    /// A DNS record counts at most this many seconds, whatever its TTL
    #[arg(long, default_value_t = 86_400)]
    pub dns_max_ttl: u32,
    /// Bytes of each process's arguments kept on its events (the first
    /// ones; at most 1024). Secrets in them are redacted (see
    /// --redact-pattern)
    #[arg(long, default_value_t = monitor_common::process::ARGS_BYTES as u32, value_parser = clap::value_parser!(u32).range(1..=monitor_common::process::ARGS_BYTES as i64))]
    pub process_args_bytes: u32,
    /// Keep no arguments at all: events name a process by its executable
    /// and parent only
    #[arg(long, conflicts_with = "process_args_bytes")]
    pub no_process_args: bool,
    /// Also redact what this regular expression matches in arguments
    /// (repeatable); built in: values of flags and KEY=value arguments
    /// named like a secret (--password, --token, --api-key, ...),
    /// Authorization: header values, passwords in URLs, AWS access key
    /// ids, JWTs
    #[arg(long, value_name = "REGEX")]
    pub redact_pattern: Vec<String>,
    /// A container runtime's CRI socket (containerd, CRI-O), asked for
    /// each container's image, name and pod (repeatable). Without this
    /// flag and --container-runtime-socket: those of
    /// /run/containerd/containerd.sock, /run/k3s/containerd/containerd.sock,
    /// /run/crio/crio.sock and the Docker Engine API sockets that exist
    #[arg(long, value_name = "PATH")]
    pub cri_socket: Vec<std::path::PathBuf>,
    /// A container runtime's Docker Engine API socket (Docker, or Podman's
    /// `podman system service`), asked for each container's image, name
    /// and pod (repeatable). Without this flag and --cri-socket: those of
    /// /run/podman/podman.sock, /run/docker.sock, /var/run/docker.sock and
    /// the CRI sockets that exist
    #[arg(long, value_name = "PATH")]
    pub container_runtime_socket: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub publish: crate::fleet::publish::PublishArgs,
}

fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two >= 4096"));
    }
    Ok(n)
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    if !(args.rescan_interval > 0.0 && args.rescan_interval <= 3600.0) {
        anyhow::bail!("--rescan-interval must be between 0 and 3600 seconds");
    }
    if !(args.flow_whole_read_interval >= 1.0 && args.flow_whole_read_interval <= 86_400.0) {
        anyhow::bail!(
            "--flow-whole-read-interval must be between 1 and 86400 seconds, not {}",
            args.flow_whole_read_interval
        );
    }
    if let Some(d) = args.retention_days {
        if !(d > 0.0 && d <= 36_500.0) {
            anyhow::bail!("--retention-days must be more than 0 and at most 36500");
        }
    }
    args.publish.nats.check_files()?;
    let container_sockets = crate::containers::Given {
        cri: args.cri_socket.clone(),
        engine: args.container_runtime_socket.clone(),
    };
    crate::containers::check(&container_sockets).map_err(anyhow::Error::msg)?;
    if args.retention_max_mb == Some(0) {
        anyhow::bail!("--retention-max-mb must be at least 1");
    }
    let gid = |name: &Option<String>, flag: &str| -> anyhow::Result<Option<u32>> {
        name.as_deref()
            .map(|n| gid_of(n).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
            .transpose()
    };
    let api = ApiConfig {
        socket: args
            .socket
            .clone()
            .unwrap_or_else(|| args.state_dir.join("egress-monitor.sock")),
        listen: args.listen,
        tls: match (&args.tls_cert, &args.tls_key, &args.tls_client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            _ => None,
        },
        auth: AuthConfig {
            socket_gid: gid(&args.socket_group, "--socket-group")?,
            admin_gid: gid(&args.admin_group, "--admin-group")?,
            tls_admin_names: args.tls_admin_name.clone(),
        },
    };
    let process = crate::process::Capture {
        args_bytes: if args.no_process_args {
            0
        } else {
            args.process_args_bytes
        },
        redactor: crate::process::Redactor::new(&args.redact_pattern)?,
    };
    let config = DaemonConfig {
        process,
        container_sockets,
        api,
        pin_dir: args.pin_dir,
        detach_on_exit: args.detach_on_exit,
        cloud_ranges: args.sources.cloud_dir(),
        resolvers: args.sources.resolvers(),
        policies: args.sources.policies,
        geoip: args.sources.geoip,
        cgroup_root: args.cgroup_root,
        state_dir: args.state_dir,
        log_events: args.log_events,
        require_policies: args.require_policies,
        ring_bytes: args.ring_buffer_bytes,
        flow_entries: args.flow_table_entries,
        whole_read_interval: Duration::from_secs_f64(args.flow_whole_read_interval),
        geo_words: args.geo_table_mib << 18,
        rescan_interval: Duration::from_secs_f64(args.rescan_interval),
        history: args.history,
        metrics_addr: args.metrics_addr,
        dns: daemon::DnsConfig {
            min_ttl_s: args.dns_min_ttl,
            grace_s: args.dns_grace,
            max_ttl_s: args.dns_max_ttl.max(args.dns_min_ttl),
            trust_loopback: args.sources.dns_trust_loopback,
        },
        retention: crate::store::retention::Retention {
            max_age: args
                .retention_days
                .map(|d| Duration::from_secs_f64(d * 86_400.0)),
            max_bytes: args.retention_max_mb.map(|m| m * 1024 * 1024),
            keep_unpublished: args.publish.nats.nats_url.is_some(),
        },
        nats: args
            .publish
            .nats
            .nats_url
            .is_some()
            .then(|| args.publish.clone()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}
