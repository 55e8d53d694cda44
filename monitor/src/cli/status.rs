use std::process::ExitCode;

use clap::Args;

use super::output::Format;
use crate::api::client::{connect, status_error, ConnectArgs};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// Wait up to this many seconds for the daemon to answer with a policy
    /// set in force (right after it starts: for scripts).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// When no daemon answers: the pin directory to read [default: every
    /// one the lock files name, the default one and those in /sys/fs/bpf].
    #[arg(long)]
    pub pin_dir: Option<std::path::PathBuf>,
}

pub async fn get_status(args: &ConnectArgs) -> anyhow::Result<crate::api::pb::GetStatusResponse> {
    let mut client = connect(args).await?;
    Ok(client
        .get_status(crate::api::pb::GetStatusRequest {})
        .await
        .map_err(|s| status_error("GetStatus", s))?
        .into_inner())
}

/// The status, once the daemon answers with a policy set in force, asked
/// every 200 ms for up to `secs`.
pub async fn wait_for_status(
    args: &ConnectArgs,
    secs: u64,
) -> anyhow::Result<crate::api::pb::GetStatusResponse> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let last = match get_status(args).await {
            Ok(s) if s.policy_generation > 0 => return Ok(s),
            Ok(_) => anyhow::anyhow!("the daemon answers but has no policy set in force yet"),
            Err(e) => e,
        };
        if std::time::Instant::now() >= deadline {
            return Err(last.context(format!("the daemon was not ready within {secs} s")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = match args.wait {
        Some(secs) => wait_for_status(&args.connect, secs).await?,
        None if !super::pinned::daemon_reachable(&args.connect)? => {
            return super::pinned::status(args.pin_dir.as_deref(), args.output);
        }
        None => get_status(&args.connect).await?,
    };
    if args.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "egress-monitor {}  kernel {}  up {}s (since {})",
        s.version, s.kernel, s.uptime_seconds, s.started_at
    );
    println!("cgroup root     {}", s.cgroup_root);
    let progs: Vec<String> = s
        .programs
        .iter()
        .map(|p| format!("{} (id {})", p.hook, p.program_id))
        .collect();
    println!(
        "programs        {} attached: {}",
        progs.len(),
        progs.join(", ")
    );
    if !s.missing_programs.is_empty() {
        println!(
            "MISSING         {} (detached by someone else; the daemon attaches them again)",
            s.missing_programs.join(", ")
        );
    }
    if s.reattached > 0 {
        println!("reattached      {} since the start", s.reattached);
    }
    if let Some(g) = &s.geoip {
        println!(
            "geoip           {} ({}, schema {}, built {}), {} prefixes, sha256 {}",
            g.path, g.database_type, g.schema, g.build_time, g.prefixes, g.sha256
        );
    }
    if !s.cloud_ranges_dir.is_empty() {
        println!("cloud ranges    {}", s.cloud_ranges_dir);
        for f in &s.cloud_ranges {
            println!(
                "                {} ({}), {} ranges, dated {}, sha256 {}",
                f.path,
                f.providers.join(" "),
                f.ranges,
                f.date,
                f.sha256
            );
        }
        if !s.cloud_ranges_rejected.is_empty() {
            println!(
                "REJECTED        {} (the ranges above stay in force)",
                s.cloud_ranges_rejected
            );
        }
    }
    print_counts("dns", "kernel counts while pinned", &s.dns);
    print_counts("flow table", "kernel counts while pinned", &s.flows);
    if let Some(c) = &s.counters {
        println!(
            "events          since the start: allowed {}  denied {}  would_deny {}  drift alerts {}  lost in kernel {}  undecodable {}  missed by slow clients {}; stream clients now {}",
            c.allowed, c.denied, c.would_deny, c.drift_alerts, c.lost_in_kernel, c.undecodable, c.dropped_slow_clients, c.stream_clients
        );
        println!(
            "denials         lost in kernel (even the ring buffer's reserve for them was full): {}",
            c.denials_lost_in_kernel
        );
        println!(
            "processes       execs the kernel's process table had no room for: {}",
            c.processes_lost
        );
    }
    if let Some(st) = &s.store {
        println!(
            "store           {}{}  {} ({} bytes)  events stored since the start {}  lost for store {}  waiting to be written {}  write errors {}  last record seq {} hash {}",
            st.state,
            if st.error.is_empty() { String::new() } else { format!(" ({})", st.error) },
            st.path,
            st.size_bytes,
            st.events_stored,
            st.lost_for_store,
            st.pending,
            st.write_errors,
            st.chain_seq,
            st.chain_head.get(..16).unwrap_or(""),
        );
    }
    if let Some(n) = &s.nats {
        println!(
            "nats            {}{}  {} stream {} as {}.{}.>  acknowledged up to seq {}  backlog {} events  published since the start {}",
            n.state,
            if n.error.is_empty() { String::new() } else { format!(" ({})", n.error) },
            n.url,
            n.stream,
            n.subject_prefix,
            n.node,
            n.acked_seq,
            n.backlog_events,
            n.published,
        );
    }
    println!("node key        {}", s.node_public_key);
    println!(
        "policies        generation {} from {}",
        s.policy_generation, s.policy_dir
    );
    super::policy::print_policies(&s.policies, &s.rejected_files);
    super::policy::print_refused(&s.policy_refused);
    for c in &s.selector_conflicts {
        println!("SELECTOR CONFLICT {c}");
    }
    for m in &s.policy_data_missing {
        println!("DATA MISSING {m}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of named counters (`dns`, `flow table`), saying what they
/// count, when there are any.
fn print_counts(label: &str, what: &str, counts: &[crate::api::pb::NamedCount]) {
    if counts.is_empty() {
        return;
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|c| format!("{} {}", c.name, c.count))
        .collect();
    println!("{label:<15} {what}: {}", counts.join("  "));
}
