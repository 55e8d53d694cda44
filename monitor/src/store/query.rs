//! Reading history: events in a window, flows in a window (grouped, sorted,
//! paged). Filters are the live stream's (`api::filter`), passed in as a
//! predicate so the store does not depend on the API.
use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Row};

pub use super::flow::{Flow, FlowFilter};
use super::{
    chain,
    flow::{flow_of, flow_row, FLOW_EXE},
    Store, StoreError,
};
use crate::events::{known_name, rfc3339_nanos, Event};

const MINUTE: i64 = 60_000_000_000;

/// Columns of flows as CSV (the CLI's `flows -o csv` and the evidence
/// bundle's flows.csv), in order.
pub const FLOW_CSV_COLUMNS: [&str; 19] = [
    "first_seen",
    "last_seen",
    "count",
    "verdict",
    "policy",
    "cgroup_path",
    "pod_uid",
    "comm",
    "protocol",
    "dst_ip",
    "dst_port",
    "country",
    "continent",
    "dns_name",
    "cloud_region",
    "packets",
    "bytes",
    "exe",
    "image",
];

/// The minute a time falls in (flow rows are per minute).
pub fn bucket_of(t: i64) -> i64 {
    t - t.rem_euclid(MINUTE)
}

/// The columns `event_of` reads: the record's fields, then the record that
/// was hashed and its digest.
pub(crate) const EVENT_COLUMNS: &str = "seq, unix_nanos, verdict, policy, rule, hook, protocol, family, dst_ip, dst_port, country, continent, pid, tgid, uid, comm, cgroup_id, CASE WHEN cgroup_ref = 0 THEN cgroup_path ELSE (SELECT path FROM cgroup_paths WHERE id = cgroup_ref) END, policy_generation, dns_name, dns_cname, cloud, cloud_region, country_source, record, digest, kernel_cpu, kernel_seq, drift, (SELECT path FROM executables WHERE id = exe_ref), (SELECT argv FROM arguments WHERE id = args_ref), args_truncated, ppid, (SELECT path FROM executables WHERE id = parent_exe_ref), (SELECT image FROM containers WHERE id = container_ref), (SELECT image_digest FROM containers WHERE id = container_ref), (SELECT name FROM containers WHERE id = container_ref), (SELECT pod_name FROM containers WHERE id = container_ref), (SELECT pod_namespace FROM containers WHERE id = container_ref), (SELECT pod_labels FROM containers WHERE id = container_ref)";

/// Where `EVENT_COLUMNS` puts the row's digest.
pub(crate) const EVENT_DIGEST: usize = 25;

/// A row's event, checked against what the chain covers: its columns must
/// give back the hashed record, and the record its digest. A
/// row edited in place (a verdict or country changed, a record rewritten)
/// fails the query instead of answering with what the chain never held.
pub(crate) fn event_of(r: &Row<'_>) -> rusqlite::Result<(i64, Event)> {
    event_and_record(r).map(|(seq, e, _)| (seq, e))
}

/// A row's event and the record the chain hashed (kept in the row before
/// version 7, the canonical form of its columns since), checked as
/// `event_of` checks it.
pub(crate) fn event_and_record(r: &Row<'_>) -> rusqlite::Result<(i64, Event, String)> {
    let (seq, e) = columns_of(r)?;
    checked(r, seq, e)
}

/// The record of a row whose event is `e`: its stored record (rows before
/// version 7) or the canonical form of its columns, checked against the
/// row's digest (`event_and_record`).
fn checked(r: &Row<'_>, seq: i64, e: Event) -> rusqlite::Result<(i64, Event, String)> {
    let record = text(r, 24)?;
    let digest = blob(r, EVENT_DIGEST)?;
    let columns = chain::canonical(seq, &e);
    let record = check_record(seq, columns, record, digest)?;
    Ok((seq, e, record))
}

/// The record the chain hashed for row `seq`: `columns` (the canonical
/// form of its event) where the row keeps no record text, else its
/// `record`, checked against its `digest` and the columns.
pub(crate) fn check_record(
    seq: i64,
    columns: String,
    record: &str,
    digest: &[u8],
) -> rusqlite::Result<String> {
    let tampered = |what: &str| {
        rusqlite::Error::ToSqlConversionFailure(Box::new(Tampered(format!(
            "record seq {seq}: {what}: the store was edited outside the daemon (`egress-monitor export` refuses it too)"
        ))))
    };
    if record.is_empty() {
        if chain::digest(&columns)[..] != digest[..] {
            return Err(tampered("the row's columns differ from its hashed record"));
        }
        return Ok(columns);
    }
    if chain::digest(record)[..] != digest[..] {
        return Err(tampered("the hashed record differs from its digest"));
    }
    if !same_record(&columns, record) {
        return Err(tampered("the row's columns differ from its hashed record"));
    }
    Ok(record.to_string())
}

/// `EVENT_COLUMNS` for reading many rows in a row (an export): what a row
/// names by id in other tables (its cgroup path, executables, argument
/// vector, what the container's runtime said) is read as the id and
/// looked up by `Refs`, once per id, instead of by a subquery per row (a
/// third of the time SQLite took for 1M records). The other columns are
/// at their places in `EVENT_COLUMNS`; the ids at 29, 30, 33, 34 and 35.
pub(crate) const RECORD_COLUMNS: &str = "seq, unix_nanos, verdict, policy, rule, hook, protocol, family, dst_ip, dst_port, country, continent, pid, tgid, uid, comm, cgroup_id, cgroup_path, policy_generation, dns_name, dns_cname, cloud, cloud_region, country_source, record, digest, kernel_cpu, kernel_seq, drift, exe_ref, args_ref, args_truncated, ppid, parent_exe_ref, container_ref, cgroup_ref";

/// `event_and_record` of a row of `RECORD_COLUMNS`, the ids looked up in
/// `refs`: the same event and record, checked the same way (an export
/// checks the record on a thread of its own: `check_record`).
#[cfg(test)]
pub(crate) fn record_of(
    r: &Row<'_>,
    refs: &mut Refs<'_>,
    old: Event,
) -> rusqlite::Result<(i64, Event, String)> {
    let (seq, e) = event_by_id_in(r, refs, old)?;
    checked(r, seq, e)
}

/// The event of a row of `RECORD_COLUMNS` (not yet checked against its
/// record: `check_record`), made in the strings of `old` (an event read
/// before and done with, or `Event::default()`): the same event, without
/// allocating most of them again.
pub(crate) fn event_by_id_in(
    r: &Row<'_>,
    refs: &mut Refs<'_>,
    old: Event,
) -> rusqlite::Result<(i64, Event)> {
    let cgroup_ref: i64 = r.get(35)?;
    let exe = refs.executable(r.get(29)?)?;
    let args = refs.arguments(r.get(30)?)?;
    let parent_exe = refs.executable(r.get(33)?)?;
    let container = refs.container(r.get(34)?)?;
    let info = if cgroup_ref == 0 {
        None
    } else {
        match refs.cgroup(cgroup_ref)? {
            Some(c) => Some(c),
            None => {
                return Err(rusqlite::Error::InvalidColumnType(
                    17,
                    "CASE WHEN cgroup_ref = 0 THEN cgroup_path ELSE (SELECT path FROM cgroup_paths WHERE id = cgroup_ref) END".into(),
                    rusqlite::types::Type::Null,
                ))
            }
        }
    };
    let named = Named {
        cgroup_path: match &info {
            Some(c) => &c.path,
            None => text(r, 17)?,
        },
        exe: exe.as_deref(),
        args: args.as_deref(),
        parent_exe: parent_exe.as_deref(),
        container: container.as_deref(),
    };
    let (seq, mut e) = columns_with(r, named, old)?;
    match info {
        Some(info) => info.attribute(&mut e),
        None => attribute_cached(&mut e),
    }
    Ok((seq, e))
}

/// What rows name by id, read once per id for `event_by_id_in` (each map is
/// started over past `Refs::MAX` ids: a store of many short-lived cgroups
/// or argument vectors does not grow it without bound).
pub(crate) struct Refs<'a> {
    store: &'a Store,
    cgroups: HashMap<i64, Option<std::rc::Rc<crate::events::CgroupInfo>>>,
    executables: HashMap<i64, Option<std::rc::Rc<str>>>,
    arguments: HashMap<i64, Option<std::rc::Rc<str>>>,
    containers: HashMap<i64, Option<std::rc::Rc<ContainerColumns>>>,
}

impl<'a> Refs<'a> {
    const MAX: usize = 16_384;

    pub(crate) fn new(store: &'a Store) -> Self {
        Self {
            store,
            cgroups: HashMap::new(),
            executables: HashMap::new(),
            arguments: HashMap::new(),
            containers: HashMap::new(),
        }
    }

    /// `map[id]`, read by `sql` (one row or none) where not yet known.
    fn look<T: Clone>(
        store: &Store,
        map: &mut HashMap<i64, Option<T>>,
        id: i64,
        sql: &str,
        read: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Option<T>> {
        if let Some(v) = map.get(&id) {
            return Ok(v.clone());
        }
        use rusqlite::OptionalExtension;
        let v = store
            .conn
            .prepare_cached(sql)?
            .query_row([id], read)
            .optional()?;
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(id, v.clone());
        Ok(v)
    }

    /// A cgroup path by id, attributed as `attribute_cached` attributes it.
    fn cgroup(
        &mut self,
        id: i64,
    ) -> rusqlite::Result<Option<std::rc::Rc<crate::events::CgroupInfo>>> {
        Self::look(
            self.store,
            &mut self.cgroups,
            id,
            "SELECT path FROM cgroup_paths WHERE id = ?1",
            |r| {
                Ok(std::rc::Rc::new(crate::events::CgroupInfo::of_path(
                    r.get(0)?,
                )))
            },
        )
    }

    fn executable(&mut self, id: i64) -> rusqlite::Result<Option<std::rc::Rc<str>>> {
        self.text(false, id)
    }

    fn arguments(&mut self, id: i64) -> rusqlite::Result<Option<std::rc::Rc<str>>> {
        self.text(true, id)
    }

    /// An executable's path, or an argument vector (`args`), by id.
    fn text(&mut self, args: bool, id: i64) -> rusqlite::Result<Option<std::rc::Rc<str>>> {
        let (map, sql) = if args {
            (
                &mut self.arguments,
                "SELECT argv FROM arguments WHERE id = ?1",
            )
        } else {
            (
                &mut self.executables,
                "SELECT path FROM executables WHERE id = ?1",
            )
        };
        Self::look(self.store, map, id, sql, |r| {
            Ok(std::rc::Rc::from(r.get::<_, String>(0)?))
        })
    }

    fn container(&mut self, id: i64) -> rusqlite::Result<Option<std::rc::Rc<ContainerColumns>>> {
        Self::look(
            self.store,
            &mut self.containers,
            id,
            "SELECT image, image_digest, name, pod_name, pod_namespace, pod_labels FROM containers WHERE id = ?1",
            |r| {
                Ok(std::rc::Rc::new(ContainerColumns {
                    image: r.get(0)?,
                    image_digest: r.get(1)?,
                    name: r.get(2)?,
                    pod_name: r.get(3)?,
                    pod_namespace: r.get(4)?,
                    pod_labels: super::labels_of(r.get(5)?),
                }))
            },
        )
    }
}

/// What `EVENT_COLUMNS` reads of a row's container (each empty where the
/// row names none).
#[derive(Debug, Default)]
pub(crate) struct ContainerColumns {
    image: String,
    image_digest: String,
    name: String,
    pod_name: String,
    pod_namespace: String,
    pod_labels: BTreeMap<String, String>,
}

/// Column `i` as text, borrowed; refused as `Row::get` refuses it.
pub(crate) fn text<'r>(r: &'r Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    let v = r.get_ref(i)?;
    v.as_str().map_err(|e| column_error(r, i, v, e))
}

/// Column `i` as a blob, borrowed; refused as `Row::get` refuses it.
pub(crate) fn blob<'r>(r: &'r Row<'_>, i: usize) -> rusqlite::Result<&'r [u8]> {
    let v = r.get_ref(i)?;
    v.as_blob().map_err(|e| column_error(r, i, v, e))
}

/// The error `Row::get` gives for a value of the wrong type or form.
fn column_error(
    r: &Row<'_>,
    i: usize,
    v: rusqlite::types::ValueRef<'_>,
    e: rusqlite::types::FromSqlError,
) -> rusqlite::Error {
    match e {
        rusqlite::types::FromSqlError::InvalidType => rusqlite::Error::InvalidColumnType(
            i,
            r.as_ref().column_name(i).unwrap_or_default().to_string(),
            v.data_type(),
        ),
        rusqlite::types::FromSqlError::OutOfRange(n) => {
            rusqlite::Error::IntegralValueOutOfRange(i, n)
        }
        rusqlite::types::FromSqlError::Other(e) => {
            rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), e)
        }
        e => rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)),
    }
}

/// What a row names in other tables, as `columns_with` takes it.
struct Named<'c> {
    cgroup_path: &'c str,
    exe: Option<&'c str>,
    args: Option<&'c str>,
    parent_exe: Option<&'c str>,
    container: Option<&'c ContainerColumns>,
}

/// Whether a row's columns give back `e`'s canonical record exactly (its
/// names are ones the store reads back, its time is its nanoseconds', its
/// attribution is `path`'s, what reading the path back gives): then the
/// row keeps no record text.
pub(crate) fn restorable(e: &Event, path: &crate::events::CgroupInfo) -> bool {
    let names = [
        e.verdict,
        e.rule,
        e.hook,
        e.protocol,
        e.family,
        e.country_source,
    ];
    names.iter().all(|n| known_name(n) == *n)
        && i64::try_from(e.unix_nanos).is_ok()
        && crate::events::is_rfc3339_of(&e.time, e.unix_nanos)
        && path.pod_uid == e.pod_uid
        && path.qos == e.qos
        && path.container_id == e.container_id
        && path.runtime == e.runtime
        && path.systemd_unit == e.systemd_unit
}

/// A row that does not hold what the chain covers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Tampered(pub String);

/// Whether the columns' canonical form holds what the record holds. Records
/// written before a field existed lack its key (the column is then empty),
/// and an empty stored name reads back as `unknown`.
fn same_record(columns: &str, record: &str) -> bool {
    if columns == record {
        return true;
    }
    let (Ok(serde_json::Value::Object(c)), Ok(serde_json::Value::Object(r))) = (
        serde_json::from_str::<serde_json::Value>(columns),
        serde_json::from_str::<serde_json::Value>(record),
    ) else {
        return false;
    };
    let empty = |v: &serde_json::Value| v == "" || v == "unknown";
    c.iter().all(|(k, v)| match r.get(k) {
        Some(rv) => rv == v || (rv == "" && v == "unknown"),
        None => empty(v),
    }) && r.keys().all(|k| c.contains_key(k))
}

fn columns_of(r: &Row<'_>) -> rusqlite::Result<(i64, Event)> {
    let container = ContainerColumns {
        image: r.get::<_, Option<String>>(34)?.unwrap_or_default(),
        image_digest: r.get::<_, Option<String>>(35)?.unwrap_or_default(),
        name: r.get::<_, Option<String>>(36)?.unwrap_or_default(),
        pod_name: r.get::<_, Option<String>>(37)?.unwrap_or_default(),
        pod_namespace: r.get::<_, Option<String>>(38)?.unwrap_or_default(),
        pod_labels: super::labels_of(r.get(39)?),
    };
    let (exe, args, parent_exe): (Option<String>, Option<String>, Option<String>) =
        (r.get(29)?, r.get(30)?, r.get(33)?);
    let named = Named {
        cgroup_path: text(r, 17)?,
        exe: exe.as_deref(),
        args: args.as_deref(),
        parent_exe: parent_exe.as_deref(),
        container: Some(&container),
    };
    let (seq, mut e) = columns_with(r, named, Event::default())?;
    attribute_cached(&mut e);
    Ok((seq, e))
}

/// A row's event from its own columns (at their places in
/// `EVENT_COLUMNS`) and what it names elsewhere; not yet attributed. Its
/// strings are `old`'s, written over (`Event::default()`: new ones).
fn columns_with(r: &Row<'_>, named: Named<'_>, old: Event) -> rusqlite::Result<(i64, Event)> {
    /// `s` holding `v`, in the allocation it has.
    fn put(mut s: String, v: &str) -> String {
        s.clear();
        s.push_str(v);
        s
    }
    let t: i64 = r.get(1)?;
    let none = ContainerColumns::default();
    let c = named.container.unwrap_or(&none);
    let Event {
        policy,
        dst_ip,
        country,
        continent,
        comm,
        cgroup_path,
        dns_name,
        dns_cname,
        cloud,
        cloud_region,
        exe,
        parent_exe,
        image,
        image_digest,
        container_name,
        pod_name,
        pod_namespace,
        pod_uid,
        qos,
        container_id,
        runtime,
        systemd_unit,
        ..
    } = old;
    let e = Event {
        time: rfc3339_nanos(i128::from(t)),
        unix_nanos: i128::from(t),
        verdict: known_name(text(r, 2)?),
        policy: put(policy, text(r, 3)?),
        rule: known_name(text(r, 4)?),
        hook: known_name(text(r, 5)?),
        protocol: known_name(text(r, 6)?),
        family: known_name(text(r, 7)?),
        dst_ip: put(dst_ip, text(r, 8)?),
        dst_port: r.get(9)?,
        country: put(country, text(r, 10)?),
        continent: put(continent, text(r, 11)?),
        pid: r.get(12)?,
        tgid: r.get(13)?,
        uid: r.get(14)?,
        comm: put(comm, text(r, 15)?),
        cgroup_id: r.get::<_, i64>(16)? as u64,
        cgroup_path: put(cgroup_path, named.cgroup_path),
        policy_generation: r.get(18)?,
        dns_name: put(dns_name, text(r, 19)?),
        dns_cname: put(dns_cname, text(r, 20)?),
        cloud: put(cloud, text(r, 21)?),
        cloud_region: put(cloud_region, text(r, 22)?),
        country_source: known_name(text(r, 23)?),
        kernel_cpu: r.get(26)?,
        kernel_seq: r.get(27)?,
        drift: drift_of(text(r, 28)?),
        exe: put(exe, named.exe.unwrap_or_default()),
        // A vector that does not read back leaves the event without it,
        // and the record check then fails the row as edited.
        args: named
            .args
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default(),
        args_truncated: r.get(31)?,
        ppid: r.get(32)?,
        parent_exe: put(parent_exe, named.parent_exe.unwrap_or_default()),
        image: put(image, &c.image),
        image_digest: put(image_digest, &c.image_digest),
        container_name: put(container_name, &c.name),
        pod_name: put(pod_name, &c.pod_name),
        pod_namespace: put(pod_namespace, &c.pod_namespace),
        pod_labels: c.pod_labels.clone(),
        // Attributed after (`CgroupInfo::attribute`), empty until then.
        pod_uid: put(pod_uid, ""),
        qos: put(qos, ""),
        container_id: put(container_id, ""),
        runtime: put(runtime, ""),
        systemd_unit: put(systemd_unit, ""),
    };
    Ok((r.get(0)?, e))
}

/// The `drift` column: JSON of a drift alert's `Drift`, empty on every
/// other row. A column that does not read back leaves the event without
/// it, and the record check then fails the row as edited.
fn drift_of(column: &str) -> Option<Box<crate::events::Drift>> {
    if column.is_empty() {
        return None;
    }
    serde_json::from_str(column).ok().map(Box::new)
}

/// The `drift` column of an event (see `drift_of`).
pub(crate) fn drift_column(e: &Event) -> String {
    e.drift
        .as_deref()
        .and_then(|d| serde_json::to_string(d).ok())
        .unwrap_or_default()
}

/// `Event::attribute`, each path parsed once per thread (a store holds a
/// few hundred paths and millions of rows).
fn attribute_cached(e: &mut Event) {
    use std::cell::RefCell;
    thread_local! {
        static SEEN: RefCell<HashMap<String, crate::events::CgroupInfo>> = RefCell::new(HashMap::new());
    }
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if !seen.contains_key(&e.cgroup_path) {
            // Bounded: a store of many short-lived cgroups starts over.
            if seen.len() >= 16_384 {
                seen.clear();
            }
            let info = crate::events::CgroupInfo::of_path(e.cgroup_path.clone());
            seen.insert(e.cgroup_path.clone(), info);
        }
        seen[&e.cgroup_path].attribute(e);
    });
}

/// A cgroup's attribution (see `CgroupInfo::of_path`) and the last answer
/// its container's runtime gave, for flows (whose rows name no answer).
pub(crate) fn cgroup_info(store: &Store, path: &str) -> crate::events::CgroupInfo {
    let mut info = crate::events::CgroupInfo::of_path(path.to_string());
    if !info.container_id.is_empty() {
        info.container = store
            .conn
            .prepare_cached(
                "SELECT image, image_digest, name, pod_name, pod_namespace, pod_labels FROM containers WHERE container_id = ?1 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row([&info.container_id], |r| {
                    Ok(crate::containers::Meta {
                        image: r.get(0)?,
                        image_digest: r.get(1)?,
                        name: r.get(2)?,
                        pod_name: r.get(3)?,
                        pod_namespace: r.get(4)?,
                        pod_labels: super::labels_of(r.get(5)?),
                    })
                })
            })
            .ok()
            .map(std::sync::Arc::new);
    }
    info
}

/// Events in [since, until) after `after_seq`, in record order, that
/// `keep` accepts; at most `limit`. Returns them and whether more match.
pub fn events(
    store: &Store,
    since: i64,
    until: i64,
    after_seq: i64,
    limit: usize,
    keep: &dyn Fn(&Event) -> bool,
) -> Result<(Vec<(i64, Event)>, bool), StoreError> {
    events_where(store, since, until, after_seq, limit, Rows::All, keep)
}

/// Which rows a query reads before `keep` judges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    All,
    /// Only rows not allowed (denied, would_deny, drift): read through
    /// their own index.
    Refused,
}

impl Rows {
    /// The rows a verdict filter can match (empty: any verdict).
    pub fn for_verdicts<S: AsRef<str>>(verdicts: &[S]) -> Self {
        if !verdicts.is_empty() && verdicts.iter().all(|v| v.as_ref() != "allowed") {
            Rows::Refused
        } else {
            Rows::All
        }
    }
}

/// How far out of record order an event's time can be (events of several
/// CPUs share one ring): a query that starts from a time starts this much
/// earlier in the record and lets the time filter do the rest.
const OUT_OF_ORDER_NS: i64 = 60_000_000_000;

/// The record position a query from `since` can start after: the last
/// event recorded more than `OUT_OF_ORDER_NS` before `since`; every event
/// at or after `since` comes later in the record.
fn start_after(store: &Store, since: i64) -> Result<i64, StoreError> {
    if since <= OUT_OF_ORDER_NS {
        return Ok(0);
    }
    let seq: Option<i64> = store
        .conn
        .prepare_cached(
            "SELECT seq FROM events WHERE unix_nanos < ?1 ORDER BY unix_nanos DESC LIMIT 1",
        )
        .and_then(|mut s| {
            use rusqlite::OptionalExtension;
            s.query_row(params![since - OUT_OF_ORDER_NS], |r| r.get(0))
                .optional()
        })
        .map_err(store.err("find where the window starts"))?;
    Ok(seq.unwrap_or(0))
}

/// The record position a query up to `until` can stop before: the first
/// event recorded more than `OUT_OF_ORDER_NS` after `until`; every event
/// before `until` comes earlier in the record. `i64::MAX` when none is.
fn end_before(store: &Store, until: i64) -> Result<i64, StoreError> {
    if until >= i64::MAX - OUT_OF_ORDER_NS {
        return Ok(i64::MAX);
    }
    let seq: Option<i64> = store
        .conn
        .prepare_cached("SELECT seq FROM events WHERE unix_nanos >= ?1 ORDER BY unix_nanos LIMIT 1")
        .and_then(|mut s| {
            use rusqlite::OptionalExtension;
            s.query_row(params![until + OUT_OF_ORDER_NS], |r| r.get(0))
                .optional()
        })
        .map_err(store.err("find where the window ends"))?;
    Ok(seq.unwrap_or(i64::MAX))
}

/// `events`, reading only `rows`: the filters SQL can apply are applied
/// there (the window, the record position, refusals by their index),
/// `keep` judges the rest.
pub fn events_where(
    store: &Store,
    since: i64,
    until: i64,
    after_seq: i64,
    limit: usize,
    rows: Rows,
    keep: &dyn Fn(&Event) -> bool,
) -> Result<(Vec<(i64, Event)>, bool), StoreError> {
    let mut out = Vec::new();
    let from = match rows {
        Rows::All => "events",
        Rows::Refused => "events INDEXED BY events_refused",
    };
    let refused = match rows {
        Rows::All => "",
        Rows::Refused => "verdict != 'allowed' AND ",
    };
    let mut stmt = store
        .conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM {from} WHERE {refused}seq > ?1 AND seq < ?5 AND +unix_nanos >= ?2 AND +unix_nanos < ?3 ORDER BY seq LIMIT ?4"
        ))
        .map_err(store.err("prepare event query"))?;
    // The window is turned into a range of record positions (read in
    // order by the primary key); the times only filter within it. Left to
    // itself, SQLite walks the time index over the whole window and sorts
    // it, for every chunk: the publisher's batches from an old position
    // became quadratic.
    let mut cursor = after_seq.max(start_after(store, since)?);
    let end = end_before(store, until)?;
    // Rows read (and checked against their hash) at once: no more than
    // the answer can take when every row is kept (the publisher's batch
    // reads its 512, not 4096), growing while a filter leaves rows out.
    let mut chunk_rows = limit.saturating_add(1).clamp(1, 4096);
    loop {
        let chunk: Vec<(i64, Event)> = stmt
            .query_map(
                params![cursor, since, until, chunk_rows as i64, end],
                event_of,
            )
            .and_then(|rows| rows.collect())
            .map_err(store.err("query events"))?;
        let Some(last) = chunk.last() else {
            return Ok((out, false));
        };
        cursor = last.0;
        chunk_rows = (chunk_rows * 2).min(4096);
        for (seq, e) in chunk {
            if keep(&e) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push((seq, e));
            }
        }
    }
}

/// Rows `last_events` looks at, at most, for one answer.
const LAST_EVENTS_SCAN: usize = 1 << 20;

/// The newest `limit` events older than `before` that `keep` takes, oldest
/// first (the history a stream client asks for when memory holds less).
pub fn last_events(
    store: &Store,
    before: i64,
    limit: usize,
    keep: &dyn Fn(&Event) -> bool,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mut stmt = store
        .conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq < ?1 AND unix_nanos < ?2 ORDER BY seq DESC LIMIT 4096"
        ))
        .map_err(store.err("prepare event query"))?;
    let mut cursor = i64::MAX;
    let mut scanned = 0;
    while scanned < LAST_EVENTS_SCAN {
        let chunk: Vec<(i64, Event)> = stmt
            .query_map(params![cursor, before], event_of)
            .and_then(|rows| rows.collect())
            .map_err(store.err("query events"))?;
        let Some(last) = chunk.last() else {
            break;
        };
        cursor = last.0;
        scanned += chunk.len();
        for (_, e) in chunk {
            if keep(&e) {
                out.push(e);
                if out.len() == limit {
                    out.reverse();
                    return Ok(out);
                }
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// What flows can be grouped by.
pub const GROUP_FIELDS: [&str; 14] = [
    "cgroup",
    "pod",
    "process",
    "exe",
    "image",
    "country",
    "continent",
    "destination",
    "port",
    "protocol",
    "verdict",
    "policy",
    "name",
    "cloud",
];

/// How flows are ordered.
pub const SORTS: [&str; 4] = ["count", "first_seen", "last_seen", "destination"];

/// cgroup, comm, destination, port, protocol, verdict, policy, name,
/// executable.
type FlowKey = (
    String,
    String,
    String,
    u16,
    String,
    String,
    String,
    String,
    String,
);

/// The key columns of the flows table, and its place columns.
const FLOW_KEY: &str =
    "(SELECT path FROM cgroup_paths WHERE id = cgroup), comm, dst_ip, dst_port, protocol, verdict, policy, max(country), max(continent), dns_name, max(cloud_region)";
/// A flow row's cgroup path.
const FLOW_CGROUP: &str = "(SELECT path FROM cgroup_paths WHERE id = cgroup)";
/// The same from the events table (which keeps provider and region apart).
const EVENT_FLOW_KEY: &str = "CASE WHEN cgroup_ref = 0 THEN cgroup_path ELSE (SELECT path FROM cgroup_paths WHERE id = cgroup_ref) END AS path, comm, dst_ip, dst_port, protocol, verdict, policy, max(country), max(continent), dns_name, CASE WHEN max(cloud) = '' THEN '' ELSE max(cloud) || ':' || max(cloud_region) END";
const FLOW_GROUP: &str = "cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name, exe";
const EVENT_FLOW_GROUP: &str =
    "path, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name, exe_ref";
/// An event row's cgroup path and cloud place, as `EVENT_FLOW_KEY` has them.
const EVENT_CGROUP: &str = "CASE WHEN cgroup_ref = 0 THEN cgroup_path ELSE (SELECT path FROM cgroup_paths WHERE id = cgroup_ref) END";
const EVENT_CLOUD: &str =
    "CASE WHEN max(cloud) = '' THEN '' ELSE max(cloud) || ':' || max(cloud_region) END";
/// An event row's executable path (as `FLOW_EXE` for flow rows).
const EVENT_EXE: &str = "(SELECT path FROM executables WHERE id = exe_ref)";

/// Flows in [since, until): whole minutes from the flow table, the partial
/// minutes at the edges from the events themselves, so the counts are
/// exact for any window. `by_process` (a pid or uid filter) aggregates
/// from events only, since flows do not keep them.
pub fn flows(
    store: &Store,
    since: i64,
    until: i64,
    keep: &dyn Fn(&Event) -> bool,
    by_process: bool,
) -> Result<Vec<Flow>, StoreError> {
    let mut parts: Vec<Flow> = Vec::new();
    if by_process {
        // A drift alert is about an attempt its own event counts.
        let (events, _) = events(store, since, until, 0, usize::MAX, &|e| {
            e.drift.is_none() && keep(e)
        })?;
        for (_, e) in events {
            let t = e.unix_nanos as i64;
            let cloud_region = crate::store::cloud_place(&e);
            parts.push(Flow {
                cgroup_path: e.cgroup_path,
                comm: e.comm,
                exe: e.exe,
                dst_ip: e.dst_ip,
                dst_port: e.dst_port,
                protocol: e.protocol.to_string(),
                verdict: e.verdict.to_string(),
                policy: e.policy,
                cloud_region,
                dns_name: e.dns_name,
                country: e.country,
                continent: e.continent,
                first_seen: t,
                last_seen: t,
                count: 1,
                packets: 0,
                bytes: 0,
                pod_uid: String::new(),
                image: e.image,
            });
        }
    } else {
        let first_full = bucket_of(since) + if since % MINUTE == 0 { 0 } else { MINUTE };
        let end_full = bucket_of(until);
        let mut edges = Vec::new();
        if first_full < end_full {
            // The minute rows as stored, merged below (a hash merge here
            // is several times faster than SQL's sort for GROUP BY); the
            // paths by id, read once.
            let paths: HashMap<i64, String> = store
                .conn
                .prepare_cached("SELECT id, path FROM cgroup_paths")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(store.err("read cgroup paths"))?;
            let mut stmt = store
                .conn
                .prepare_cached(
                    &format!("SELECT cgroup, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, dns_name, cloud_region, first_seen, last_seen, count + repeats, packets, bytes, {FLOW_EXE} FROM flows WHERE bucket >= ?1 AND bucket < ?2"),
                )
                .map_err(store.err("prepare flow query"))?;
            let rows = stmt
                .query_map(params![first_full, end_full], |r| {
                    let id: i64 = r.get(0)?;
                    flow_row(r, paths.get(&id).cloned().unwrap_or_default())
                })
                .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                .map_err(store.err("query flows"))?;
            parts.extend(rows);
            edges.push((since, first_full));
            edges.push((end_full, until));
        } else {
            edges.push((since, until));
        }
        parts.extend(edge_flows(store, &edges)?);
    }
    // Merge the parts by key, then filter on the whole key; a path is
    // attributed once, not once per flow.
    let mut merged: HashMap<FlowKey, Flow> = HashMap::with_capacity(parts.len());
    for f in parts {
        let key = key_of(&f);
        match merged.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut m) => merge_flow(m.get_mut(), f),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(f);
            }
        }
    }
    let mut attributed: HashMap<String, crate::events::CgroupInfo> = HashMap::new();
    let mut out: Vec<Flow> = merged
        .into_values()
        .filter_map(|mut f| {
            let info = attributed
                .entry(f.cgroup_path.clone())
                .or_insert_with(|| cgroup_info(store, &f.cgroup_path));
            let e = f.as_event(info);
            f.pod_uid = e.pod_uid.clone();
            if f.image.is_empty() {
                f.image = e.image.clone();
            }
            (by_process || keep(&e)).then_some(f)
        })
        .collect();
    // In key order, as before (callers sort; ties stay stable).
    out.sort_by(|a, b| {
        (
            &a.cgroup_path,
            &a.comm,
            &a.dst_ip,
            a.dst_port,
            &a.protocol,
            &a.verdict,
            &a.policy,
            &a.dns_name,
            &a.exe,
        )
            .cmp(&(
                &b.cgroup_path,
                &b.comm,
                &b.dst_ip,
                b.dst_port,
                &b.protocol,
                &b.verdict,
                &b.policy,
                &b.dns_name,
                &b.exe,
            ))
    });
    Ok(out)
}

/// A flow's key, owned.
fn key_of(f: &Flow) -> FlowKey {
    (
        f.cgroup_path.clone(),
        f.comm.clone(),
        f.dst_ip.clone(),
        f.dst_port,
        f.protocol.clone(),
        f.verdict.clone(),
        f.policy.clone(),
        f.dns_name.clone(),
        f.exe.clone(),
    )
}

/// A flow's key, borrowed (for comparing in key order).
type KeyRef<'a> = (
    &'a str,
    &'a str,
    &'a str,
    u16,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);

fn key_ref(f: &Flow) -> KeyRef<'_> {
    (
        &f.cgroup_path,
        &f.comm,
        &f.dst_ip,
        f.dst_port,
        &f.protocol,
        &f.verdict,
        &f.policy,
        &f.dns_name,
        &f.exe,
    )
}

/// Adds `f` (same key) into `m`.
fn merge_flow(m: &mut Flow, f: Flow) {
    m.first_seen = m.first_seen.min(f.first_seen);
    m.last_seen = m.last_seen.max(f.last_seen);
    m.count += f.count;
    m.packets += f.packets;
    m.bytes += f.bytes;
    // As SQL's max() over the minutes did.
    if f.country > m.country {
        m.country = f.country;
    }
    if f.continent > m.continent {
        m.continent = f.continent;
    }
    if f.cloud_region > m.cloud_region {
        m.cloud_region = f.cloud_region;
    }
}

/// The flows of the partial minutes at a window's edges: from the events
/// themselves, and the kernel's repeats of those minutes whose last
/// harvest falls inside (repeats are kept per minute).
fn edge_flows(store: &Store, edges: &[(i64, i64)]) -> Result<Vec<Flow>, StoreError> {
    let mut parts = Vec::new();
    let mut stmt = store
        .conn
        .prepare_cached(&format!(
            "SELECT {EVENT_FLOW_KEY}, min(unix_nanos), max(unix_nanos), count(*), 0, 0, {EVENT_EXE} FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2 AND drift = '' GROUP BY {EVENT_FLOW_GROUP}"
        ))
        .map_err(store.err("prepare edge query"))?;
    let mut repeats = store
        .conn
        .prepare_cached(&format!(
            "SELECT {FLOW_KEY}, min(repeat_last), max(repeat_last), sum(repeats), sum(packets), sum(bytes), {FLOW_EXE} FROM flows WHERE bucket >= ?1 AND bucket <= ?2 AND repeat_last >= ?3 AND repeat_last < ?4 GROUP BY {FLOW_GROUP}"
        ))
        .map_err(store.err("prepare edge repeats query"))?;
    for &(a, b) in edges {
        if a >= b {
            continue;
        }
        let rows: Vec<Flow> = stmt
            .query_map(params![a, b], flow_of)
            .and_then(|r| r.collect())
            .map_err(store.err("query edge flows"))?;
        parts.extend(rows);
        let rows: Vec<Flow> = repeats
            .query_map(params![bucket_of(a), bucket_of(b), a, b], flow_of)
            .and_then(|r| r.collect())
            .map_err(store.err("query edge repeats"))?;
        parts.extend(rows);
    }
    Ok(parts)
}

/// `flows`, streamed in key order to `each` (the kept ones, attributed;
/// with `Rows::Refused` only the denied and would-deny ones, the others
/// never read): memory stays flat however many flows the window holds. The whole
/// minutes are sorted by SQLite (its sorter spills to temporary files) and
/// merged as they come; only the partial minutes at the edges are held.
/// Returns how many flows `each` got.
pub fn flows_each(
    store: &Store,
    since: i64,
    until: i64,
    keep: &dyn Fn(&Event) -> bool,
    by_process: bool,
    rows: Rows,
    each: &mut dyn FnMut(Flow) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    flows_each_in(store, since, until, keep, by_process, rows, each, false)
}

/// `flows_each`, SQLite sorting the flows by the rank of their cgroup
/// path among the paths (a number) instead of by the path: the same flows
/// in the same order. An export's 1M flows sorted in 2.1-2.4 s instead of
/// 3.0-4.2 s (a path is a long text, most of the sorter's bytes and
/// comparisons). The ranks are kept in temporary tables of the
/// connection for the query.
pub(crate) fn flows_each_ranked(
    store: &Store,
    since: i64,
    until: i64,
    keep: &dyn Fn(&Event) -> bool,
    by_process: bool,
    rows: Rows,
    each: &mut dyn FnMut(Flow) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    flows_each_in(store, since, until, keep, by_process, rows, each, true)
}

/// The temporary tables of `flows_each_ranked`: a path's rank by its id,
/// and by its text (for events that keep their path).
const RANK_BY_ID: &str = "temp.egress_export_path_rank";
const RANK_BY_TEXT: &str = "temp.egress_export_path_text_rank";

/// Every cgroup path the flows of `edges` can name, in order (SQLite's
/// order of texts, byte by byte, is Rust's), with the empty path that
/// stands for one not found; their ranks are put in `RANK_BY_ID` and
/// `RANK_BY_TEXT`. Returns the paths (a rank is a place in it) and the
/// empty path's rank.
fn rank_paths(store: &Store, edges: &[(i64, i64)]) -> Result<(Vec<String>, i64), StoreError> {
    let by_id: Vec<(i64, String)> = store
        .conn
        .prepare("SELECT id, path FROM cgroup_paths")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(store.err("read cgroup paths"))?;
    // Events whose path is in the row (`cgroup_ref` 0), at the edges.
    let mut kept = std::collections::BTreeSet::new();
    for &(a, b) in edges {
        if a >= b {
            continue;
        }
        let mut stmt = store
            .conn
            .prepare_cached("SELECT DISTINCT cgroup_path FROM events WHERE unix_nanos >= ?1 AND unix_nanos < ?2 AND drift = '' AND cgroup_ref = 0")
            .map_err(store.err("prepare edge path query"))?;
        let paths = stmt
            .query_map(params![a, b], |r| r.get::<_, String>(0))
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(store.err("read edge paths"))?;
        kept.extend(paths);
    }
    let mut all: std::collections::BTreeSet<&str> = by_id.iter().map(|(_, p)| p.as_str()).collect();
    all.extend(kept.iter().map(String::as_str));
    all.insert("");
    let paths: Vec<String> = all.into_iter().map(str::to_string).collect();
    let rank: HashMap<&str, i64> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i as i64))
        .collect();
    let tables = || -> rusqlite::Result<()> {
        store.conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {RANK_BY_ID} (id INTEGER PRIMARY KEY, rank INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS {RANK_BY_TEXT} (path TEXT PRIMARY KEY, rank INTEGER NOT NULL) WITHOUT ROWID;
             DELETE FROM {RANK_BY_ID}; DELETE FROM {RANK_BY_TEXT};"
        ))?;
        let mut ins = store.conn.prepare(&format!(
            "INSERT INTO {RANK_BY_ID} (id, rank) VALUES (?1, ?2)"
        ))?;
        for (id, p) in &by_id {
            ins.execute(params![id, rank[p.as_str()]])?;
        }
        let mut ins = store.conn.prepare(&format!(
            "INSERT INTO {RANK_BY_TEXT} (path, rank) VALUES (?1, ?2)"
        ))?;
        for p in &kept {
            ins.execute(params![p, rank[p.as_str()]])?;
        }
        Ok(())
    };
    tables().map_err(store.err("rank cgroup paths"))?;
    let empty = rank[""];
    Ok((paths, empty))
}

#[allow(clippy::too_many_arguments)]
fn flows_each_in(
    store: &Store,
    since: i64,
    until: i64,
    keep: &dyn Fn(&Event) -> bool,
    by_process: bool,
    rows: Rows,
    each: &mut dyn FnMut(Flow) -> anyhow::Result<()>,
    ranked: bool,
) -> anyhow::Result<usize> {
    let mut n = 0;
    if by_process {
        // From the events of the selected processes only.
        for f in flows(store, since, until, keep, by_process)? {
            if rows == Rows::Refused && f.verdict == "allowed" {
                continue;
            }
            each(f)?;
            n += 1;
        }
        return Ok(n);
    }
    // The verdict is part of a flow's key: whole flows are left out.
    let refused = match rows {
        Rows::All => "",
        Rows::Refused => " AND verdict != 'allowed'",
    };
    let first_full = bucket_of(since) + if since % MINUTE == 0 { 0 } else { MINUTE };
    let end_full = bucket_of(until);
    let edges = if first_full < end_full {
        vec![(since, first_full), (end_full, until)]
    } else {
        vec![(since, until)]
    };
    // The paths by rank, and the SQL of a flow row's and of an event's
    // path (or rank).
    let (paths, flow_path, event_path) = if ranked {
        let (paths, empty) = rank_paths(store, &edges)?;
        (
            paths,
            format!("coalesce((SELECT rank FROM {RANK_BY_ID} WHERE id = cgroup), {empty})"),
            format!("coalesce(CASE WHEN cgroup_ref = 0 THEN (SELECT rank FROM {RANK_BY_TEXT} WHERE path = cgroup_path) ELSE (SELECT rank FROM {RANK_BY_ID} WHERE id = cgroup_ref) END, {empty})"),
        )
    } else {
        (
            Vec::new(),
            format!("coalesce({FLOW_CGROUP}, '')"),
            format!("coalesce({EVENT_CGROUP}, '')"),
        )
    };
    // One statement for the whole window, sorted by SQLite on the flow key
    // (its sorter spills to temporary files): the partial minutes at the
    // edges, from the events and from the kernel's repeats of those
    // minutes whose last harvest falls inside, and the whole minutes from
    // the flow table. Rows of one key come together and are merged here,
    // so memory holds one flow, not the edges (a flood's edge minute is
    // hundreds of thousands of flows). The key's text columns are never
    // NULL, so SQLite's order of equal keys is Rust's.
    let mut parts = Vec::new();
    let mut args: Vec<i64> = Vec::new();
    let mut arg = |v: i64| {
        args.push(v);
        format!("?{}", args.len())
    };
    for &(a, b) in &edges {
        if a >= b {
            continue;
        }
        parts.push(format!(
            "SELECT {event_path} AS path, comm, dst_ip, dst_port, protocol, verdict, policy, max(country), max(continent), dns_name, {EVENT_CLOUD}, min(unix_nanos), max(unix_nanos), count(*), 0, 0, coalesce({EVENT_EXE}, '') FROM events WHERE unix_nanos >= {} AND unix_nanos < {} AND drift = ''{refused} GROUP BY {EVENT_FLOW_GROUP}",
            arg(a),
            arg(b)
        ));
        parts.push(format!(
            "SELECT {flow_path}, comm, dst_ip, dst_port, protocol, verdict, policy, max(country), max(continent), dns_name, max(cloud_region), min(repeat_last), max(repeat_last), sum(repeats), sum(packets), sum(bytes), coalesce({FLOW_EXE}, '') FROM flows WHERE bucket >= {} AND bucket <= {} AND repeat_last >= {} AND repeat_last < {}{refused} GROUP BY {FLOW_GROUP}",
            arg(bucket_of(a)),
            arg(bucket_of(b)),
            arg(a),
            arg(b)
        ));
    }
    if first_full < end_full {
        parts.push(format!(
            "SELECT {flow_path}, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, dns_name, cloud_region, first_seen, last_seen, count + repeats, packets, bytes, coalesce({FLOW_EXE}, '') FROM flows WHERE bucket >= {} AND bucket < {}{refused}",
            arg(first_full),
            arg(end_full)
        ));
    }
    if parts.is_empty() {
        return Ok(0);
    }
    // The key: path, comm, dst_ip, dst_port, protocol, verdict, policy,
    // dns_name, executable (as `key_ref`).
    let sql = format!(
        "{} ORDER BY 1, 2, 3, 4, 5, 6, 7, 10, 17",
        parts.join(" UNION ALL ")
    );
    let mut stmt = store
        .conn
        .prepare(&sql)
        .map_err(store.err("prepare flow query"))?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args.iter()))
        .map_err(store.err("query flows"))?;
    // The last path's attribution: rows come in path order.
    let mut info: Option<crate::events::CgroupInfo> = None;
    let mut emit = |mut f: Flow, n: &mut usize| -> anyhow::Result<()> {
        if info.as_ref().is_none_or(|i| i.path != f.cgroup_path) {
            info = Some(cgroup_info(store, &f.cgroup_path));
        }
        let e = f.as_event(info.as_ref().expect("set above"));
        f.pod_uid = e.pod_uid.clone();
        f.image = e.image.clone();
        if keep(&e) {
            *n += 1;
            each(f)?;
        }
        Ok(())
    };
    let mut current: Option<Flow> = None;
    // A rank's path (each rank is a place in `paths`).
    let path_of = |r: &Row<'_>| -> rusqlite::Result<String> {
        let rank: i64 = r.get(0)?;
        usize::try_from(rank)
            .ok()
            .and_then(|i| paths.get(i))
            .cloned()
            .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, rank))
    };
    // The errors made only where there is one (each names the store's
    // path, a copy).
    while let Some(r) = rows.next().map_err(|e| store.err("read flows")(e))? {
        let f = if ranked {
            path_of(r).and_then(|p| flow_row(r, p))
        } else {
            flow_of(r)
        }
        .map_err(|e| store.err("read a flow row")(e))?;
        match &mut current {
            Some(c) if key_ref(c) == key_ref(&f) => merge_flow(c, f),
            _ => {
                if let Some(done) = current.replace(f) {
                    emit(done, &mut n)?;
                }
            }
        }
    }
    if let Some(done) = current {
        emit(done, &mut n)?;
    }
    Ok(n)
}

/// Folds flows into groups: the fields not grouped by are left empty.
/// `group(flows(..), by)` computed by SQL: the window's whole hours from
/// the hourly sums where one keeps what the grouping and the filter use
/// (see `rollup`), its whole minutes from the flow table, its partial
/// minutes at the edges as `flows` reads them; for a filter SQL can apply
/// to flow rows (`filter`). None when `by` needs what only the path tells
/// (pods).
pub fn flows_grouped(
    store: &Store,
    since: i64,
    until: i64,
    by: &[String],
    filter: &FlowFilter,
    keep: &dyn Fn(&Event) -> bool,
) -> Option<Result<Vec<Flow>, StoreError>> {
    // Pods and images are not columns of the flow rows: grouped in memory.
    if by.is_empty() || by.iter().any(|b| b == "pod" || b == "image") {
        return None;
    }
    let run = || -> Result<Vec<Flow>, StoreError> {
        let mut parts = Vec::new();
        match super::rollup::grouped(store, since, until, by, filter) {
            Some(hours) => {
                let (rows, (first, end)) = hours?;
                parts.extend(rows);
                parts.extend(minutes_grouped(store, since, first, by, filter, keep)?);
                parts.extend(minutes_grouped(store, end, until, by, filter, keep)?);
            }
            None => parts.extend(minutes_grouped(store, since, until, by, filter, keep)?),
        }
        Ok(group(parts, by))
    };
    Some(run())
}

/// The flows of [since, until) for `flows_grouped` from the flow minutes,
/// each minute's rows summed by SQL (not yet folded across minutes).
fn minutes_grouped(
    store: &Store,
    since: i64,
    until: i64,
    by: &[String],
    filter: &FlowFilter,
    keep: &dyn Fn(&Event) -> bool,
) -> Result<Vec<Flow>, StoreError> {
    if since >= until {
        return Ok(Vec::new());
    }
    let has = |f: &str| by.iter().any(|b| b == f);
    let pick = |on: bool, col: &str| {
        if on {
            col.to_string()
        } else {
            "''".to_string()
        }
    };
    // The group's columns, as stored (the cgroup and executable by id):
    // summed here by a hash of them, not by SQL's GROUP BY, which sorts
    // every row of the window's edge hours first (tens of thousands a
    // node-hour; the sort was 40% of `flows --group-by country` in a
    // profile of `bench store-query`).
    let dims = [
        if has("cgroup") {
            "cgroup".into()
        } else {
            "0".into()
        },
        pick(has("process"), "comm"),
        pick(has("destination"), "dst_ip"),
        if has("port") {
            "dst_port".into()
        } else {
            "0".into()
        },
        pick(has("protocol"), "protocol"),
        pick(has("verdict"), "verdict"),
        pick(has("policy"), "policy"),
        pick(has("country") || has("destination"), "country"),
        pick(
            has("continent") || has("country") || has("destination"),
            "continent",
        ),
        pick(has("name"), "dns_name"),
        pick(has("cloud") || has("destination"), "cloud_region"),
    ];
    let first_full = bucket_of(since) + if since % MINUTE == 0 { 0 } else { MINUTE };
    let end_full = bucket_of(until);
    let mut parts = Vec::new();
    if first_full < end_full {
        let sql = format!(
            "SELECT {}, first_seen, last_seen, count + repeats, packets, bytes, {} FROM flows WHERE bucket >= ? AND bucket < ? AND {}",
            dims.join(", "),
            if has("exe") { "exe" } else { "0" },
            filter.sql,
        );
        let mut stmt = store
            .conn
            .prepare_cached(&sql)
            .map_err(store.err("prepare grouped flow query"))?;
        let mut values = vec![
            rusqlite::types::Value::Integer(first_full),
            rusqlite::types::Value::Integer(end_full),
        ];
        values.extend(filter.values.iter().cloned());
        let rows = stmt
            .query(rusqlite::params_from_iter(values))
            .map_err(store.err("query grouped flows"))?;
        let rows = sum_by_key(store, rows).map_err(store.err("query grouped flows"))?;
        parts.extend(rows);
        for (a, b) in [(since, first_full), (end_full, until)] {
            if a < b {
                parts.extend(edge_grouped(store, a, b, by, keep)?);
            }
        }
    } else {
        parts.extend(edge_grouped(store, since, until, by, keep)?);
    }
    Ok(parts)
}

/// Rows of `minutes_grouped`'s query (the cgroup's id, ten more columns
/// of the key, first and last seen, count, packets, bytes, the
/// executable's id) summed by their key: one flow per key, its paths
/// looked up once per id.
fn sum_by_key(store: &Store, mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<Vec<Flow>> {
    use rusqlite::{types::ValueRef, OptionalExtension};
    /// A key column's bytes, then its length (so no two keys' columns
    /// run together).
    fn push(key: &mut Vec<u8>, v: ValueRef<'_>) {
        let bytes: &[u8] = match v {
            ValueRef::Text(t) | ValueRef::Blob(t) => t,
            ValueRef::Integer(i) => {
                key.extend_from_slice(&i.to_le_bytes());
                &[]
            }
            ValueRef::Null | ValueRef::Real(_) => &[],
        };
        key.extend_from_slice(bytes);
        key.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    }
    let mut groups: HashMap<Vec<u8>, (Flow, i64, i64)> = HashMap::new();
    let mut key = Vec::with_capacity(256);
    while let Some(r) = rows.next()? {
        key.clear();
        for i in 0..11 {
            push(&mut key, r.get_ref(i)?);
        }
        let exe: i64 = r.get(16)?;
        key.extend_from_slice(&exe.to_le_bytes());
        let (first, last): (i64, i64) = (r.get(11)?, r.get(12)?);
        let (count, packets, bytes): (i64, i64, i64) = (r.get(13)?, r.get(14)?, r.get(15)?);
        if let Some((f, _, _)) = groups.get_mut(key.as_slice()) {
            f.first_seen = f.first_seen.min(first);
            f.last_seen = f.last_seen.max(last);
            f.count += count as u64;
            f.packets += packets as u64;
            f.bytes += bytes as u64;
            continue;
        }
        let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        let place = text(10)?;
        let flow = Flow {
            cgroup_path: String::new(),
            comm: text(1)?,
            dst_ip: text(2)?,
            dst_port: r.get(3)?,
            protocol: text(4)?,
            verdict: text(5)?,
            policy: text(6)?,
            country: text(7)?,
            continent: text(8)?,
            dns_name: text(9)?,
            // Rows of earlier versions: `cloudflare:` for no region.
            cloud_region: match place.strip_suffix(':') {
                Some(provider) => provider.to_string(),
                None => place,
            },
            first_seen: first,
            last_seen: last,
            count: count as u64,
            packets: packets as u64,
            bytes: bytes as u64,
            exe: String::new(),
            image: String::new(),
            pod_uid: String::new(),
        };
        groups.insert(key.clone(), (flow, r.get(0)?, exe));
    }
    // A path by its id, looked up once.
    let path_of =
        |cache: &mut HashMap<i64, String>, sql: &str, id: i64| -> rusqlite::Result<String> {
            if let Some(p) = cache.get(&id) {
                return Ok(p.clone());
            }
            let p: Option<String> = store
                .conn
                .prepare_cached(sql)?
                .query_row([id], |r| r.get(0))
                .optional()?;
            let p = p.unwrap_or_default();
            cache.insert(id, p.clone());
            Ok(p)
        };
    let (mut paths, mut exes) = (HashMap::new(), HashMap::new());
    let mut out = Vec::with_capacity(groups.len());
    for (_, (mut f, cgroup, exe)) in groups {
        if cgroup != 0 {
            f.cgroup_path = path_of(
                &mut paths,
                "SELECT path FROM cgroup_paths WHERE id = ?1",
                cgroup,
            )?;
        }
        if exe != 0 {
            f.exe = path_of(&mut exes, "SELECT path FROM executables WHERE id = ?1", exe)?;
        }
        out.push(f);
    }
    Ok(out)
}

/// The flows of partial minutes [since, until) for `minutes_grouped`,
/// streamed into their groups: a flood's edge minute is hundreds of
/// thousands of flows, and holding every one of them was the daemon's
/// largest peak (a heap profile of `bench pipeline`: 780 MB for `flows
/// --group-by country`).
fn edge_grouped(
    store: &Store,
    since: i64,
    until: i64,
    by: &[String],
    keep: &dyn Fn(&Event) -> bool,
) -> Result<Vec<Flow>, StoreError> {
    let mut groups = Grouper::new(by);
    flows_each(store, since, until, keep, false, Rows::All, &mut |f| {
        groups.add(f);
        Ok(())
    })
    .map_err(|e| match e.downcast::<StoreError>() {
        Ok(e) => e,
        Err(e) => StoreError::Other {
            path: store.path.clone(),
            reason: format!("{e:#}"),
        },
    })?;
    Ok(groups.finish())
}

pub fn group(flows: Vec<Flow>, by: &[String]) -> Vec<Flow> {
    let mut g = Grouper::new(by);
    for f in flows {
        g.add(f);
    }
    g.finish()
}

/// `group`, one flow at a time: what it holds is the groups (or, with no
/// grouping, the flows given), not every flow of the window.
pub struct Grouper {
    by: Vec<String>,
    groups: BTreeMap<Vec<String>, Flow>,
    ungrouped: Vec<Flow>,
}

impl Grouper {
    pub fn new(by: &[String]) -> Self {
        Self {
            by: by.to_vec(),
            groups: BTreeMap::new(),
            ungrouped: Vec::new(),
        }
    }

    pub fn add(&mut self, f: Flow) {
        let by = &self.by;
        if by.is_empty() {
            self.ungrouped.push(f);
            return;
        }
        let has = |f: &str| by.iter().any(|b| b == f);
        let g = Flow {
            cgroup_path: if has("cgroup") {
                f.cgroup_path
            } else {
                String::new()
            },
            pod_uid: if has("pod") { f.pod_uid } else { String::new() },
            comm: if has("process") {
                f.comm
            } else {
                String::new()
            },
            exe: if has("exe") { f.exe } else { String::new() },
            image: if has("image") { f.image } else { String::new() },
            dst_ip: if has("destination") {
                f.dst_ip
            } else {
                String::new()
            },
            dst_port: if has("port") { f.dst_port } else { 0 },
            protocol: if has("protocol") {
                f.protocol
            } else {
                String::new()
            },
            verdict: if has("verdict") {
                f.verdict
            } else {
                String::new()
            },
            policy: if has("policy") {
                f.policy
            } else {
                String::new()
            },
            country: if has("country") || has("destination") {
                f.country
            } else {
                String::new()
            },
            continent: if has("continent") || has("country") || has("destination") {
                f.continent
            } else {
                String::new()
            },
            dns_name: if has("name") {
                f.dns_name
            } else {
                String::new()
            },
            cloud_region: if has("cloud") || has("destination") {
                f.cloud_region
            } else {
                String::new()
            },
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            count: f.count,
            packets: f.packets,
            bytes: f.bytes,
        };
        let key = vec![
            g.cgroup_path.clone(),
            g.pod_uid.clone(),
            g.comm.clone(),
            g.exe.clone(),
            g.image.clone(),
            g.dst_ip.clone(),
            g.dst_port.to_string(),
            g.protocol.clone(),
            g.verdict.clone(),
            g.policy.clone(),
            g.country.clone(),
            g.continent.clone(),
            g.dns_name.clone(),
            g.cloud_region.clone(),
        ];
        self.groups
            .entry(key)
            .and_modify(|m| {
                m.first_seen = m.first_seen.min(g.first_seen);
                m.last_seen = m.last_seen.max(g.last_seen);
                m.count += g.count;
                m.packets += g.packets;
                m.bytes += g.bytes;
            })
            .or_insert(g);
    }

    pub fn finish(self) -> Vec<Flow> {
        if self.by.is_empty() {
            return self.ungrouped;
        }
        self.groups.into_values().collect()
    }
}

/// Orders flows: `count` and `last_seen` largest first, `first_seen`
/// earliest first, `destination` by address; ties by key.
pub fn sort(flows: &mut [Flow], by: &str) {
    // Borrowed, not cloned per comparison (a day holds millions of flows).
    fn key(f: &Flow) -> (&str, &str, &str, u16, &str) {
        (&f.cgroup_path, &f.comm, &f.dst_ip, f.dst_port, &f.verdict)
    }
    match by {
        "first_seen" => flows.sort_by(|a, b| (a.first_seen, key(a)).cmp(&(b.first_seen, key(b)))),
        "last_seen" => flows.sort_by(|a, b| {
            (std::cmp::Reverse(a.last_seen), key(a)).cmp(&(std::cmp::Reverse(b.last_seen), key(b)))
        }),
        "destination" => flows.sort_by_cached_key(|f| {
            (
                f.dst_ip.parse::<std::net::IpAddr>().ok(),
                f.dst_port,
                f.cgroup_path.clone(),
                f.comm.clone(),
                f.dst_ip.clone(),
                f.verdict.clone(),
            )
        }),
        _ => flows.sort_by(|a, b| {
            (std::cmp::Reverse(a.count), key(a)).cmp(&(std::cmp::Reverse(b.count), key(b)))
        }),
    }
}
