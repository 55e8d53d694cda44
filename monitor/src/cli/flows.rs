use std::process::ExitCode;

use clap::Args;

use super::filters::FilterArgs;
use crate::api::{
    client::{connect, status_error, ConnectArgs},
    pb,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Start of the window: RFC 3339, a UTC date or date and time
    /// (2026-12-01, "2026-12-01 22:47"), Unix seconds (0: the beginning),
    /// or a duration before now (1h, 30m, 7d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// End of the window, in any form --since takes (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by (comma-separated): cgroup, pod, process (the comm), exe
    /// (the executable), country, continent, destination, port, protocol,
    /// verdict, policy, name (the DNS name), cloud (the cloud region).
    #[arg(long, value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// count (largest first), first_seen, last_seen, destination.
    #[arg(long, default_value = "count")]
    pub sort: String,
    /// At most this many rows.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: FlowFormat,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Which columns a row's grouping kept: a kept column with no value reads
/// `-` (nothing known: no country, no lookup), a folded one `*` (any).
struct Kept<'a>(&'a [String]);

impl Kept<'_> {
    fn has(&self, g: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|b| b == g)
    }

    /// Whether a flow column survives the grouping (the same mapping as the
    /// store's: grouping by destination keeps its place, by country its
    /// continent).
    fn column(&self, col: &str) -> bool {
        match col {
            "cgroup" => self.has("cgroup") || self.has("pod"),
            "country" => self.has("country") || self.has("destination"),
            "continent" => self.has("continent") || self.has("country") || self.has("destination"),
            "cloud" => self.has("cloud") || self.has("destination"),
            g => self.has(g),
        }
    }

    fn cell<'v>(&self, col: &str, v: &'v str) -> &'v str {
        match (v.is_empty(), self.column(col)) {
            (false, _) => v,
            (true, true) => "-",
            (true, false) => "*",
        }
    }

    /// `1.1.1.1:443/tcp`, `[2001:db8::1]:53/udp`; folded parts are `*`, and
    /// an address grouped alone is just the address.
    fn dest(&self, f: &pb::Flow) -> String {
        let ip = match f.dst_ip.as_str() {
            "" => "*".to_string(),
            ip if ip.contains(':') => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let port = self.column("port").then(|| f.dst_port.to_string());
        let proto = self.column("protocol").then_some(f.protocol.as_str());
        match (port, proto) {
            (None, None) => ip,
            (p, r) => format!(
                "{ip}:{}/{}",
                p.as_deref().unwrap_or("*"),
                r.filter(|r| !r.is_empty()).unwrap_or("*")
            ),
        }
    }

    fn place(&self, f: &pb::Flow) -> String {
        let country = self.cell("country", &f.country);
        match f.cloud_region.as_str() {
            "" => country.to_string(),
            r => format!("{country} {r}"),
        }
    }

    /// A port in CSV: empty where the grouping folded ports away (not `0`,
    /// which is a port number).
    fn port(&self, f: &pb::Flow) -> String {
        if self.column("port") {
            f.dst_port.to_string()
        } else {
            String::new()
        }
    }
}

pub async fn run(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connect).await?;
    let mut flows = Vec::new();
    let mut token = String::new();
    let mut total = 0;
    while flows.len() < args.limit as usize {
        let page = client
            .query_flows(pb::QueryFlowsRequest {
                window: Some(pb::TimeWindow {
                    since: args.since.clone(),
                    until: args.until.clone().unwrap_or_default(),
                }),
                filter: Some(args.filter.to_pb()),
                group_by: args.group_by.clone(),
                sort: args.sort.clone(),
                limit: (args.limit as usize - flows.len()).min(10_000) as u32,
                page_token: token,
            })
            .await
            .map_err(|s| status_error("QueryFlows", s))?
            .into_inner();
        total = page.total;
        flows.extend(page.flows);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    print(&flows, &args.group_by, args.output, total, false)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints flows as `flows` does; `node`: a NODE column first (`fleet
/// flows`), `total`: the rows there were before the limit.
pub fn print(
    flows: &[pb::Flow],
    group_by: &[String],
    output: FlowFormat,
    total: u64,
    node: bool,
) -> anyhow::Result<()> {
    match output {
        FlowFormat::Json => {
            for f in flows {
                println!("{}", serde_json::to_string(f)?);
            }
        }
        FlowFormat::Csv => {
            let kept = Kept(group_by);
            let mut w = csv::Writer::from_writer(std::io::stdout());
            let columns = crate::store::query::FLOW_CSV_COLUMNS;
            if node {
                w.write_record(std::iter::once("node").chain(columns))?;
            } else {
                w.write_record(columns)?;
            }
            for f in flows {
                if node {
                    w.write_field(&f.node)?;
                }
                w.write_record([
                    f.first_seen.as_str(),
                    f.last_seen.as_str(),
                    &f.count.to_string(),
                    &f.verdict,
                    &f.policy,
                    &f.cgroup_path,
                    &f.pod_uid,
                    &f.comm,
                    &f.protocol,
                    &f.dst_ip,
                    &kept.port(f),
                    &f.country,
                    &f.continent,
                    &f.dns_name,
                    &f.cloud_region,
                    &f.packets.to_string(),
                    &f.bytes.to_string(),
                    &f.exe,
                    &f.image,
                ])?;
            }
            w.flush()?;
        }
        FlowFormat::Table => {
            let kept = Kept(group_by);
            let node_cell = |v: &str| {
                if node {
                    format!("{v:<w$} ", w = super::output::NODE_WIDTH)
                } else {
                    String::new()
                }
            };
            // An IMAGE column where a container's runtime named one.
            let images = flows.iter().any(|f| !f.image.is_empty());
            let image_cell = |v: &str| {
                if images {
                    format!("{:<32} ", super::output::fit_middle(v, 32))
                } else {
                    String::new()
                }
            };
            println!(
                "{}{:<8} {:>9} {:<24} {:<24} {:<10} {:<28} {:<16} {:<24} {}{:<28} {:<28} {:<22} POLICY",
                node_cell("NODE"),
                "COUNT",
                "SENT",
                "FIRST SEEN",
                "LAST SEEN",
                "VERDICT",
                "CGROUP",
                "PROCESS",
                "EXE",
                image_cell("IMAGE"),
                "NAME",
                "DESTINATION",
                "PLACE"
            );
            for f in flows {
                let short = |t: &str| t.get(..23).map(|t| format!("{t}Z")).unwrap_or_default();
                println!(
                    "{}{:<8} {:>9} {:<24} {:<24} {:<10} {:<28} {:<16} {:<24} {}{:<28} {:<28} {:<22} {}",
                    node_cell(&f.node),
                    f.count,
                    sent(f.bytes),
                    short(&f.first_seen),
                    short(&f.last_seen),
                    kept.cell("verdict", &f.verdict),
                    kept.cell(
                        "cgroup",
                        if f.cgroup_path.is_empty() {
                            &f.pod_uid
                        } else {
                            &f.cgroup_path
                        }
                    ),
                    kept.cell("process", &f.comm),
                    super::output::fit_middle(kept.cell("exe", &f.exe), 24),
                    image_cell(kept.cell("image", &f.image)),
                    kept.cell("name", &f.dns_name),
                    kept.dest(f),
                    kept.place(f),
                    kept.cell("policy", &f.policy)
                );
            }
            if total as usize > flows.len() {
                println!("({} of {total} rows; --limit shows more)", flows.len());
            }
        }
    }
    Ok(())
}

/// Payload bytes a flow sent, short: `-` when the egress program counted
/// none (a refused connect sends nothing).
fn sent(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes == 0 {
        return "-".into();
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_reads_dash_and_folded_reads_star() {
        let g = by(&["country"]);
        let k = Kept(&g);
        // An unknown country is a value of the grouping, not "any".
        assert_eq!(k.cell("country", ""), "-");
        assert_eq!(k.cell("country", "DE"), "DE");
        assert_eq!(k.cell("verdict", ""), "*");
        assert_eq!(k.place(&pb::Flow::default()), "-");
        let none = by(&[]);
        assert_eq!(Kept(&none).cell("name", ""), "-");
    }

    #[test]
    fn destinations_show_only_what_was_grouped() {
        let f = pb::Flow {
            dst_ip: "1.1.1.1".into(),
            dst_port: 0,
            protocol: String::new(),
            ..Default::default()
        };
        let g = by(&["destination"]);
        assert_eq!(Kept(&g).dest(&f), "1.1.1.1");
        assert_eq!(Kept(&g).port(&f), "");
        let g = by(&["destination", "protocol"]);
        let f6 = pb::Flow {
            dst_ip: "2001:db8::1".into(),
            protocol: "udp".into(),
            ..f.clone()
        };
        assert_eq!(Kept(&g).dest(&f6), "[2001:db8::1]:*/udp");
        let all = by(&[]);
        let full = pb::Flow {
            dst_port: 443,
            protocol: "tcp".into(),
            ..f
        };
        assert_eq!(Kept(&all).dest(&full), "1.1.1.1:443/tcp");
        assert_eq!(Kept(&all).port(&full), "443");
        let g = by(&["port"]);
        assert_eq!(
            Kept(&g).dest(&pb::Flow {
                dst_port: 53,
                ..Default::default()
            }),
            "*:53/*"
        );
    }
}
