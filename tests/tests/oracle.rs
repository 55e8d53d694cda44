//! A differential test: the kernel's verdict and rule for every decision
//! against the userspace decision code (`monitor::policy::simulate`),
//! while random policy sets are switched in every 100 ms.
//!
//! The policy sets (seeded, so a failure repeats) mix countries, continents,
//! groups, allow and deny CIDRs around the destinations (overlapping, from
//! /8 to single addresses) and cloud-region patterns, in both modes. The
//! destinations are drawn from the real CC0 database (IPv4, IPv6, and IPv4
//! again as IPv4-mapped IPv6) and the real cloud snapshot. Every connect
//! goes to a destination and port of its own (so each is a first decision,
//! with an event) from a selected cgroup in a dead-end namespace (loopback
//! and blackhole routes: the hooks judge, then an allowed connect fails
//! with EINVAL; no packet is built). Each event names the policy, and so
//! the set, it was decided under: its verdict and rule must be what that
//! set decides, its policy generation must belong to that set alone (no
//! decision by half a policy), and the errno the application saw must
//! agree with the event.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use integration_tests::{judgeable, s, DeadEnd, TestEnv};
use monitor::{
    cloud::CloudRanges,
    geo::{from_u128, GeoDb},
    policy::simulate::simulate,
};
use serde_json::Value;

const DECISIONS: usize = 20_000;
const BATCH: usize = 200;

/// The destinations: (text to connect to, address the policy judges).
fn pool(db: &GeoDb, cloud: &CloudRanges, rng: &mut fastrand::Rng) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut push = |ip: IpAddr, mapped: bool| {
        if !judgeable(ip) {
            return;
        }
        let text = match (ip, mapped) {
            (IpAddr::V4(v4), true) => v4.to_ipv6_mapped().to_string(),
            _ => ip.to_string(),
        };
        out.push((text, ip));
    };
    let n = db.ranges.len();
    for _ in 0..3000 {
        let r = &db.ranges[rng.usize(..n)];
        let span = r.end - r.start;
        let off = ((u128::from(rng.u64(..)) << 64) | u128::from(rng.u64(..)))
            % span.saturating_add(1).max(1);
        let ip = from_u128(r.start + off);
        push(ip, ip.is_ipv4() && rng.u8(..) < 40);
    }
    let ranges = cloud.ranges();
    for _ in 0..1000 {
        let c = &ranges[rng.usize(..ranges.len())];
        let (first, len) = monitor::geo::network_to_u128(c.net);
        let host = 128 - u32::from(len);
        let off = if host == 0 {
            0
        } else {
            u128::from(rng.u64(..)) % (1u128 << host.min(64))
        };
        let ip = from_u128(first + off);
        push(ip, false);
    }
    out.sort();
    out.dedup();
    out
}

/// A random policy set: its body (under `spec:`) and mode.
fn random_body(
    rng: &mut fastrand::Rng,
    countries: &[String],
    pool: &[(String, IpAddr)],
    cloud: &[(String, String)],
) -> (String, &'static str) {
    let pick = |rng: &mut fastrand::Rng, n: usize, from: &[String]| -> Vec<String> {
        (0..n)
            .map(|_| from[rng.usize(..from.len())].clone())
            .collect()
    };
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let continents: Vec<String> = monitor::geo::regions::CONTINENTS
        .iter()
        .map(|c| c.to_string())
        .collect();
    let groups: Vec<String> = monitor::geo::regions::GROUPS
        .iter()
        .map(|c| c.to_string())
        .collect();
    let cidr = |rng: &mut fastrand::Rng| -> String {
        let ip = pool[rng.usize(..pool.len())].1;
        let len = match ip {
            IpAddr::V4(_) => rng.u8(8..=32),
            IpAddr::V6(_) => rng.u8(16..=128),
        };
        ipnetwork::IpNetwork::new(ip, len)
            .map(|n| format!("{}/{}", n.network(), len))
            .unwrap()
    };
    let cloud_pattern = |rng: &mut fastrand::Rng| -> String {
        let (p, r) = &cloud[rng.usize(..cloud.len())];
        if rng.bool() && r.len() > 3 {
            format!("{p}:{}*", &r[..3])
        } else {
            format!("{p}:{r}")
        }
    };
    let n_allow_cidrs = rng.usize(0..6);
    let n_deny_cidrs = rng.usize(0..4);
    let allow_cidrs: Vec<String> = (0..n_allow_cidrs).map(|_| cidr(rng)).collect();
    let deny_cidrs: Vec<String> = (0..n_deny_cidrs).map(|_| cidr(rng)).collect();
    let n = rng.usize(0..4);
    let allow_cloud: Vec<String> = (0..n).map(|_| cloud_pattern(rng)).collect();
    let n = rng.usize(0..2);
    let deny_cloud: Vec<String> = (0..n).map(|_| cloud_pattern(rng)).collect();
    let n = rng.usize(0..12);
    let allow_countries = pick(rng, n, countries);
    let n = rng.usize(0..2);
    let allow_continents = pick(rng, n, &continents);
    let n = rng.usize(0..2);
    let allow_groups = pick(rng, n, &groups);
    let n = rng.usize(0..4);
    let deny_countries = pick(rng, n, countries);
    let n = usize::from(rng.u8(..) < 40);
    let deny_continents = pick(rng, n, &continents);
    let body = format!(
        "  allow:\n    countries: {}\n    continents: {}\n    groups: {}\n    cidrs: {}\n    cloudRegions: {}\n  deny:\n    countries: {}\n    continents: {}\n    cidrs: {}\n    cloudRegions: {}\n",
        list(allow_countries),
        list(allow_continents),
        list(allow_groups),
        list(allow_cidrs),
        list(allow_cloud),
        list(deny_countries),
        list(deny_continents),
        list(deny_cidrs),
        list(deny_cloud),
    );
    (body, if rng.bool() { "enforce" } else { "monitor" })
}

/// Writes `text` as the policy file, atomically: the watcher never reads
/// half a file.
fn install(scratch: &std::path::Path, policy_dir: &std::path::Path, text: &str) {
    let tmp = scratch.join("next.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, policy_dir.join("p.yaml")).unwrap();
}

#[test]
fn kernel_verdicts_equal_the_userspace_decision_under_policy_churn() {
    let mut env = TestEnv::new();
    let real = std::env::var("EGRESS_MONITOR_GEOIP").expect("EGRESS_MONITOR_GEOIP");
    std::fs::copy(&real, env.geoip()).expect("copy the real database");
    let cloud_dir =
        PathBuf::from(std::env::var("EGRESS_MONITOR_CLOUD").expect("EGRESS_MONITOR_CLOUD"));
    let db = GeoDb::open(&env.geoip()).expect("the real database");
    let cloud = monitor::cloud::load_dir(&cloud_dir).expect("the cloud snapshot");
    let seed: u64 = std::env::var("ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x005e_ed0b_ac1e);
    eprintln!("oracle seed {seed} (ORACLE_SEED repeats a run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let pool = pool(&db, &cloud, &mut rng);
    assert!(pool.len() > 3000, "a pool of {}", pool.len());
    let countries: Vec<String> = pool
        .iter()
        .filter_map(|(_, ip)| db.lookup(*ip))
        .filter(|r| r.country != [0, 0])
        .map(|r| String::from_utf8_lossy(&r.country).into_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let cloud_regions: Vec<(String, String)> = cloud
        .regions()
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();

    // Every set the run writes, made up front (seeded): the first before
    // the daemon starts, the others by the churn. Kept by policy name, to
    // compile and judge with later.
    let mut churn_rng = fastrand::Rng::with_seed(seed ^ 0xc4u64);
    let all: Vec<(String, String)> = (0..6000)
        .map(|i| {
            let (body, mode) = random_body(&mut churn_rng, &countries, &pool, &cloud_regions);
            let name = format!("oracle-{i}");
            let text = env.policy(&name, mode, "sel", &body);
            (name, text)
        })
        .collect();
    let sets: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    sets.lock()
        .unwrap()
        .insert(all[0].0.clone(), all[0].1.clone());
    install(env.dir.path(), &env.policy_dir(), &all[0].1);
    env.start_daemon(&["--cloud-ranges", cloud_dir.to_str().unwrap()]);
    env.wait_log("cloud ranges in force", Duration::from_secs(60));
    let ns = DeadEnd::new(&format!("emo-{}", env.id));

    // The churn: a new set every 100 ms (written, then reloaded through the
    // API), for as long as the connects run
    // (bounded: at most 10 minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let sets = sets.clone();
        let dir = env.dir.path().to_path_buf();
        let policy_dir = env.policy_dir();
        let socket = env.socket();
        let rest: Vec<(String, String)> = all[1..].to_vec();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut written = 0;
            for (name, text) in rest {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(600) {
                    break;
                }
                sets.lock().unwrap().insert(name, text.clone());
                install(&dir, &policy_dir, &text);
                // The watcher waits for a quiet directory; the API reloads
                // now (and returns once the set is in force or refused).
                let _ = Command::new(integration_tests::daemon_bin())
                    .args(["policy", "reload", "--socket"])
                    .arg(&socket)
                    .output();
                written += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            written
        })
    };

    // The connects: batches from the dead end, each destination and port
    // once.
    let mut attempts: BTreeMap<(u128, u16), (String, i64)> = BTreeMap::new();
    let mut batch_no = 0u16;
    while attempts.len() < DECISIONS {
        batch_no += 1;
        let port = 1000 + batch_no;
        let start = rng.usize(..pool.len());
        let chunk: Vec<&(String, IpAddr)> = pool.iter().cycle().skip(start).take(BATCH).collect();
        let mut args: Vec<String> = vec!["connect-many".into(), port.to_string()];
        args.extend(chunk.iter().map(|(t, _)| t.clone()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out: Value = env.probe_in(&ns.0, "sel", &args);
        for r in out["results"].as_array().expect("results") {
            let text = r["addr"].as_str().unwrap().to_string();
            let ip: IpAddr = text.parse().unwrap();
            attempts.insert(
                (monitor::geo::to_u128(ip), port),
                (text, r["errno"].as_i64().unwrap()),
            );
        }
        assert!(batch_no < 400, "too many batches");
        // Spread over many switches.
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let switches = churn.join().unwrap();

    // Every attempt's event.
    let mut events: BTreeMap<(u128, u16), Value> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while events.len() < attempts.len() && Instant::now() < deadline {
        for e in env.events_within(Duration::from_millis(500), |e| {
            s(e, "hook") == "connect4" || s(e, "hook") == "connect6"
        }) {
            if let Ok(ip) = s(&e, "dst_ip").parse::<IpAddr>() {
                let port = e["dst_port"].as_u64().unwrap_or(0) as u16;
                events.insert((monitor::geo::to_u128(ip), port), e);
            }
        }
    }
    let missing = attempts.keys().filter(|k| !events.contains_key(k)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} attempts had no event",
        attempts.len()
    );

    // Compile each set that decided something, and judge.
    let sets = sets.lock().unwrap().clone();
    let mut compiled = BTreeMap::new();
    let mut generations: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for (key, (text, errno)) in &attempts {
        let e = &events[key];
        let name = s(e, "policy").to_string();
        generations
            .entry(e["policy_generation"].as_u64().unwrap_or(0))
            .or_default()
            .insert(name.clone());
        let policy = compiled.entry(name.clone()).or_insert_with(|| {
            let yaml = sets
                .get(&name)
                .unwrap_or_else(|| panic!("an event names {name}, which no set had: {e}"));
            let f = env.dir.path().join("judge.yaml");
            std::fs::write(&f, yaml).unwrap();
            monitor::policy::compile_file(&f)
                .unwrap_or_else(|err| panic!("{name} does not compile: {err}"))
                .remove(0)
        });
        let ip = from_u128(key.0);
        let want = simulate(policy, &db, &cloud, ip);
        let got = (s(e, "verdict"), s(e, "rule"));
        *by_rule.entry(format!("{}/{}", got.0, got.1)).or_default() += 1;
        if got != (want.verdict.as_str(), want.rule.as_str()) {
            mismatches.push(format!(
                "{text}:{} under {name}: kernel {got:?}, userspace ({}, {})",
                key.1,
                want.verdict.as_str(),
                want.rule.as_str()
            ));
        }
        let refused = *errno == libc::EPERM as i64;
        if refused != (s(e, "verdict") == "denied") {
            mismatches.push(format!("{text}:{}: errno {errno} but event {e}", key.1));
        }
    }
    let split: Vec<_> = generations
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .collect();
    assert!(
        split.is_empty(),
        "decisions of one generation named different policies (half a policy): {split:?}"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} decisions differ: {:#?}",
        mismatches.len(),
        attempts.len(),
        &mismatches[..mismatches.len().min(20)]
    );
    assert!(attempts.len() >= DECISIONS);
    assert!(
        generations.len() >= 20,
        "only {} policy sets decided",
        generations.len()
    );
    // The random sets must exercise the rules, not only the default.
    for rule in ["cidr", "country", "default"] {
        assert!(
            by_rule.keys().any(|k| k.ends_with(&format!("/{rule}"))),
            "no decision by rule {rule}: {by_rule:?}"
        );
    }
    eprintln!(
        "oracle: {} decisions under {} policy sets ({switches} written), 0 mismatches; by verdict/rule: {by_rule:?}",
        attempts.len(),
        generations.len()
    );
}
