use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::output::Format;
use crate::{
    api::{
        client::{connect, status_error, ConnectArgs},
        pb,
    },
    geo::{region_label, GeoDb},
    policy::{self, CompiledPolicy},
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Judge policy files as the daemon would, offline, and show what they
    /// compile to; changes nothing. Every error of every file is reported:
    /// what does not compile, cloud-region typos, two policies of one
    /// name, cgroups below the cgroup root that two policies select, rules
    /// no loaded data can judge (cloudRegions without cloud ranges, domains
    /// without a trusted resolver). Exit status 1 on any error (a file the
    /// daemon would reject, a set it would refuse, a conflict it would
    /// settle and log as an error, rules it could not judge); warnings
    /// alone exit 0.
    Check {
        /// Policy files or directories [default: --policies, the daemon's
        /// directory].
        paths: Vec<PathBuf>,
        /// The daemon's policies, country database (also counts the
        /// prefixes each policy allows and denies), cloud ranges and
        /// resolvers, with the daemon's defaults.
        #[command(flatten)]
        sources: super::daemon::Sources,
        /// The daemon's --cgroup-root: selectors outside it can never
        /// select a cgroup (a warning), and the cgroups below it are walked
        /// for ones two policies select (an error) [default: the cgroup2
        /// mount].
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
    },
    /// The policies in force in the daemon, with the cgroups they select.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// What the policies would do with a destination from a cgroup or a
    /// pod, and why (which policy, which place, which rule): the daemon in
    /// force answers, with its policies, country database, cloud ranges and
    /// the names the cgroup resolved; `--offline` works it out from files
    /// with the same decision code. Exit status 0: allowed or not judged;
    /// 3: denied or would be denied.
    Explain(ExplainArgs),
    /// What candidate policies would change, before rollout: the daemon
    /// replays the recorded flows of the window (names, places and cloud
    /// regions as recorded) against the candidates, which replace the
    /// whole set in force, with the kernel compiler's decision code. Exit
    /// status 3 when something allowed now would be denied (a gate).
    Simulate(Box<SimulateArgs>),
    /// Make the daemon re-read its policy directory now (admin role).
    Reload {
        /// Write the set into the kernel again as a new generation even
        /// when nothing changed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Candidate policy files or directories: the whole candidate set.
    #[arg(required = true, value_name = "CANDIDATE")]
    pub candidates: Vec<PathBuf>,
    /// Start of the window of recorded flows (as `flows --since`).
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End of the window (default: now).
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub filter: super::filters::FilterArgs,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The destination address (IPv4 or IPv6).
    pub address: std::net::IpAddr,
    /// The connecting cgroup, relative to the cgroup2 mount
    /// (/kubepods.slice/...) or in full (/sys/fs/cgroup/kubepods.slice/...);
    /// its nearest selected ancestor decides.
    #[arg(long, required_unless_present_any = ["pod", "pid"], conflicts_with_all = ["pod", "pid"])]
    pub cgroup: Option<String>,
    /// The connecting pod, by metadata.uid.
    #[arg(long, conflicts_with = "pid")]
    pub pod: Option<String>,
    /// The connecting process, running: its cgroup is asked about, and the
    /// answer names its executable and parent.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The DNS name the address was resolved from (domain rules judge it)
    /// [default: the name the cgroup resolved it from, as the daemon
    /// learned it].
    #[arg(long)]
    pub name: Option<String>,
    /// Work it out from files instead of asking the daemon in force: the
    /// policies, the country database and the cloud ranges below.
    #[arg(long)]
    pub offline: bool,
    /// With --offline: the policy directory, or one file.
    #[arg(long, requires = "offline", value_name = "DIR|FILE", default_value = super::daemon::DEFAULT_POLICIES)]
    pub policies: PathBuf,
    /// With --offline: the country database.
    #[arg(long, requires = "offline", value_name = "FILE", default_value = super::daemon::DEFAULT_GEOIP)]
    pub geoip: PathBuf,
    /// With --offline: the directory of cloud providers' ranges [default:
    /// the daemon's, when it exists; without any, no address is in a cloud
    /// region].
    #[arg(long, requires = "offline", value_name = "DIR")]
    pub cloud_ranges: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Simulate(args) => super::block_on(simulate(*args)),
        PolicyCommand::Explain(args) if args.offline => explain_offline(args),
        PolicyCommand::Explain(args) => super::block_on(explain(args)),
        PolicyCommand::Check {
            paths,
            sources,
            cgroup_root,
        } => check(paths, &sources, cgroup_root),
        PolicyCommand::List { output, connect } => super::block_on(list(output, connect)),
        PolicyCommand::Reload { force, connect } => super::block_on(reload(force, connect)),
    }
}

async fn list(output: Format, args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    let r = client
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .map_err(|s| status_error("ListPolicies", s))?
        .into_inner();
    if output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("policy set generation {}", r.policy_generation);
        print_policies(&r.policies, &r.rejected_files);
        print_refused(&r.refused);
    }
    Ok(ExitCode::SUCCESS)
}

async fn reload(force: bool, args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    let r = client
        .reload_policies(pb::ReloadPoliciesRequest { force })
        .await
        .map_err(|s| status_error("ReloadPolicies", s))?
        .into_inner();
    if r.changed {
        println!("policy set generation {} in force", r.policy_generation);
    } else {
        println!(
            "nothing changed: policy set generation {} stays in force (--force writes it again)",
            r.policy_generation
        );
    }
    print_policies(&r.policies, &r.rejected_files);
    Ok(if r.rejected_files.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The refusal of the last candidate set, if any.
pub fn print_refused(refused: &str) {
    if !refused.is_empty() {
        println!("REFUSED  {refused}");
    }
}

/// Policies in force and rejected files, for people.
pub fn print_policies(policies: &[pb::Policy], rejected: &[pb::RejectedFile]) {
    println!(
        "{:<24} {:<8} {:<16} {:<9} {:<5} {:<5} SELECTED CGROUPS",
        "POLICY", "MODE", "SHA256", "COUNTRIES", "ALLOW", "DENY"
    );
    for p in policies {
        let selected = if p.selected_cgroups.is_empty() {
            "(none yet)".to_string()
        } else {
            p.selected_cgroups.join(", ")
        };
        println!(
            "{:<24} {:<8} {:<16} {:<9} {:<5} {:<5} {}",
            p.name,
            p.mode,
            p.sha256.get(..16).unwrap_or(&p.sha256),
            p.allowed_countries.len(),
            p.allow_cidrs,
            p.deny_cidrs,
            selected
        );
        if !p.baseline_name.is_empty() {
            println!(
                "{:<24} baseline {} ({}, sha256 {}): drift alerts on",
                "",
                p.baseline_name,
                p.baseline_file,
                p.baseline_sha256.get(..16).unwrap_or(&p.baseline_sha256)
            );
        }
    }
    for r in rejected {
        println!(
            "REJECTED {} ({})",
            r.error,
            if r.previous_in_force {
                "previous version in force"
            } else {
                "not in force"
            }
        );
    }
}

fn check(
    paths: Vec<PathBuf>,
    sources: &super::daemon::Sources,
    cgroup_root: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cloud = match sources.cloud_dir() {
        Some(dir) => crate::cloud::load_dir(&dir)
            .map_err(|e| anyhow::anyhow!("cloud ranges {}: {e}", dir.display()))?,
        None => crate::cloud::CloudRanges::default(),
    };
    // The cgroup tree as the daemon would walk it: below --cgroup-root, or
    // the whole cgroup2 mount (none found and no root given: no walk).
    let tree = match (&cgroup_root, crate::cgroups::find_cgroup2_mount()) {
        (None, Err(_)) => None,
        (Some(_), Err(e)) => return Err(e.into()),
        (root, Ok(mount)) => {
            let given = root.clone().unwrap_or_else(|| mount.clone());
            let abs = given
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("cgroup root {}: {e}", given.display()))?;
            let rel = crate::cgroups::relative(&mount, &abs).ok_or_else(|| {
                anyhow::anyhow!(
                    "cgroup root {} is not inside the cgroup2 mount {}",
                    given.display(),
                    mount.display()
                )
            })?;
            Some((rel, mount, abs))
        }
    };
    // The daemon cannot start without its database; `check` without one
    // only skips the prefix counts, unless it was asked for one.
    let geoip = &sources.geoip;
    let db = if geoip.exists() {
        Some(GeoDb::open(geoip)?)
    } else if geoip.as_os_str() == super::daemon::DEFAULT_GEOIP {
        None
    } else {
        anyhow::bail!("GeoIP database {} does not exist", geoip.display());
    };
    let countries = db.as_ref().map(|db| policy::lint::Countries {
        db: db.identity.path.clone(),
        present: db.countries(),
    });
    let paths = if paths.is_empty() {
        vec![sources.policies.clone()]
    } else {
        paths
    };
    // Each file with the directory it was listed from: the daemon refuses a
    // file of its directory that leads outside it, and so does the check.
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(
                policy::policy_files(&p)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                    .into_iter()
                    .map(|f| (f, Some(p.clone()))),
            );
        } else {
            files.push((p, None));
        }
    }
    let resolvers = sources.resolvers();
    let data = policy::lint::Data {
        cloud: &cloud,
        resolvers: &resolvers,
    };
    let mut errors = 0usize;
    let mut error = |text: String| {
        eprintln!("{text}");
        errors += 1;
    };
    let mut all = Vec::new();
    for (f, dir) in &files {
        match policy::judge_file(dir.as_deref(), f, &cloud) {
            Ok(ps) => {
                for p in &ps {
                    print_policy(p, db.as_ref());
                    for m in policy::lint::missing_data(p, &data) {
                        error(format!(
                            "{}:{}: {m} (the daemon refuses to start like this under \
                             --require-policies, and warns without)",
                            p.file, p.line
                        ));
                    }
                    let root = tree.as_ref().map(|(rel, _, _)| rel.as_str());
                    for w in policy::warnings(p, root, &cloud, countries.as_ref()) {
                        eprintln!("{}:{}: warning: policy {}: {w}", p.file, p.line, p.name);
                    }
                }
                all.extend(ps);
            }
            Err(es) => es.iter().for_each(|e| error(e.to_string())),
        }
    }
    // The set: one name twice is refused whole; a cgroup two policies
    // select is settled by the daemon for itself and logged as an error.
    if let Err(e) = policy::check_unique_names(&all) {
        error(e.to_string());
    }
    if let Some((_, mount, abs)) = &tree {
        let cgroups = crate::cgroups::walk(mount, abs)?;
        let place: std::collections::HashMap<&str, String> = all
            .iter()
            .map(|p| (p.name.as_str(), format!("{}:{}", p.file, p.line)))
            .collect();
        for c in crate::cgroups::resolve(&cgroups, &all).conflicts {
            let at: Vec<&str> = std::iter::once(&c.winner)
                .chain(&c.losers)
                .filter_map(|n| place.get(n.as_str()).map(String::as_str))
                .collect();
            error(format!("selector conflict: {c} (at {})", at.join(", ")));
        }
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn join(items: &std::collections::BTreeSet<String>) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

fn print_policy(p: &CompiledPolicy, db: Option<&GeoDb>) {
    let spec = &p.source.spec;
    println!(
        "{}: policy {} ({}): ok, sha256 {}",
        p.file,
        p.name,
        p.mode,
        &p.sha256[..16]
    );
    println!("  selects        {}", p.selector_terms().join(", "));
    if let Some(b) = &p.baseline {
        println!(
            "  baseline       {} ({}, sha256 {}): drift alerts for destinations outside it",
            b.name,
            b.path,
            &b.sha256[..16]
        );
    }
    println!(
        "  allowed        {} countries: {}",
        p.allowed_countries.len(),
        join(&p.allowed_countries)
    );
    if !spec.allow.continents.is_empty() {
        println!(
            "  allowed        continents {}",
            spec.allow.continents.join(" ")
        );
    }
    println!(
        "  denied         {} countries: {}",
        p.denied_countries.len(),
        join(&p.denied_countries)
    );
    if !spec.deny.continents.is_empty() {
        println!(
            "  denied         continents {}",
            spec.deny.continents.join(" ")
        );
    }
    let shown = |d: &[crate::policy::DomainPattern]| {
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !p.allow_domains.is_empty() || !p.deny_domains.is_empty() {
        println!(
            "  domains        allow {}: {}; deny {}: {}",
            p.allow_domains.len(),
            or_dash(&shown(&p.allow_domains)),
            p.deny_domains.len(),
            or_dash(&shown(&p.deny_domains))
        );
    }
    let regions = |r: &[crate::cloud::RegionPattern]| {
        r.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !p.allow_cloud.is_empty() || !p.deny_cloud.is_empty() {
        println!(
            "  cloud regions  allow {}; deny {}",
            or_dash(&regions(&p.allow_cloud)),
            or_dash(&regions(&p.deny_cloud))
        );
    }
    let v4 = |nets: &[ipnetwork::IpNetwork]| nets.iter().filter(|n| n.is_ipv4()).count();
    println!(
        "  cidrs          allow {} (IPv4 {}, IPv6 {}), deny {} (IPv4 {}, IPv6 {})",
        p.allow_cidrs.len(),
        v4(&p.allow_cidrs),
        p.allow_cidrs.len() - v4(&p.allow_cidrs),
        p.deny_cidrs.len(),
        v4(&p.deny_cidrs),
        p.deny_cidrs.len() - v4(&p.deny_cidrs)
    );
    if p.link_local.is_empty() {
        println!("  link-local     judged like any destination (judgeLinkLocal: true)");
    } else {
        println!(
            "  link-local     allowed: {} (judgeLinkLocal: true judges them)",
            crate::policy::compile::LINK_LOCAL.join(" ")
        );
    }
    println!(
        "  region rules   {} (kernel map entries)",
        p.region_rules.len()
    );
    let Some(db) = db else { return };
    let per_region = db.prefixes_per_region();
    let mut allowed = Vec::new();
    let (mut n_allowed, mut n_denied, mut n_default) = (0usize, 0usize, 0usize);
    for (region, rule) in &p.region_rules {
        let n = per_region.get(&region_label(region)).copied().unwrap_or(0);
        if rule.action == monitor_common::action::ALLOW {
            n_allowed += n;
            if n > 0 {
                allowed.push((region_label(region), n));
            }
        } else {
            n_denied += n;
        }
    }
    let total: usize = per_region.values().sum();
    n_default += total - n_allowed - n_denied;
    allowed.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    println!(
        "  geo prefixes   {total} in {}: {n_allowed} allowed, {n_denied} denied explicitly, {n_default} denied by default",
        db.identity.path.display()
    );
    if !allowed.is_empty() {
        let top: Vec<String> = allowed
            .iter()
            .take(12)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!(
            "  allowed by region  {}{}",
            top.join(", "),
            if allowed.len() > 12 { ", ..." } else { "" }
        );
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `policy explain --offline`: the same answer as the daemon's, from the
/// files given.
fn explain_offline(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    use crate::api::explain::{response, From};
    let mount = crate::cgroups::find_cgroup2_mount().unwrap_or_else(|_| "/sys/fs/cgroup".into());
    let (process_cgroup, process) = match args.pid {
        Some(pid) => {
            let (c, said) = crate::api::explain::process_of_pid(std::path::Path::new("/proc"), pid)
                .map_err(anyhow::Error::msg)?;
            (Some(c), said)
        }
        None => (None, String::new()),
    };
    let from = From::parse(
        &mount,
        process_cgroup
            .as_deref()
            .or(args.cgroup.as_deref())
            .unwrap_or_default(),
        args.pod.as_deref().unwrap_or_default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = args.policies.is_dir().then_some(&args.policies);
    let files = if dir.is_some() {
        policy::policy_files(&args.policies).map_err(|e| {
            anyhow::anyhow!("reading policy directory {}: {e}", args.policies.display())
        })?
    } else {
        vec![args.policies.clone()]
    };
    let mut all = Vec::new();
    for f in &files {
        // The daemon would reject this file: say so, judge with the rest.
        let compiled = match dir {
            Some(dir) => policy::compile_dir_file(dir, f),
            None => policy::compile_file(f),
        };
        match compiled {
            Ok(ps) => all.extend(ps),
            Err(e) => eprintln!("warning: {e} (left out, as the daemon would)"),
        }
    }
    let db = GeoDb::open(&args.geoip)?;
    let cloud_dir = super::daemon::cloud_dir_or_default(args.cloud_ranges.as_deref());
    let cloud = match &cloud_dir {
        Some(d) => crate::cloud::load_dir(d)?,
        None => crate::cloud::CloudRanges::default(),
    };
    let judged = match &from {
        From::Cgroup(path) => policy::explain::judging(all.iter(), Some(path), None),
        From::Pod(uid) => policy::explain::judging(all.iter(), None, Some(uid)),
    };
    let mut warnings = Vec::new();
    if judged.is_none() {
        warnings.push(format!(
            "no policy in {} selects {} or an ancestor: not watched",
            args.policies.display(),
            from.label()
        ));
    }
    let name = args.name.map(|n| (n, "given"));
    let mut r = response(args.address, &from, judged, &db, &cloud, name, 0, warnings);
    r.process = process;
    print_explained(&r, args.output)
}

/// `policy explain`: the daemon in force answers.
async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connect).await?;
    let r = client
        .explain(pb::ExplainRequest {
            address: args.address.to_string(),
            cgroup: args.cgroup.unwrap_or_default(),
            pod_uid: args.pod.unwrap_or_default(),
            name: args.name.unwrap_or_default(),
            pid: args.pid.unwrap_or_default(),
        })
        .await
        .map_err(|s| status_error("Explain", s))?
        .into_inner();
    print_explained(&r, args.output)
}

/// Prints an explanation; exit status 0: allowed or not judged, 3: denied
/// or would be denied.
fn print_explained(r: &pb::ExplainResponse, output: Format) -> anyhow::Result<ExitCode> {
    if output == Format::Json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        let answered = match r.policy_generation {
            0 => "offline, from files".to_string(),
            g => format!("the daemon's policy set generation {g}"),
        };
        if !r.judged {
            println!(
                "{} from {}: not judged: no policy selects it or an ancestor (not watched; {answered})",
                r.address, r.from
            );
            if !r.process.is_empty() {
                println!("  process    {}", r.process);
            }
            return Ok(ExitCode::SUCCESS);
        }
        println!("{} from {} ({answered})", r.address, r.from);
        if !r.process.is_empty() {
            println!("  process    {}", r.process);
        }
        println!(
            "  policy     {} ({}) at {}:{}, selecting {}",
            r.policy, r.mode, r.file, r.line, r.selected
        );
        let source = match r.place_source.as_str() {
            "cloud" => "the provider's documented location of its cloud region",
            _ => "the country database",
        };
        let cloud = match r.cloud_region.as_str() {
            "" => String::new(),
            c => format!(" {c}"),
        };
        println!("  place      {}{cloud} (from {source})", r.place);
        if !r.name.is_empty() {
            let learned = match r.name_source.as_str() {
                "learned" => " (the name the cgroup resolved it from)",
                _ => "",
            };
            println!("  name       {}{learned}: {}", r.name, r.name_said);
        }
        println!("  decision   {}, rule {}: {}", r.verdict, r.rule, r.why);
    }
    Ok(if !r.judged || r.verdict == "allowed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `policy simulate`: the candidates' files, read here, judged by the
/// daemon against its recorded flows.
async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let mut candidates = Vec::new();
    for path in &args.candidates {
        let files = if path.is_dir() {
            policy::policy_files(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        } else {
            vec![path.clone()]
        };
        for f in files {
            let text =
                std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            candidates.push(pb::CandidateFile {
                file_name: f.display().to_string(),
                text,
            });
        }
    }
    let mut client = connect(&args.connect).await?;
    let r = client
        .simulate_policies(pb::SimulatePoliciesRequest {
            window: Some(pb::TimeWindow {
                since: args.since.clone(),
                until: args.until.clone().unwrap_or_default(),
            }),
            candidates,
            filter: Some(args.filter.to_pb()),
        })
        .await
        .map_err(|s| status_error("SimulatePolicies", s))?
        .into_inner();
    if args.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} recorded flows since {} replayed: {} unchanged, {} newly denied, {} newly allowed, {} selected by no candidate",
            r.flows, args.since, r.unchanged, r.newly_denied, r.newly_allowed, r.unselected
        );
        if !r.changes.is_empty() {
            println!(
                "{:<26} {:<28} {:<24} {:<22} {:>7}  {:<24} AFTER",
                "CGROUP", "DESTINATION", "NAME", "PLACE", "COUNT", "BEFORE"
            );
        }
        for c in &r.changes {
            let (provider, region) = crate::cloud::split_place(&c.cloud_region);
            let after = match c.verdict_after.as_str() {
                "" => "not judged (no candidate selects it)".to_string(),
                v => format!("{v} ({}, rule {})", c.policy_after, c.rule_after),
            };
            println!(
                "{:<26} {:<28} {:<24} {:<22} {:>7}  {:<24} {after}",
                c.cgroup_path,
                format!("{}:{}/{}", c.dst_ip, c.dst_port, c.protocol),
                super::output::name(&c.dns_name),
                super::output::place(&c.country, provider, region),
                c.count,
                format!("{} ({})", c.verdict_before, c.policy_before),
            );
        }
    }
    Ok(if r.newly_denied > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
