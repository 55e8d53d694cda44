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
    /// Group by (comma-separated): cgroup, pod, process, country, continent,
    /// destination, port, protocol, verdict, policy, name (the DNS name),
    /// cloud (the cloud region).
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

fn dest(f: &pb::Flow) -> String {
    match (f.dst_ip.as_str(), f.dst_port) {
        ("", 0) => "*".into(),
        ("", p) => format!("*:{p}/{}", f.protocol),
        (ip, p) if ip.contains(':') => format!("[{ip}]:{p}/{}", f.protocol),
        (ip, p) => format!("{ip}:{p}/{}", f.protocol),
    }
}

/// A flow's name: `-` for "no lookup" where names are part of the key (no
/// group-by, or grouped by name), `*` where they were folded away.
fn flow_name(f: &pb::Flow, grouped_by_name: bool) -> &str {
    if f.dns_name.is_empty() {
        if grouped_by_name {
            "-"
        } else {
            "*"
        }
    } else {
        &f.dns_name
    }
}

fn flow_place(f: &pb::Flow) -> String {
    match (f.country.as_str(), f.cloud_region.as_str()) {
        ("", "") => "*".into(),
        (c, "") => c.into(),
        ("", r) => format!("- {r}"),
        (c, r) => format!("{c} {r}"),
    }
}

fn or_star(s: &str) -> &str {
    if s.is_empty() {
        "*"
    } else {
        s
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
    match args.output {
        FlowFormat::Json => {
            for f in &flows {
                println!("{}", serde_json::to_string(f)?);
            }
        }
        FlowFormat::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(crate::store::query::FLOW_CSV_COLUMNS)?;
            for f in &flows {
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
                    &f.dst_port.to_string(),
                    &f.country,
                    &f.continent,
                    &f.dns_name,
                    &f.cloud_region,
                    &f.packets.to_string(),
                    &f.bytes.to_string(),
                ])?;
            }
            w.flush()?;
        }
        FlowFormat::Table => {
            let grouped_by_name =
                args.group_by.is_empty() || args.group_by.iter().any(|g| g == "name");
            println!(
                "{:<8} {:>9} {:<24} {:<24} {:<10} {:<28} {:<16} {:<28} {:<28} {:<22} POLICY",
                "COUNT",
                "SENT",
                "FIRST SEEN",
                "LAST SEEN",
                "VERDICT",
                "CGROUP",
                "PROCESS",
                "NAME",
                "DESTINATION",
                "PLACE"
            );
            for f in &flows {
                let short = |t: &str| t.get(..23).map(|t| format!("{t}Z")).unwrap_or_default();
                println!(
                    "{:<8} {:>9} {:<24} {:<24} {:<10} {:<28} {:<16} {:<28} {:<28} {:<22} {}",
                    f.count,
                    sent(f.bytes),
                    short(&f.first_seen),
                    short(&f.last_seen),
                    or_star(&f.verdict),
                    or_star(if f.cgroup_path.is_empty() {
                        &f.pod_uid
                    } else {
                        &f.cgroup_path
                    }),
                    or_star(&f.comm),
                    flow_name(f, grouped_by_name),
                    dest(f),
                    flow_place(f),
                    or_star(&f.policy)
                );
            }
            if total as usize > flows.len() {
                println!("({} of {total} rows; --limit shows more)", flows.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
