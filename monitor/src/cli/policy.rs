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
    /// Validate policy files and show what they compile to; changes nothing.
    Check {
        /// Policy files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also count the database prefixes each policy allows and denies.
        #[arg(long, env = "EGRESS_MONITOR_GEOIP")]
        geoip: Option<PathBuf>,
        /// The daemon's --cgroup-root: warn about selectors outside it
        /// (they can never select a cgroup).
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// The daemon's --cloud-ranges: cloudRegions are checked against
        /// its regions as well as the built-in location table (a pattern
        /// that matches none is an error in deny, a warning in allow).
        #[arg(long, value_name = "DIR")]
        cloud_ranges: Option<PathBuf>,
    },
    /// The policies in force in the daemon, with the cgroups they select.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// What the policies would do with a destination from a cgroup or a
    /// pod, and why (which policy, which place, which rule), worked out
    /// offline from the policy files, the country database and the cloud
    /// ranges with the same decision code as the kernel's. Exit status 0:
    /// allowed or not judged; 3: denied or would be denied.
    Explain(ExplainArgs),
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
pub struct ExplainArgs {
    /// The destination address (IPv4 or IPv6).
    pub address: std::net::IpAddr,
    /// The connecting cgroup, relative to the cgroup2 mount
    /// (/kubepods.slice/...); its nearest selected ancestor decides.
    #[arg(long, required_unless_present = "pod", conflicts_with = "pod")]
    pub cgroup: Option<String>,
    /// The connecting pod, by metadata.uid.
    #[arg(long)]
    pub pod: Option<String>,
    /// The DNS name the address was resolved from (domain rules judge it).
    #[arg(long)]
    pub name: Option<String>,
    /// The daemon's policies (a directory, or one file here), country
    /// database and cloud ranges.
    #[command(flatten)]
    pub sources: super::daemon::Sources,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Explain(args) => explain(args),
        PolicyCommand::Check {
            paths,
            geoip,
            cgroup_root,
            cloud_ranges,
        } => check(paths, geoip, cgroup_root, cloud_ranges),
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
    geoip: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    cloud_ranges: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cloud = match &cloud_ranges {
        Some(dir) => crate::cloud::load_dir(dir)
            .map_err(|e| anyhow::anyhow!("cloud ranges {}: {e}", dir.display()))?,
        None => crate::cloud::CloudRanges::default(),
    };
    let root = match &cgroup_root {
        None => None,
        Some(r) => {
            let mount = crate::cgroups::find_cgroup2_mount()?;
            let abs = r
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("cgroup root {}: {e}", r.display()))?;
            Some(crate::cgroups::relative(&mount, &abs).ok_or_else(|| {
                anyhow::anyhow!(
                    "cgroup root {} is not inside the cgroup2 mount {}",
                    r.display(),
                    mount.display()
                )
            })?)
        }
    };
    let db = match geoip {
        Some(p) if p.exists() => Some(GeoDb::open(&p)?),
        Some(p) => anyhow::bail!("GeoIP database {} does not exist", p.display()),
        None => None,
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
    let mut failed = false;
    let mut all = Vec::new();
    for (f, dir) in &files {
        let compiled = match dir {
            Some(dir) => policy::compile_dir_file(dir, f),
            None => policy::compile_file(f),
        };
        match compiled {
            Ok(ps) => {
                for p in &ps {
                    let (errors, cloud_warnings) = policy::lint::cloud_patterns(p, &cloud);
                    for e in &errors {
                        eprintln!("{e}");
                        failed = true;
                    }
                    if errors.is_empty() {
                        print_policy(p, db.as_ref());
                    }
                    for w in policy::lint::warnings(p, root.as_deref())
                        .into_iter()
                        .chain(cloud_warnings)
                    {
                        eprintln!("{}:{}: warning: policy {}: {w}", p.file, p.line, p.name);
                    }
                }
                all.extend(ps);
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if let Err(e) = policy::check_unique_names(&all) {
        eprintln!("{e}");
        failed = true;
    }
    Ok(if failed {
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

/// The policy that judges `path` (the nearest selected ancestor, as the
/// kernel's walk) or the pod's, and the cgroup it selects.
fn judging<'p>(
    policies: &'p [CompiledPolicy],
    cgroup: Option<&str>,
    pod: Option<&str>,
) -> Option<(&'p CompiledPolicy, String)> {
    if let Some(uid) = pod {
        let uid = uid.to_ascii_lowercase().replace('_', "-");
        return policies
            .iter()
            .find(|p| p.pods.contains(&uid))
            .map(|p| (p, format!("pod:{uid}")));
    }
    let mut path = cgroup?.trim_end_matches('/').to_string();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    loop {
        let here = if path.is_empty() { "/" } else { path.as_str() };
        let attr = crate::attribution::attribute(here);
        if let Some(p) = policies.iter().find(|p| p.selects(here, &attr)) {
            return Some((p, here.to_string()));
        }
        match path.rfind('/') {
            Some(0) if path.len() > 1 => path.truncate(0),
            Some(i) if i > 0 => path.truncate(i),
            _ => return None,
        }
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    use monitor_common::{CountrySource, Rule, Verdict};
    let dir = args
        .sources
        .policies
        .is_dir()
        .then_some(&args.sources.policies);
    let files = if dir.is_some() {
        policy::policy_files(&args.sources.policies).map_err(|e| {
            anyhow::anyhow!(
                "reading policy directory {}: {e}",
                args.sources.policies.display()
            )
        })?
    } else {
        vec![args.sources.policies.clone()]
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
    let db = GeoDb::open(&args.sources.geoip)?;
    let cloud = match &args.sources.cloud_ranges {
        Some(d) => crate::cloud::load_dir(d)?,
        None => crate::cloud::CloudRanges::default(),
    };
    let who = args
        .cgroup
        .clone()
        .unwrap_or_else(|| format!("pod {}", args.pod.clone().unwrap_or_default()));
    let Some((p, selected)) = judging(&all, args.cgroup.as_deref(), args.pod.as_deref()) else {
        if args.output == Format::Json {
            println!(
                "{}",
                serde_json::json!({"address": args.address.to_string(), "from": who, "judged": false})
            );
        } else {
            println!(
                "{} from {who}: not judged: no policy in {} selects it or an ancestor (not watched)",
                args.address,
                args.sources.policies.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let sim = policy::simulate::simulate_named(p, &db, &cloud, args.address, args.name.as_deref());
    let place = region_label(&sim.region);
    let cloud_name = cloud
        .region_name(sim.cloud_region)
        .map(|(pr, r)| crate::cloud::place_label(pr, r));
    let source = match sim.source {
        CountrySource::Cloud => "the provider's documented location of its cloud region",
        _ => "the country database",
    };
    let addr = crate::geo::to_u128(args.address);
    let ip = crate::geo::from_u128(addr);
    let net_of = |nets: &[ipnetwork::IpNetwork]| {
        nets.iter()
            .filter(|n| n.contains(ip))
            .max_by_key(|n| n.prefix())
            .map(|n| n.to_string())
    };
    let name_rule = |list: &[policy::DomainPattern]| {
        args.name.as_deref().and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            list.iter()
                .find(|d| {
                    if d.wildcard {
                        n.ends_with(&format!(".{}", d.name))
                    } else {
                        n == d.name
                    }
                })
                .map(|d| d.to_string())
        })
    };
    let allowed = sim.verdict == Verdict::Allowed;
    let why = match sim.rule {
        Rule::Cidr if !allowed => {
            format!("deny CIDR {}", net_of(&p.deny_cidrs).unwrap_or_default())
        }
        Rule::Cidr => match net_of(&p.allow_cidrs) {
            Some(n) => format!("allow CIDR {n}"),
            None => format!(
                "{} never leaves the link (exempt unless judgeLinkLocal: true)",
                net_of(&p.link_local).unwrap_or_default()
            ),
        },
        Rule::Domain if !allowed => format!(
            "the name matches deny domain {}",
            name_rule(&p.deny_domains).unwrap_or_default()
        ),
        Rule::Domain => format!(
            "the name matches allow domain {}",
            name_rule(&p.allow_domains).unwrap_or_default()
        ),
        Rule::CloudRegion => format!(
            "its cloud region {} is {} by cloudRegions",
            cloud_name.clone().unwrap_or_default(),
            if allowed { "allowed" } else { "denied" }
        ),
        Rule::Country | Rule::Continent | Rule::Group => format!(
            "its place {place} is {} by the policy's {} rules",
            if allowed { "allowed" } else { "denied" },
            sim.rule.as_str()
        ),
        _ => format!("nothing in the policy allows {place} (or this address)"),
    };
    if args.output == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "address": args.address.to_string(),
                "from": who,
                "judged": true,
                "policy": p.name,
                "mode": p.mode.to_string(),
                "file": p.file,
                "line": p.line,
                "selected": selected,
                "country": place,
                "place_source": source,
                "cloud_region": cloud_name,
                "name": args.name,
                "verdict": sim.verdict.as_str(),
                "rule": sim.rule.as_str(),
                "why": why,
            }))?
        );
    } else {
        println!("{} from {who}", args.address);
        println!(
            "  policy     {} ({}) at {}:{}, selecting {selected}",
            p.name, p.mode, p.file, p.line
        );
        println!(
            "  place      {place}{} (from {source})",
            cloud_name
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default()
        );
        if let Some(n) = &args.name {
            let said = match policy::simulate::domain_action(p, n) {
                monitor_common::action::DENY => "denied by its domain rules",
                monitor_common::action::ALLOW => "allowed by its domain rules",
                _ => "no domain rule matches",
            };
            println!("  name       {n}: {said}");
        }
        println!(
            "  decision   {}, rule {}: {why}",
            sim.verdict.as_str(),
            sim.rule.as_str()
        );
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
