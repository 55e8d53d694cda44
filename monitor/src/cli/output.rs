//! Output for people (aligned tables, colour on a terminal only) and for
//! machines (JSON lines with the daemon's --log-events keys).
use std::io::{IsTerminal, Write};

use crate::{api::pb, events::Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub struct Printer {
    format: Format,
    colour: bool,
    header_done: bool,
    /// A NODE column first (`fleet events`).
    node: bool,
    /// Standard output, written in blocks: a line each was a write (and a
    /// wakeup of the reader) per event, half of what `events --follow`
    /// cost. Flushed by `flush` (a stream does when it has nothing ready)
    /// and when the printer goes.
    out: std::io::BufWriter<std::io::Stdout>,
}

/// Width of the NODE column of fleet output.
pub const NODE_WIDTH: usize = 14;

const COLUMNS: [(&str, usize); 11] = [
    ("TIME", 24),
    ("VERDICT", 10),
    ("HOOK", 8),
    ("PROCESS", 18),
    ("EXE", 24),
    ("CGROUP", 26),
    ("NAME", 26),
    ("DESTINATION", 30),
    ("PLACE", 22),
    ("RULE", 12),
    ("POLICY", 0),
];

/// Country, and the cloud region where the provider publishes one:
/// `DE aws:eu-central-1`; `-` when nothing is known.
pub fn place(country: &str, cloud: &str, region: &str) -> String {
    let country = if country.is_empty() { "-" } else { country };
    if cloud.is_empty() {
        country.to_string()
    } else {
        format!("{country} {}", crate::cloud::place_label(cloud, region))
    }
}

/// The name, `-` for an address reached without a lookup.
pub fn name(dns_name: &str) -> &str {
    if dns_name.is_empty() {
        "-"
    } else {
        dns_name
    }
}

/// What the runtime said of the event's container, on a line below its
/// row: `container NAME image IMAGE@sha256:12 digits pod NS/NAME`; None
/// when it said nothing.
pub fn container_line(e: &pb::Event) -> Option<String> {
    if e.container_name.is_empty() && e.image.is_empty() {
        return None;
    }
    let mut out = format!(
        "container {} ({})",
        if e.container_name.is_empty() {
            "-"
        } else {
            &e.container_name
        },
        e.container_id.get(..12).unwrap_or(&e.container_id)
    );
    if !e.image.is_empty() {
        out.push_str(&format!(" image {}", e.image));
        if let Some(d) = e.image_digest.strip_prefix("sha256:") {
            out.push_str(&format!("@sha256:{}", d.get(..12).unwrap_or(d)));
        }
    }
    if !e.pod_name.is_empty() {
        out.push_str(&format!(" pod {}/{}", e.pod_namespace, e.pod_name));
    }
    if !e.pod_labels.is_empty() {
        let mut labels: Vec<String> = e
            .pod_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        out.push_str(&format!(" labels {}", labels.join(",")));
    }
    Some(out)
}

/// Keeps the start and the end of a long value and cuts the middle: an
/// IPv6 address keeps its prefix (who owns it) and its port.
pub fn fit_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if width == 0 || n <= width {
        return s.to_string();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let h: String = s.chars().take(head).collect();
    let t: String = s.chars().skip(n - tail).collect();
    format!("{h}…{t}")
}

/// Keeps the end of a long value (the interesting part of a cgroup path).
fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if width == 0 || n <= width {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            header_done: false,
            node: false,
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
        }
    }

    /// A line into the buffer; fails as `println!` does.
    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        if let Err(e) = writeln!(self.out, "{text}") {
            panic!("failed printing to stdout: {e}");
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            panic!("failed printing to stdout: {e}");
        }
    }

    /// Events of several nodes: each says its node.
    pub fn with_node(format: Format) -> Self {
        let mut p = Self::new(format);
        p.node = true;
        p
    }

    fn header(&mut self) {
        if self.header_done || self.format != Format::Table {
            return;
        }
        self.header_done = true;
        let node = self.node.then(|| format!("{:<NODE_WIDTH$}", "NODE"));
        let cells: Vec<String> = node
            .into_iter()
            .chain(COLUMNS.iter().map(|(h, w)| format!("{h:<w$}", w = *w)))
            .collect();
        self.line(format_args!("{}", cells.join(" ").trim_end()));
    }

    pub fn event(&mut self, e: pb::Event) {
        match self.format {
            Format::Json => {
                let (seq, node) = (e.seq, e.node.clone());
                let mut v = serde_json::to_value(Event::from(e)).unwrap_or_default();
                // The store position, where the event has one (a resumed
                // stream, the history): what `--after-seq` takes.
                if let (Some(o), true) = (v.as_object_mut(), seq != 0) {
                    o.insert("seq".into(), seq.into());
                }
                if let (Some(o), true) = (v.as_object_mut(), self.node) {
                    o.insert("node".into(), node.into());
                }
                // As `{v}` prints it, without the formatter.
                let written = serde_json::to_writer(&mut self.out, &v)
                    .map_err(std::io::Error::from)
                    .and_then(|()| self.out.write_all(b"\n"));
                if let Err(e) = written {
                    panic!("failed printing to stdout: {e}");
                }
            }
            Format::Table => {
                self.header();
                let time = e
                    .time
                    .get(..23)
                    .map(|t| format!("{t}Z"))
                    .unwrap_or(e.time.clone());
                let process = format!("{}[{}]", e.comm, e.tgid);
                let dst = if e.dst_ip.contains(':') {
                    format!("[{}]:{}/{}", e.dst_ip, e.dst_port, e.protocol)
                } else {
                    format!("{}:{}/{}", e.dst_ip, e.dst_port, e.protocol)
                };
                let values = [
                    time,
                    e.verdict.clone(),
                    e.hook.clone(),
                    process,
                    if e.exe.is_empty() {
                        "-".into()
                    } else {
                        e.exe.clone()
                    },
                    e.cgroup_path.clone(),
                    name(&e.dns_name).to_string(),
                    dst,
                    place(&e.country, &e.cloud, &e.cloud_region),
                    e.rule.clone(),
                    e.policy.clone(),
                ];
                let mut line = String::new();
                if self.node {
                    line.push_str(&format!("{:<NODE_WIDTH$} ", fit(&e.node, NODE_WIDTH)));
                }
                for (i, ((_, w), v)) in COLUMNS.iter().zip(values.iter()).enumerate() {
                    let fitted = if COLUMNS[i].0 == "DESTINATION" || COLUMNS[i].0 == "EXE" {
                        fit_middle(v, *w)
                    } else {
                        fit(v, *w)
                    };
                    let cell = format!("{fitted:<w$}", w = *w);
                    let cell = if i == 1 && self.colour {
                        let code = match e.verdict.as_str() {
                            "denied" => "31",
                            "would_deny" => "33",
                            "drift" => "35",
                            _ => "32",
                        };
                        format!("\x1b[{code}m{cell}\x1b[0m")
                    } else {
                        cell
                    };
                    line.push_str(&cell);
                    line.push(' ');
                }
                self.line(format_args!("{}", line.trim_end()));
                if let Some(c) = container_line(&e) {
                    self.line(format_args!("  {c}"));
                }
                if let Some(d) = &e.drift {
                    self.line(format_args!("  {}", drift_line(d)));
                }
            }
        }
    }

    pub fn gap(&mut self, missed: u64) {
        match self.format {
            Format::Json => self.line(format_args!(
                "{}",
                serde_json::json!({"gap": {"missed": missed}})
            )),
            Format::Table => self.line(format_args!(
                "--- {missed} events missed: this client read too slowly ---"
            )),
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        // At the end of a command; an error there has nobody to tell.
        let _ = self.out.flush();
    }
}

/// What a drift alert says, under its row.
fn drift_line(d: &pb::Drift) -> String {
    let known = if d.known.is_empty() {
        format!("no {} at all", d.kind)
    } else {
        d.known.join(", ")
    };
    format!(
        "drift: new {} {} ({} by the policy); baseline {} ({}) knows: {known}",
        d.kind,
        d.value,
        d.attempt.replace('_', " "),
        d.baseline,
        if d.listed {
            "this workload's entry"
        } else {
            "all its workloads: this one is not listed"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_destinations_keep_prefix_and_port() {
        let d = "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:443/tcp";
        let f = fit_middle(d, 30);
        assert_eq!(f.chars().count(), 30);
        assert!(f.starts_with("[2001:db8:aaaa"), "{f}");
        assert!(f.ends_with(":443/tcp"), "{f}");
        assert_eq!(fit_middle("1.1.1.1:53/udp", 30), "1.1.1.1:53/udp");
    }

    /// A provider that publishes no regions (Cloudflare) reads as itself,
    /// not `cloudflare:`.
    #[test]
    fn a_cloud_range_without_a_region_is_its_provider() {
        assert_eq!(place("US", "cloudflare", ""), "US cloudflare");
        assert_eq!(place("DE", "aws", "eu-central-1"), "DE aws:eu-central-1");
        assert_eq!(place("", "", ""), "-");
    }
}
