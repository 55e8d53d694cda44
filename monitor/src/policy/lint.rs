//! Warnings about policies that compile but would not do what their
//! author meant: a selector that can never select anything under the
//! daemon's cgroup root, an enforcing policy over the whole host or a whole
//! slice that would cut the machine off its own networks. Said by `policy
//! check` and logged by the daemon when a set takes effect; never a refusal.
use std::net::IpAddr;

use super::{compile::CompiledPolicy, model::Mode};

/// Cgroups whose selection is the whole host or a whole slice of it.
const BROAD: [&str; 7] = [
    "/",
    "/system.slice",
    "/user.slice",
    "/init.scope",
    "/kubepods.slice",
    "/kubepods",
    "/machine.slice",
];

/// What an enforcing policy over the host must allow to keep the machine
/// reachable: loopback and the private networks.
const MUST_REACH: [(&str, &str); 5] = [
    ("127.0.0.1", "127.0.0.0/8"),
    ("::1", "::1/128"),
    ("10.0.0.1", "10.0.0.0/8"),
    ("172.16.0.1", "172.16.0.0/12"),
    ("192.168.0.1", "192.168.0.0/16"),
];

/// The warnings for `p`; `root` is the daemon's cgroup root relative to the
/// cgroup2 mount (`/` or None: the whole tree).
pub fn warnings(p: &CompiledPolicy, root: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let root = root.unwrap_or("/");
    for g in &p.cgroup_globs {
        if !can_select_under(g, root) {
            out.push(format!(
                "selector cgroupPaths {g:?} is outside the cgroup root {root}: the programs \
                 are attached there only, so it can never select a cgroup"
            ));
        }
    }
    if p.mode == Mode::Enforce {
        let broad: Vec<&str> = BROAD
            .iter()
            .copied()
            .filter(|c| p.selector.is_match(c))
            .chain(
                p.unit_globs
                    .iter()
                    .filter(|u| *u == "*")
                    .map(|_| "every unit"),
            )
            .collect();
        // A user starts what they like in a unit or scope of their own
        // (`systemd-run --user`), outside any selection of theirs.
        let user_paths: Vec<&str> = p
            .cgroup_globs
            .iter()
            .map(String::as_str)
            .filter(|g| *g == "/user.slice" || g.starts_with("/user.slice/"))
            .collect();
        if !user_paths.is_empty() {
            out.push(format!(
                "enforce on {}: user sessions and user units are no boundary (the user can                  start the same program in a scope of their own with systemd-run --user,                  outside this selection); enforce on system units, containers or pods",
                user_paths.join(", ")
            ));
        }
        if !p.unit_globs.is_empty() {
            out.push(format!(
                "systemdUnits {:?} also select user units of these names (below                  user@UID.service), and a user unit is no boundary: its user can start the                  same program in a unit of another name (systemd-run --user)",
                p.unit_globs
            ));
        }
        let missing: Vec<&str> = MUST_REACH
            .iter()
            .filter(|(ip, _)| !allows(p, ip.parse().expect("a literal address")))
            .map(|(_, net)| *net)
            .collect();
        if !broad.is_empty() && !missing.is_empty() {
            out.push(format!(
                "enforce over {} without allowing {}: it would cut the selected host off \
                 its own services, its resolver and the cluster network (add them to \
                 allow.cidrs, or start in mode: monitor)",
                broad.join(", "),
                missing.join(", ")
            ));
        }
    }
    out
}

fn allows(p: &CompiledPolicy, ip: IpAddr) -> bool {
    p.allowed_networks().any(|n| n.contains(ip)) && !p.deny_cidrs.iter().any(|n| n.contains(ip))
}

/// Whether a cgroup path glob can match a path at or below `root`: its
/// literal start (up to the first wildcard) and the root agree as far as
/// both go.
pub fn can_select_under(glob: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return true;
    }
    let literal = glob.find(['*', '?', '[', '{']).map_or(glob, |i| &glob[..i]);
    let glob_is_literal = literal.len() == glob.len();
    if glob_is_literal {
        // A plain path: at the root or below it.
        return glob == root || glob.starts_with(&format!("{root}/"));
    }
    // A wildcard after `literal`: below the root if it starts with the root's
    // path; above or at it if the root starts with the literal part.
    literal.starts_with(&format!("{root}/"))
        || format!("{root}/").starts_with(literal)
        || literal == root
}

/// Cloud-region patterns checked against the regions known: those of the
/// cloud snapshot in force (`cloud`, possibly empty) and the built-in
/// location table. A provider neither knows is an error on either side; a
/// pattern that matches no region is an error in `deny` (it would deny
/// nothing: a typo there fails open) and a warning in `allow` (it allows
/// nothing: a typo there only refuses more). Each names the nearest region
/// names. Returns (errors, warnings).
pub fn cloud_patterns(
    p: &CompiledPolicy,
    cloud: &crate::cloud::CloudRanges,
) -> (Vec<super::PolicyError>, Vec<String>) {
    use crate::cloud::{locations, pattern::KNOWN_PROVIDERS};
    let snapshot = cloud.regions();
    let known: Vec<(&str, &str)> = snapshot
        .iter()
        .copied()
        .chain(locations::table().map(|(p, r, _)| (p, r)))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let mut providers: Vec<&str> = KNOWN_PROVIDERS
        .iter()
        .copied()
        .chain(snapshot.iter().map(|(p, _)| *p))
        .collect();
    providers.sort_unstable();
    providers.dedup();
    let first_line =
        (p.line + 1).saturating_sub(super::model::line_of(&p.text, "metadata", Some(&p.name)));
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for (section, patterns, written) in [
        ("deny", &p.deny_cloud, &p.source.spec.deny.cloud_regions),
        ("allow", &p.allow_cloud, &p.source.spec.allow.cloud_regions),
    ] {
        for (pattern, text) in patterns.iter().zip(written) {
            let line = first_line + super::model::line_of(&p.text, section, Some(text)) - 1;
            let error = |reason: String| super::PolicyError {
                file: p.file.clone(),
                line,
                reason: format!("{section}.cloudRegions {text:?}: {reason}"),
            };
            if !providers.contains(&pattern.provider()) {
                let near = nearest(pattern.provider(), providers.iter().copied());
                errors.push(error(format!(
                    "no cloud provider {:?} is known (known: {}){near}",
                    pattern.provider(),
                    providers.join(", ")
                )));
                continue;
            }
            if !pattern.expand(snapshot.iter().copied()).is_empty() {
                continue;
            }
            let of_provider = known
                .iter()
                .filter(|(pr, _)| *pr == pattern.provider())
                .map(|(_, r)| *r);
            let wanted = text.split_once(':').map_or("", |(_, r)| r);
            let reason = format!(
                "matches no region of {} (in the cloud snapshot or the location table)",
                pattern.provider(),
            );
            let near = nearest(wanted, of_provider);
            if section == "deny" {
                errors.push(error(format!(
                    "{reason}: it would deny nothing, so the policy is refused{near}"
                )));
            } else {
                warnings.push(format!(
                    "allow.cloudRegions {text:?} (line {line}) {reason}: it allows nothing{near}"
                ));
            }
        }
    }
    (errors, warnings)
}

/// The countries a country database places addresses in, and its path.
#[derive(Debug, Clone, Default)]
pub struct Countries {
    pub db: std::path::PathBuf,
    pub present: std::collections::BTreeSet<String>,
}

/// Countries a policy names that the database places no address in: such a
/// rule matches nothing (a warning: the database decides, not the policy).
pub fn absent_countries(p: &CompiledPolicy, countries: &Countries) -> Option<String> {
    let spec = &p.source.spec;
    let absent: Vec<String> = spec
        .allow
        .countries
        .iter()
        .map(|c| format!("allow {}", c.to_ascii_uppercase()))
        .chain(
            spec.deny
                .countries
                .iter()
                .map(|c| format!("deny {}", c.to_ascii_uppercase())),
        )
        .filter(|c| !countries.present.contains(&c[c.len() - 2..]))
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "countries {} have no address in the country database {}: they match nothing",
            absent.join(", "),
            countries.db.display()
        )
    })
}

/// The resolvers whose answers teach names (`--dns-resolver`, or the
/// host's resolv.conf), and whether one on loopback counts
/// (`--dns-trust-loopback`).
#[derive(Debug, Clone, Default)]
pub struct Resolvers {
    pub nets: Vec<ipnetwork::IpNetwork>,
    pub trust_loopback: bool,
}

impl Resolvers {
    pub fn new(nets: Vec<ipnetwork::IpNetwork>, trust_loopback: bool) -> Self {
        Self {
            nets,
            trust_loopback,
        }
    }

    /// Whether any of them teaches names: the kernel reads answers from a
    /// loopback resolver only with `trust_loopback`, so a list of loopback
    /// resolvers alone (a stub at 127.0.0.53) teaches none without it.
    pub fn teach_names(&self) -> bool {
        self.nets.iter().any(|n| {
            let on_loopback = match n {
                ipnetwork::IpNetwork::V4(v4) => v4.prefix() >= 8 && v4.ip().is_loopback(),
                ipnetwork::IpNetwork::V6(v6) => v6.prefix() == 128 && v6.ip().is_loopback(),
            };
            self.trust_loopback || !on_loopback
        })
    }
}

/// What the daemon judges a policy's rules with, beside the country
/// database: the cloud snapshot in force and the resolvers.
pub struct Data<'a> {
    pub cloud: &'a crate::cloud::CloudRanges,
    pub resolvers: &'a Resolvers,
}

/// Rules of a policy that no loaded data can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub policy: String,
    /// `cloud_ranges` or `dns_resolver` (the metrics' label).
    pub data: &'static str,
    /// What is missing and what it means, for people.
    pub text: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policy {}: {}", self.policy, self.text)
    }
}

/// The rules of `p` that the data loaded cannot judge: cloudRegions that
/// name a known region no loaded cloud snapshot has (without
/// `--cloud-ranges` that is every one: they match nothing, and the
/// addresses of those regions are placed by the country database instead),
/// and domain rules when no trusted resolver teaches names (they match
/// nothing). A typo is not missing data: see [`cloud_patterns`].
pub fn missing_data(p: &CompiledPolicy, data: &Data) -> Vec<Missing> {
    let mut out = Vec::new();
    let snapshot = data.cloud.regions();
    let unjudged: Vec<String> = p
        .allow_cloud
        .iter()
        .chain(&p.deny_cloud)
        .filter(|c| {
            !c.expand(std::iter::empty()).is_empty()
                && !snapshot.iter().any(|(pr, r)| c.matches(pr, r))
        })
        .map(ToString::to_string)
        .collect();
    if !unjudged.is_empty() {
        let loaded = if data.cloud.is_empty() {
            "no cloud ranges are loaded (--cloud-ranges)".to_string()
        } else {
            let mut providers: Vec<&str> = snapshot.iter().map(|(pr, _)| *pr).collect();
            providers.dedup();
            format!(
                "the cloud ranges loaded (of {}) have no such region",
                providers.join(", ")
            )
        };
        out.push(Missing {
            policy: p.name.clone(),
            data: "cloud_ranges",
            text: format!(
                "cloudRegions {} cannot be judged: {loaded}, so they match nothing and \
                 addresses in those regions are placed by the country database",
                unjudged.join(", ")
            ),
        });
    }
    let domains = p.allow_domains.len() + p.deny_domains.len();
    if domains > 0 && !data.resolvers.teach_names() {
        let resolvers = if data.resolvers.nets.is_empty() {
            "no resolver (--dns-resolver, or a nameserver in /etc/resolv.conf)".to_string()
        } else {
            format!(
                "only loopback resolvers ({}) without --dns-trust-loopback",
                data.resolvers
                    .nets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        out.push(Missing {
            policy: p.name.clone(),
            data: "dns_resolver",
            text: format!(
                "{domains} domain rules cannot be judged: names are learned from {resolvers}, \
                 so no name is ever known and they match nothing"
            ),
        });
    }
    out
}

/// "; did you mean X?" for the names nearest to `wanted`, when they are
/// within two edits (at most three names), or "".
fn nearest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> String {
    let mut scored: Vec<(usize, &str)> = names
        .map(|n| (edits(wanted, n), n))
        .filter(|(d, _)| *d <= 2)
        .collect();
    scored.sort_unstable();
    scored.dedup_by(|a, b| a.1 == b.1);
    let Some(&(best, _)) = scored.first() else {
        return String::new();
    };
    let names: Vec<&str> = scored
        .iter()
        .filter(|(d, _)| *d == best)
        .take(3)
        .map(|(_, n)| *n)
        .collect();
    format!("; did you mean {}?", names.join(", "))
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_outside_the_root_can_never_select() {
        assert!(can_select_under("/emt-1/sel", "/emt-1"));
        assert!(can_select_under("/emt-1", "/emt-1"));
        assert!(can_select_under("/emt-1/**", "/emt-1"));
        assert!(can_select_under("/emt-*/sel", "/emt-1"));
        assert!(can_select_under("/**", "/emt-1"));
        assert!(can_select_under("/system.slice/x", "/"));
        assert!(!can_select_under("/system.slice/x", "/emt-1"));
        assert!(!can_select_under("/emt-10/sel", "/emt-1"));
        assert!(!can_select_under("/kubepods.slice/**", "/emt-1"));
    }

    fn policy(selector: &str, mode: &str, cidrs: &str) -> CompiledPolicy {
        let text = format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: p}}\n\
             spec:\n  mode: {mode}\n  selector:\n    cgroupPaths: [\"{selector}\"]\n  \
             allow:\n    countries: [DE]\n    cidrs: [{cidrs}]\n"
        );
        crate::policy::compile_text(std::path::Path::new("p.yaml"), &text)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn enforcing_over_the_host_without_loopback_is_warned() {
        let w = warnings(&policy("/**", "enforce", "198.51.100.0/24"), None);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("/system.slice"), "{w:?}");
        assert!(
            w[0].contains("127.0.0.0/8") && w[0].contains("192.168.0.0/16"),
            "{w:?}"
        );
        // Monitor cuts nothing; a workload's own cgroup is not the host.
        assert!(warnings(&policy("/**", "monitor", "198.51.100.0/24"), None).is_empty());
        assert!(warnings(
            &policy("/kubepods.slice/pod1/**", "enforce", "198.51.100.0/24"),
            None
        )
        .is_empty());
        let safe = "127.0.0.0/8, \"::1/128\", 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16";
        assert!(warnings(&policy("/**", "enforce", safe), None).is_empty());
        let outside = warnings(
            &policy("/system.slice/x.service", "monitor", "10.0.0.0/8"),
            Some("/emt-1"),
        );
        assert!(
            outside[0].contains("outside the cgroup root /emt-1"),
            "{outside:?}"
        );
    }

    #[test]
    fn user_sessions_and_user_units_are_warned_as_no_boundary() {
        let safe = "127.0.0.0/8, \"::1/128\", 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16";
        let w = warnings(
            &policy("/user.slice/user-1000.slice/**", "enforce", safe),
            None,
        );
        assert!(
            w.len() == 1 && w[0].contains("no boundary") && w[0].contains("systemd-run --user"),
            "{w:?}"
        );
        assert!(warnings(&policy("/user.slice/**", "monitor", safe), None).is_empty());
        assert!(warnings(&policy("/system.slice/x.service", "enforce", safe), None).is_empty());
        let units = crate::policy::compile_text(
            std::path::Path::new("u.yaml"),
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: u}\n\
             spec:\n  mode: enforce\n  selector:\n    systemdUnits: [\"sync.service\"]\n  \
             allow:\n    countries: [DE]\n",
        )
        .unwrap()
        .remove(0);
        let w = warnings(&units, None);
        assert!(
            w.iter()
                .any(|w| w.contains("user@UID.service") && w.contains("no boundary")),
            "{w:?}"
        );
    }

    #[test]
    fn loopback_resolvers_teach_names_only_when_trusted() {
        let r = |nets: &[&str], trust| {
            Resolvers::new(nets.iter().map(|n| n.parse().unwrap()).collect(), trust)
        };
        assert!(!r(&[], false).teach_names());
        assert!(!r(&[], true).teach_names());
        assert!(!r(&["127.0.0.53/32", "::1/128"], false).teach_names());
        assert!(r(&["127.0.0.53/32"], true).teach_names());
        assert!(r(&["127.0.0.53/32", "10.96.0.10/32"], false).teach_names());
        // A range wider than loopback holds resolvers elsewhere.
        assert!(r(&["0.0.0.0/0"], false).teach_names());
    }

    #[test]
    fn cloud_regions_and_domains_without_their_data_are_missing() {
        let p = crate::policy::compile_text(
            std::path::Path::new("c.yaml"),
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: c}\n\
             spec:\n  mode: enforce\n  selector:\n    cgroupPaths: [\"/a\"]\n  \
             allow:\n    cloudRegions: [\"aws:eu-west-3\"]\n    domains: [api.example.com]\n",
        )
        .unwrap()
        .remove(0);
        let none = crate::cloud::CloudRanges::default();
        let resolvers = Resolvers::new(vec!["10.96.0.10/32".parse().unwrap()], false);
        let m = missing_data(
            &p,
            &Data {
                cloud: &none,
                resolvers: &resolvers,
            },
        );
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!((m[0].data, m[0].policy.as_str()), ("cloud_ranges", "c"));
        assert!(
            m[0].text
                .contains("cloudRegions aws:eu-west-3 cannot be judged")
                && m[0].text.contains("no cloud ranges are loaded"),
            "{m:?}"
        );
        // A snapshot with the region judges it; one of another region does not.
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("r.csv");
        std::fs::write(
            &csv,
            "cidr,provider,region,service\n198.51.100.0/24,aws,eu-west-3,EC2\n",
        )
        .unwrap();
        let paris = crate::cloud::load_dir(dir.path()).unwrap();
        let judged = Data {
            cloud: &paris,
            resolvers: &resolvers,
        };
        assert!(missing_data(&p, &judged).is_empty());
        std::fs::write(
            &csv,
            "cidr,provider,region,service\n198.51.100.0/24,aws,us-east-1,EC2\n",
        )
        .unwrap();
        let other = crate::cloud::load_dir(dir.path()).unwrap();
        let m = missing_data(
            &p,
            &Data {
                cloud: &other,
                resolvers: &resolvers,
            },
        );
        assert!(
            m.len() == 1 && m[0].text.contains("(of aws) have no such region"),
            "{m:?}"
        );
        // Only a loopback stub, not trusted: no name is ever learned.
        let stub = Resolvers::new(vec!["127.0.0.53/32".parse().unwrap()], false);
        let m = missing_data(
            &p,
            &Data {
                cloud: &paris,
                resolvers: &stub,
            },
        );
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].data, "dns_resolver");
        assert!(
            m[0].text.contains("1 domain rules cannot be judged")
                && m[0].text.contains(
                    "only loopback resolvers (127.0.0.53/32) without --dns-trust-loopback"
                ),
            "{m:?}"
        );
    }
}
