//! The YAML model of an `EgressPolicy` and its validation, with the file and
//! line of every problem.
use std::{collections::BTreeMap, fmt, path::Path};

use serde::Deserialize;

pub const API_VERSION: &str = "egress-monitor.io/v1";
pub const KIND: &str = "EgressPolicy";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub mode: Mode,
    pub selector: Selector,
    #[serde(default)]
    pub allow: Rules,
    #[serde(default)]
    pub deny: Rules,
    /// Judge destinations that never leave the link (link-local unicast,
    /// link-local multicast, broadcast) like any other; by default they are
    /// allowed (rule `cidr`), so an enforcing policy does not break
    /// neighbour discovery, DHCP, mDNS or the cloud metadata service.
    #[serde(default, rename = "judgeLinkLocal")]
    pub judge_link_local: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub cgroup_paths: Vec<String>,
    /// Kubernetes pod UIDs (`metadata.uid`): selects each pod's cgroup, so
    /// its containers, present and future, are covered.
    #[serde(default)]
    pub pods: Vec<String>,
    /// systemd unit names or globs (`nginx.service`, `*.service`): selects
    /// each matching unit's cgroup.
    #[serde(default)]
    pub systemd_units: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub continents: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// DNS names (`api.openai.com`) and wildcards (`*.salesforce.com`, any
    /// name below it): judged for the addresses the workload resolved from
    /// them.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Cloud provider regions (`aws:eu-central-1`, `aws:eu-*`,
    /// `gcp:europe-west3`), from the providers' published ranges.
    #[serde(default, rename = "cloudRegions")]
    pub cloud_regions: Vec<String>,
}

/// A problem in a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {reason}", if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// One YAML document of a file, with its first line in the file.
pub struct Document<'a> {
    pub text: &'a str,
    pub first_line: usize,
}

/// Splits a file into its YAML documents (`---` lines).
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// The line (1-based, within `text`) of the first occurrence of `token` as a
/// whole word after the line holding `section:`, or of the section itself.
pub fn line_of(text: &str, section: &str, token: Option<&str>) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let key = format!("{section}:");
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&key))
        .unwrap_or(0);
    if let Some(token) = token {
        for (i, l) in lines.iter().enumerate().skip(start) {
            if contains_word(l, token) {
                return i + 1;
            }
        }
    }
    start + 1
}

fn contains_word(line: &str, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let is_word = |c: char| {
        c.is_ascii_alphanumeric()
            || c == '_'
            || c == '.'
            || c == ':'
            || c == '/'
            || c == '*'
            || c == '-'
    };
    let mut from = 0;
    while let Some(i) = line[from..].find(token) {
        let at = from + i;
        let before = line[..at].chars().next_back();
        let after = line[at + token.len()..].chars().next();
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            return true;
        }
        // The match ends on a character boundary, and it is not empty.
        from = at + token.len();
    }
    false
}

/// Parses one document; serde's own location is made file-relative.
pub fn parse_document(file: &Path, doc: &Document) -> Result<PolicyDoc, PolicyError> {
    serde_yaml::from_str::<PolicyDoc>(doc.text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(1);
        let reason = e.to_string();
        // serde_yaml appends " at line N column M"; the prefix says it already.
        let reason = match reason.find(" at line ") {
            Some(i) => reason[..i].to_string(),
            None => reason,
        };
        PolicyError {
            file: file.display().to_string(),
            line: doc.first_line + line - 1,
            reason,
        }
    })
}
