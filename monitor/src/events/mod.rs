//! Decision events: decoding what the kernel wrote, and the enriched form
//! the daemon prints and serves.

use std::net::IpAddr;

use monitor_common::{
    kind, CountrySource, DecisionEvent, DnsEvent, EventHeader, Hook, Rule, Verdict, AF_INET,
    AF_INET6, AF_PACKET, DECISION_VERSION, DNS_VERSION, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("header says {header} bytes, record has {actual}")]
    Length { header: u32, actual: usize },
    #[error("unknown event kind {0}")]
    Kind(u16),
    #[error("decision event version {0} is not understood (expected {DECISION_VERSION})")]
    Version(u16),
    #[error("DNS event version {0} is not understood (expected {DNS_VERSION})")]
    DnsVersion(u16),
    #[error("process record version {0} is not understood (expected {expected})", expected = monitor_common::process::RECORD_VERSION)]
    ProcessVersion(u16),
}

/// A ring buffer record: a decision, or a DNS answer the kernel learned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Decision(DecisionEvent),
    Dns(Box<DnsEvent>),
    /// A cgroup was made (see `kind::CGROUP_MADE`).
    CgroupMade,
    /// A process, before its first decision (see `kind::PROCESS`).
    Process(Box<monitor_common::process::Entry>),
}

/// Reads a record of type `T` whose header says `len`, checked against
/// the record's and the type's size.
fn read_sized<T>(bytes: &[u8], len: u32) -> Result<T, DecodeError> {
    if len as usize != size_of::<T>() || bytes.len() < size_of::<T>() {
        return Err(DecodeError::Length {
            header: len,
            actual: bytes.len(),
        });
    }
    // SAFETY: the length is checked, read_unaligned copes with any
    // alignment, and the callers' types are plain data valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Checks the header and reads either kind of record.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; every bit pattern is a valid EventHeader.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if header.kind == kind::CGROUP_MADE {
        return Ok(Record::CgroupMade);
    }
    if header.kind == kind::PROCESS {
        use monitor_common::process::{Record as ProcessRecord, RECORD_VERSION};
        if header.version != RECORD_VERSION {
            return Err(DecodeError::ProcessVersion(header.version));
        }
        let r: ProcessRecord = read_sized(bytes, header.len)?;
        return Ok(Record::Process(Box::new(r.entry)));
    }
    if header.kind != kind::DNS {
        return decode(bytes).map(Record::Decision);
    }
    if header.version != DNS_VERSION {
        return Err(DecodeError::DnsVersion(header.version));
    }
    if header.len as usize != size_of::<DnsEvent>() || bytes.len() < size_of::<DnsEvent>() {
        return Err(DecodeError::Length {
            header: header.len,
            actual: bytes.len(),
        });
    }
    // SAFETY: as above, the length is checked and any bit pattern is valid.
    Ok(Record::Dns(Box::new(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast())
    })))
}

/// Checks the header and reads a decision event from a ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<DecisionEvent, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; read_unaligned copes with any alignment, and
    // every bit pattern is a valid EventHeader.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if header.kind != kind::DECISION {
        return Err(DecodeError::Kind(header.kind));
    }
    if header.version != DECISION_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    if header.len as usize != size_of::<DecisionEvent>() || bytes.len() < size_of::<DecisionEvent>()
    {
        return Err(DecodeError::Length {
            header: header.len,
            actual: bytes.len(),
        });
    }
    // SAFETY: as above, the length is checked.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

pub fn verdict_name(v: u8) -> &'static str {
    Verdict::from_u8(v).map_or("unknown", Verdict::as_str)
}

pub fn rule_name(r: u8) -> &'static str {
    Rule::from_u8(r).map_or("unknown", Rule::as_str)
}

pub fn hook_name(h: u8) -> &'static str {
    Hook::from_u8(h).map_or("unknown", Hook::as_str)
}

/// `tcp`, `udp`, `icmp`, `icmpv6`, or `ip-proto-N`: a static string for
/// every protocol number (the 252 rare ones made once, on first sight).
pub fn protocol_name(p: u8) -> &'static str {
    static OTHERS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        other => OTHERS.get_or_init(|| {
            (0..=255u8)
                .map(|n| &*Box::leak(format!("ip-proto-{n}").into_boxed_str()))
                .collect()
        })[usize::from(other)],
    }
}

/// The static name equal to `s` among the names events carry (verdicts,
/// rules, hooks, families, protocols), for events read back from the store
/// or the API; `unknown` for anything else.
pub fn known_name(s: &str) -> &'static str {
    use monitor_common::{Hook, Rule, Verdict};
    if let Some(n) = s.strip_prefix("ip-proto-") {
        return n.parse().map(protocol_name).unwrap_or("unknown");
    }
    Verdict::ALL
        .iter()
        .map(|v| v.as_str())
        .chain(Rule::ALL.iter().map(|r| r.as_str()))
        .chain(Hook::ALL.iter().map(|h| h.as_str()))
        .chain(CountrySource::ALL.iter().map(|c| c.as_str()))
        .chain(["ipv4", "ipv6", "packet", "tcp", "udp", "icmp", "icmpv6"])
        .chain([DRIFT, BASELINE_RULE])
        // A record from before a field existed keeps it empty.
        .chain([""])
        .find(|n| *n == s)
        .unwrap_or("unknown")
}

pub fn family_name(f: u8) -> &'static str {
    match f {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        AF_PACKET => "packet",
        _ => "unknown",
    }
}

fn code(b: [u8; 2]) -> String {
    if b == [0, 0] {
        String::new()
    } else {
        String::from_utf8_lossy(&b).into_owned()
    }
}

fn comm(b: &[u8; 16]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// A decision as users see it: the JSON line of `--log-events`, and the
/// gRPC event. Field names are a contract.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Event {
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
    #[serde(skip)]
    pub unix_nanos: i128,
    pub verdict: &'static str,
    pub policy: String,
    pub rule: &'static str,
    pub hook: &'static str,
    pub protocol: &'static str,
    pub family: &'static str,
    pub dst_ip: String,
    pub dst_port: u16,
    pub country: String,
    pub continent: String,
    /// Where `country` and `continent` came from: `cloud` (the provider's
    /// published region of the address) or `geoip` (the country database).
    pub country_source: &'static str,
    /// The name this cgroup resolved the address from (what the application
    /// asked for); empty when it reached the address without a lookup the
    /// kernel saw: a hard-coded address, a cache outside the cgroup, DoH.
    pub dns_name: String,
    /// The end of the CNAME chain, where it differs from `dns_name`.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub dns_cname: String,
    /// Cloud provider (`aws`, `gcp`, ...) and region of the address, from
    /// the published ranges.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub cloud: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub cloud_region: String,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cgroup_path: String,
    pub policy_generation: u32,
    /// The CPU and number the kernel gave this event in its ring (numbers
    /// run from 1 per CPU for as long as the pinned maps live): a number
    /// missing from the store is an event lost on the way, which the store
    /// records as a gap. Left out for events the daemon made itself.
    #[serde(skip_serializing_if = "is_zero_u32", default)]
    pub kernel_seq: u32,
    #[serde(skip_serializing_if = "is_zero_u32", default)]
    pub kernel_cpu: u32,
    /// Attribution of `cgroup_path` (see `attribution`); each is left out
    /// of the JSON when the path does not tell it.
    /// Kubernetes pod UID (`metadata.uid`).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub pod_uid: String,
    /// `Guaranteed`, `Burstable` or `BestEffort`.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub qos: String,
    /// 64 hex digits.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub container_id: String,
    /// `containerd`, `cri-o`, `docker`, `podman`.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub runtime: String,
    /// The systemd unit outside pods (the user unit below `user@UID.service`).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub systemd_unit: String,
    /// What the container's runtime says of it (see `containers`); each is
    /// left out of the JSON when not known. The image as the container was
    /// created from it, and its digest.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub image: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub image_digest: String,
    /// The container's name.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub container_name: String,
    /// The Kubernetes pod's name and namespace.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub pod_name: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub pod_namespace: String,
    /// The pod's labels.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub pod_labels: std::collections::BTreeMap<String, String>,
    /// The process (see `process::Process`); each is left out of the JSON
    /// when not known. The executable as the exec was given it.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub exe: String,
    /// Its arguments, secrets redacted.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub args: Vec<String>,
    /// More arguments than were kept.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub args_truncated: bool,
    /// The parent's tgid and executable.
    #[serde(skip_serializing_if = "is_zero_u32", default)]
    pub ppid: u32,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub parent_exe: String,
    /// On a drift alert (verdict `drift`, rule `baseline`) only: what was
    /// new, and what it was compared to. The alert's other fields are
    /// those of the attempt that raised it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drift: Option<Box<Drift>>,
}

/// The verdict and rule of a drift alert: an event the daemon makes, not
/// a kernel decision.
pub const DRIFT: &str = "drift";
pub const BASELINE_RULE: &str = "baseline";

/// What a drift alert says: the destination new to the workload, and the
/// baseline it was compared to. Fields in key order: the canonical record
/// (`store::chain`) writes them as serde does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Drift {
    /// The verdict of the attempt that raised it.
    pub attempt: String,
    /// The baseline's `metadata.name`, and the SHA-256 of its file.
    pub baseline: String,
    pub baseline_sha256: String,
    /// `name`, `cloud region`, `cidr` or `country`.
    pub kind: String,
    /// What the baseline knows of that kind for the workload (its own
    /// entry, else all its workloads'); at most `DRIFT_KNOWN_MAX`, then
    /// `(N more)`.
    pub known: Vec<String>,
    /// Whether the baseline lists the workload itself.
    pub listed: bool,
    /// The new name, cloud region, range or country.
    pub value: String,
}

/// The most entries of `Drift::known` an alert carries.
pub const DRIFT_KNOWN_MAX: usize = 20;

impl Event {
    /// The memory this event holds (its own size and what its strings,
    /// labels, arguments and drift alert allocated): what a queue of
    /// events waiting for the store is bounded by (see
    /// `store::writer::BACKLOG_BYTES`). A BTreeMap's nodes are counted at
    /// their entries' size.
    pub fn weight(&self) -> usize {
        let strings = [
            &self.time,
            &self.policy,
            &self.dst_ip,
            &self.country,
            &self.continent,
            &self.dns_name,
            &self.dns_cname,
            &self.cloud,
            &self.cloud_region,
            &self.comm,
            &self.cgroup_path,
            &self.pod_uid,
            &self.qos,
            &self.container_id,
            &self.runtime,
            &self.systemd_unit,
            &self.image,
            &self.image_digest,
            &self.container_name,
            &self.pod_name,
            &self.pod_namespace,
            &self.exe,
            &self.parent_exe,
        ];
        let owned = |s: &String| s.capacity();
        let list = |v: &Vec<String>| {
            v.capacity() * std::mem::size_of::<String>() + v.iter().map(owned).sum::<usize>()
        };
        let labels: usize = self
            .pod_labels
            .iter()
            .map(|(k, v)| 2 * std::mem::size_of::<String>() + owned(k) + owned(v))
            .sum();
        let drift = self.drift.as_ref().map_or(0, |d| {
            std::mem::size_of::<Drift>()
                + [
                    &d.attempt,
                    &d.baseline,
                    &d.baseline_sha256,
                    &d.kind,
                    &d.value,
                ]
                .into_iter()
                .map(owned)
                .sum::<usize>()
                + list(&d.known)
        });
        std::mem::size_of::<Self>()
            + strings.into_iter().map(owned).sum::<usize>()
            + labels
            + list(&self.args)
            + drift
    }

    /// Copies what the container's runtime said into this event.
    pub fn describe_container(&mut self, m: &crate::containers::Meta) {
        self.image.clone_from(&m.image);
        self.image_digest.clone_from(&m.image_digest);
        self.container_name.clone_from(&m.name);
        self.pod_name.clone_from(&m.pod_name);
        self.pod_namespace.clone_from(&m.pod_namespace);
        self.pod_labels.clone_from(&m.pod_labels);
    }

    /// What this event says the container's runtime said; None: nothing.
    pub fn container_meta(&self) -> Option<crate::containers::Meta> {
        self.has_container_meta().then(|| crate::containers::Meta {
            image: self.image.clone(),
            image_digest: self.image_digest.clone(),
            name: self.container_name.clone(),
            pod_name: self.pod_name.clone(),
            pod_namespace: self.pod_namespace.clone(),
            pod_labels: self.pod_labels.clone(),
        })
    }

    /// Whether this event says anything the container's runtime said
    /// (`container_meta` is Some), without copying it.
    pub fn has_container_meta(&self) -> bool {
        // An empty description allocates nothing.
        !self.says_container(&crate::containers::Meta::default())
    }

    /// Whether this event says exactly what `m` says of its container
    /// (`container_meta` equals `m`), without copying it. `m` is taken
    /// apart whole: a field added to `Meta` does not compile here until it
    /// is compared.
    pub fn says_container(&self, m: &crate::containers::Meta) -> bool {
        let crate::containers::Meta {
            image,
            image_digest,
            name,
            pod_name,
            pod_namespace,
            pod_labels,
        } = m;
        self.image == *image
            && self.image_digest == *image_digest
            && self.container_name == *name
            && self.pod_name == *pod_name
            && self.pod_namespace == *pod_namespace
            && self.pod_labels == *pod_labels
    }

    /// Fills the attribution fields from `cgroup_path`.
    pub fn attribute(&mut self) {
        let a = crate::attribution::attribute(&self.cgroup_path);
        if let Some(pod) = &a.pod {
            self.pod_uid = pod.uid.clone();
            self.qos = pod.qos.as_str().into();
        }
        if let Some(c) = &a.container {
            self.container_id = c.id.clone();
            self.runtime = c.runtime.as_str().into();
        }
        if let Some(unit) = a.unit_name() {
            self.systemd_unit = unit.into();
        }
    }
}

/// What a cgroup id stands for: its path and the attribution the path
/// gives, worked out once per cgroup and shared by all its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    pub path: String,
    pub pod_uid: String,
    pub qos: String,
    pub container_id: String,
    pub runtime: String,
    pub systemd_unit: String,
    /// What the container's runtime said of it, where it was asked.
    pub container: Option<std::sync::Arc<crate::containers::Meta>>,
}

impl CgroupInfo {
    /// Copies the attribution (pod, QoS, container, runtime, unit, and what
    /// the runtime said) into an event of this path.
    pub fn attribute(&self, e: &mut Event) {
        e.pod_uid.clone_from(&self.pod_uid);
        e.qos.clone_from(&self.qos);
        e.container_id.clone_from(&self.container_id);
        e.runtime.clone_from(&self.runtime);
        e.systemd_unit.clone_from(&self.systemd_unit);
        if let Some(m) = &self.container {
            e.describe_container(m);
        }
    }

    /// Attributes `path` (see `attribution`).
    pub fn of_path(path: String) -> Self {
        let mut e = Event {
            cgroup_path: path,
            ..Default::default()
        };
        e.attribute();
        Self {
            path: e.cgroup_path,
            pod_uid: e.pod_uid,
            qos: e.qos,
            container_id: e.container_id,
            runtime: e.runtime,
            systemd_unit: e.systemd_unit,
            container: None,
        }
    }

    /// The runtime of `container_id`, as the path tells it.
    pub fn runtime_kind(&self) -> crate::attribution::Runtime {
        use crate::attribution::Runtime;
        [
            Runtime::Containerd,
            Runtime::CriO,
            Runtime::Docker,
            Runtime::Podman,
        ]
        .into_iter()
        .find(|r| r.as_str() == self.runtime)
        .unwrap_or(Runtime::Unknown)
    }
}

/// What enrichment needs from the daemon.
pub trait Names {
    fn policy(&self, id: u32) -> String;
    /// The cgroup's path and attribution; implementations cache it per id.
    fn cgroup(&mut self, id: u64) -> std::sync::Arc<CgroupInfo>;
    /// Provider and region of a `cloud::region_id`.
    fn cloud_region(&self, _id: u32) -> Option<(String, String)> {
        None
    }
    /// The process `tgid` whose program image started at `exec_ns`.
    fn process(
        &mut self,
        _tgid: u32,
        _exec_ns: u64,
    ) -> Option<std::sync::Arc<crate::process::Process>> {
        None
    }
    /// A process the kernel reported (`Record::Process`).
    fn learn_process(&mut self, _entry: &monitor_common::process::Entry) {}
}

pub fn country_source_name(s: u8) -> &'static str {
    CountrySource::from_u8(s).map_or("unknown", CountrySource::as_str)
}

/// Turns a kernel record into an event; `boot_to_unix_ns` converts the
/// kernel's boot-time clock to wall time.
pub fn enrich(raw: &DecisionEvent, boot_to_unix_ns: i128, names: &mut impl Names) -> Event {
    let unix_nanos = boot_to_unix_ns + i128::from(raw.boot_ns);
    let addr = IpAddr::from(raw.dst_addr);
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    let mut event = Event {
        time: rfc3339_nanos(unix_nanos),
        unix_nanos,
        verdict: verdict_name(raw.verdict),
        policy: names.policy(raw.policy_id),
        rule: rule_name(raw.rule),
        hook: hook_name(raw.hook),
        protocol: protocol_name(raw.protocol),
        family: family_name(raw.family),
        // A socket creation has no destination.
        dst_ip: if raw.hook == Hook::SockCreate as u8 {
            String::new()
        } else {
            addr.to_string()
        },
        dst_port: raw.dst_port,
        country: code(raw.country),
        continent: code(raw.continent),
        country_source: country_source_name(raw.country_source),
        pid: raw.pid,
        tgid: raw.tgid,
        uid: raw.uid,
        comm: comm(&raw.comm),
        cgroup_id: raw.cgroup_id,
        policy_generation: raw.policy_generation,
        kernel_seq: raw.seq,
        // Only a numbered event names its CPU.
        kernel_cpu: if raw.seq != 0 { u32::from(raw.cpu) } else { 0 },
        ..Default::default()
    };
    if raw.cloud_region != 0 {
        if let Some((provider, region)) = names.cloud_region(raw.cloud_region) {
            event.cloud = provider;
            event.cloud_region = region;
        }
    }
    let cg = names.cgroup(raw.cgroup_id);
    event.cgroup_path.clone_from(&cg.path);
    cg.attribute(&mut event);
    if raw.tgid != 0 {
        if let Some(p) = names.process(raw.tgid, raw.exec_ns) {
            event.set_process(&p);
        }
    }
    event
}

impl Event {
    /// Only what a flow is recorded by (its key, place and name: the flow
    /// row, the hourly sums, the metrics): the process's arguments and
    /// parent, and what a runtime said of its container, are the event's.
    /// A harvested repeat waits for the store in this form; in a flood the
    /// writer holds thousands.
    pub fn keep_flow_fields(&mut self) {
        self.args = Vec::new();
        self.parent_exe = String::new();
        self.dns_cname = String::new();
        self.image = String::new();
        self.image_digest = String::new();
        self.container_name = String::new();
        self.pod_name = String::new();
        self.pod_namespace = String::new();
        self.pod_labels = std::collections::BTreeMap::new();
    }

    /// Copies a process's identity into the event.
    pub fn set_process(&mut self, p: &crate::process::Process) {
        self.exe.clone_from(&p.exe);
        self.args.clone_from(&p.args);
        self.args_truncated = p.args_truncated;
        self.ppid = p.ppid;
        self.parent_exe.clone_from(&p.parent_exe);
    }
}

/// `unix_nanos` as UTC, `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ`; a time
/// outside the years 0000-9999 reads as the epoch. Every event's time and
/// every record's check format one, so it is written by hand: the `time`
/// crate's general formatter was 3% of the store's ingest.
pub fn rfc3339_nanos(unix_nanos: i128) -> String {
    let mut out = [0u8; RFC3339_LEN];
    let text = rfc3339_into(unix_nanos, &mut out);
    text.to_owned()
}

/// Whether `text` is `rfc3339_nanos(unix_nanos)`, with no allocation.
pub fn is_rfc3339_of(text: &str, unix_nanos: i128) -> bool {
    let mut out = [0u8; RFC3339_LEN];
    text == rfc3339_into(unix_nanos, &mut out)
}

const RFC3339_LEN: usize = "1970-01-01T00:00:00.000000000Z".len();

/// Writes `rfc3339_nanos(unix_nanos)` into `out`.
fn rfc3339_into(unix_nanos: i128, out: &mut [u8; RFC3339_LEN]) -> &str {
    const NS: i128 = 1_000_000_000;
    const DAY: i128 = 86_400;
    let (secs, nanos) = (unix_nanos.div_euclid(NS), unix_nanos.rem_euclid(NS));
    let (days, of_day) = (secs.div_euclid(DAY), secs.rem_euclid(DAY));
    // The civil date of a day count (days from 1970-01-01), by eras of
    // 400 years that begin on March 1st (H. Hinnant, "chrono-Compatible
    // Low-Level Date Algorithms").
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    if !(0..=9999).contains(&year) {
        out.copy_from_slice(b"1970-01-01T00:00:00.000000000Z");
    } else {
        let mut put = |at: usize, width: usize, mut v: i128| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, of_day / 3600);
        put(14, 2, of_day / 60 % 60);
        put(17, 2, of_day % 60);
        put(20, 9, nanos);
        for (at, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (29, b'Z'),
        ] {
            out[at] = c;
        }
    }
    // Only ASCII digits and separators were written.
    std::str::from_utf8(out).unwrap_or("1970-01-01T00:00:00.000000000Z")
}

/// Wall-clock nanoseconds minus boot-clock nanoseconds, now.
pub fn boot_to_unix_offset() -> i128 {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_BOOTTIME)
}

#[cfg(test)]
pub(crate) mod tests {
    use monitor_common::{hook, rule, verdict};

    use super::*;

    /// The hand-written time is the `time` crate's, at the edges (the
    /// epoch, leap days, century years, the ends of the range) and at
    /// 200,000 times spread over the years 0000-9999.
    #[test]
    fn the_time_is_written_as_the_time_crate_writes_it() {
        let by_crate = |n: i128| {
            let format = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
            );
            time::OffsetDateTime::from_unix_timestamp_nanos(n)
                .ok()
                .and_then(|t| t.format(&format).ok())
                .filter(|t| t.len() == RFC3339_LEN)
                .unwrap_or_else(|| "1970-01-01T00:00:00.000000000Z".into())
        };
        const NS: i128 = 1_000_000_000;
        let first = -62_167_219_200 * NS; // 0000-01-01T00:00:00Z
        let end = 253_402_300_800 * NS; // 10000-01-01T00:00:00Z
        let mut times = vec![
            0,
            -1,
            1,
            first,
            first - 1,
            end - 1,
            end,
            951_782_400 * NS, // 2000-02-29
            951_868_799 * NS + 999_999_999,
            4_107_542_400 * NS,  // 2100-03-01
            -2_203_891_200 * NS, // 1900-02-28
            1_798_761_599 * NS + 123_456_789,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(first + (i128::from(x) % (end - first)));
        }
        for n in times {
            assert_eq!(rfc3339_nanos(n), by_crate(n), "at {n}");
            assert!(is_rfc3339_of(&by_crate(n), n));
        }
        assert!(!is_rfc3339_of("2026-12-06T23:00:00.000000000Z", 0));
    }

    /// A would-deny connect6 to 198.51.100.7 (IPv4-mapped) by curl.
    pub(crate) fn sample() -> DecisionEvent {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[198, 51, 100, 7]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        DecisionEvent {
            header: EventHeader {
                kind: kind::DECISION,
                version: DECISION_VERSION,
                len: size_of::<DecisionEvent>() as u32,
            },
            boot_ns: 5,
            cgroup_id: 42,
            selected_cgroup_id: 41,
            pid: 100,
            tgid: 99,
            uid: 1000,
            gid: 1000,
            policy_id: 3,
            policy_generation: 2,
            dst_addr: addr,
            comm,
            dst_port: 443,
            country: *b"DE",
            continent: *b"EU",
            hook: hook::CONNECT6,
            family: AF_INET6,
            protocol: IPPROTO_TCP,
            verdict: verdict::WOULD_DENY,
            rule: rule::DEFAULT,
            mode: 0,
            cloud_region: 0,
            name_hash: 0,
            country_source: 0,
            _pad: 0,
            cpu: 0,
            seq: 0,
            exec_ns: 0,
        }
    }

    /// The record as the kernel puts it in the ring.
    pub(crate) fn bytes(e: &DecisionEvent) -> Vec<u8> {
        // SAFETY: plain repr(C) data.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const DecisionEvent).cast::<u8>(),
                size_of::<DecisionEvent>(),
            )
        }
        .to_vec()
    }

    struct N;
    impl Names for N {
        fn policy(&self, id: u32) -> String {
            format!("p{id}")
        }
        fn cgroup(&mut self, id: u64) -> std::sync::Arc<CgroupInfo> {
            std::sync::Arc::new(CgroupInfo::of_path(format!("/cg{id}")))
        }
    }

    #[test]
    fn decodes_at_any_alignment_and_enriches() {
        let e = sample();
        let mut buf = vec![0u8; 1];
        buf.extend(bytes(&e));
        let got = decode(&buf[1..]).unwrap();
        assert_eq!(got, e);
        let ev = enrich(&got, 1_700_000_000_000_000_000, &mut N);
        assert_eq!(
            ev.dst_ip, "198.51.100.7",
            "a mapped address is shown as the IPv4 it is"
        );
        assert_eq!(ev.family, "ipv6");
        assert_eq!(ev.time, "2023-11-14T22:13:20.000000005Z");
        assert_eq!(
            (ev.verdict, ev.rule, ev.hook),
            ("would_deny", "default", "connect6")
        );
        assert_eq!(
            (
                ev.policy.as_str(),
                ev.cgroup_path.as_str(),
                ev.comm.as_str()
            ),
            ("p3", "/cg42", "curl")
        );
        let json = serde_json::to_value(&ev).unwrap();
        for key in [
            "time",
            "verdict",
            "policy",
            "rule",
            "hook",
            "protocol",
            "family",
            "dst_ip",
            "dst_port",
            "country",
            "pid",
            "tgid",
            "uid",
            "comm",
            "cgroup_id",
            "cgroup_path",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn events_carry_the_attribution_of_their_cgroup() {
        struct Pod;
        impl Names for Pod {
            fn policy(&self, _: u32) -> String {
                "p".into()
            }
            fn cgroup(&mut self, _: u64) -> std::sync::Arc<CgroupInfo> {
                std::sync::Arc::new(CgroupInfo::of_path(format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_4718_9a0b_c1d2e3f40506.slice/cri-containerd-{}.scope",
                    "ab".repeat(32)
                )))
            }
        }
        let ev = enrich(&sample(), 0, &mut Pod);
        assert_eq!(ev.pod_uid, "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506");
        assert_eq!(ev.qos, "Burstable");
        assert_eq!(ev.container_id, "ab".repeat(32));
        assert_eq!(ev.runtime, "containerd");
        assert_eq!(ev.systemd_unit, "");
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["pod_uid"], "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506");
        assert!(json.get("systemd_unit").is_none(), "unknown is left out");
        // A plain host: the unit, no pod keys at all.
        let mut host = ev.clone();
        host.cgroup_path = "/system.slice/nginx.service".into();
        host.pod_uid.clear();
        host.qos.clear();
        host.container_id.clear();
        host.runtime.clear();
        host.attribute();
        assert_eq!(host.systemd_unit, "nginx.service");
        let json = serde_json::to_value(&host).unwrap();
        assert!(json.get("pod_uid").is_none() && json.get("container_id").is_none());
    }

    #[test]
    fn unknown_bytes_are_named_unknown() {
        assert_eq!(verdict_name(verdict::WOULD_DENY), "would_deny");
        assert_eq!(rule_name(rule::SOCKET), "socket");
        assert_eq!(hook_name(hook::SOCK_CREATE), "socket_create");
        assert_eq!(verdict_name(0), "unknown");
        assert_eq!(rule_name(0), "unknown");
        assert_eq!(hook_name(200), "unknown");
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let good = bytes(&sample());
        assert_eq!(decode(&good[..3]), Err(DecodeError::Short(3)));
        assert!(matches!(
            decode(&good[..50]),
            Err(DecodeError::Length { .. })
        ));
        let mut k = good.clone();
        k[0] = 9;
        assert_eq!(decode(&k), Err(DecodeError::Kind(9)));
        let mut v = good.clone();
        v[2] = 7;
        assert_eq!(decode(&v), Err(DecodeError::Version(7)));
        let mut l = good;
        l[4] = 1;
        assert!(matches!(
            decode(&l),
            Err(DecodeError::Length { header: 1, .. })
        ));
    }

    #[test]
    fn every_name_an_event_carries_reads_back_as_itself() {
        use monitor_common::{Hook, Rule, Verdict};
        let names = Verdict::ALL
            .iter()
            .map(|v| v.as_str())
            .chain(Rule::ALL.iter().map(|r| r.as_str()))
            .chain(Hook::ALL.iter().map(|h| h.as_str()))
            .chain([AF_INET, AF_INET6, AF_PACKET].map(family_name))
            .chain((0..=255u8).map(protocol_name));
        for n in names {
            assert_eq!(known_name(n), n);
        }
        assert_eq!(protocol_name(47), "ip-proto-47");
        assert_eq!(known_name("no such name"), "unknown");
    }
}
