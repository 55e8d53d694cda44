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
    /// An `EgressBaseline` file (relative to the policy's directory and
    /// inside it): the first contact of a selected workload with a
    /// destination outside it raises a drift alert.
    #[serde(default)]
    pub baseline: Option<String>,
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

/// Deepest nesting of mappings and sequences a policy document may have.
/// A policy nests four deep (document, `spec`, `allow`, `cidrs`); this is
/// far past that and well below the YAML crate's own recursion limit (128).
pub const MAX_DEPTH: usize = 32;

/// Screens one document at the parser's event level, before anything is
/// built from it: an anchor (`&name`) or an alias (`*name`) is refused,
/// since aliases are expanded when deserialising, and a few hundred
/// kilobytes aliased many times expand to gigabytes (libyaml bounds how
/// often aliases are followed, not the bytes they produce). Policies never
/// need them. Nesting deeper than [`MAX_DEPTH`] is refused too, and a syntax
/// error is reported at its line and column in the parser's words, never
/// with the text. Any error here refuses the document: the deserialiser
/// never sees a text this screen could not read.
pub fn screen(file: &Path, doc: &Document) -> Result<(), PolicyError> {
    screen_as(file, doc, &POLICY)
}

/// What a YAML document is meant to be, for the screen's messages: `a
/// policy`, and how deep one nests.
pub struct YamlKind {
    pub noun: &'static str,
    pub needs_depth: usize,
}

pub const POLICY: YamlKind = YamlKind {
    noun: "a policy",
    needs_depth: 4,
};

/// [`screen`] for any of our YAML kinds (policies, baselines).
pub fn screen_as(file: &Path, doc: &Document, kind: &YamlKind) -> Result<(), PolicyError> {
    use saphyr_parser::{Event, Parser};
    let at = |line: usize, reason: String| PolicyError {
        file: file.display().to_string(),
        line: doc.first_line + line.max(1) - 1,
        reason,
    };
    let refused = |line: usize, col: usize, what: &str| {
        let line = doc.first_line + line.max(1) - 1;
        PolicyError {
            file: file.display().to_string(),
            line,
            reason: format!(
                "anchors and aliases are not accepted in {}: line {line} ({what} at column {})",
                kind.noun,
                col + 1
            ),
        }
    };
    let mut depth = 0usize;
    for event in Parser::new_from_str(doc.text) {
        let (event, span) = event.map_err(|e| {
            let (line, col) = (e.marker().line(), e.marker().col());
            // An alias of no anchor is refused by the parser before it is
            // an event: it is an alias all the same.
            if e.info().contains("unknown anchor") {
                return refused(line, col, "an alias, `*`");
            }
            // At the end of the text the parser's line is one past the last.
            let last = doc.text.lines().count().max(1);
            if line > last {
                at(
                    last,
                    format!("not valid YAML at the end of the document: {}", e.info()),
                )
            } else {
                at(
                    line,
                    format!("not valid YAML at column {}: {}", col + 1, e.info()),
                )
            }
        })?;
        let (line, col) = (span.start.line(), span.start.col());
        let anchor = match event {
            Event::Alias(_) => return Err(refused(line, col, "an alias, `*`")),
            Event::Scalar(_, _, anchor, _) => anchor,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(at(
                        line,
                        format!(
                            "nested more than {MAX_DEPTH} levels deep at column {} ({} needs {})",
                            col + 1,
                            kind.noun,
                            kind.needs_depth
                        ),
                    ));
                }
                anchor
            }
            Event::SequenceEnd | Event::MappingEnd => {
                depth = depth.saturating_sub(1);
                0
            }
            _ => 0,
        };
        if anchor != 0 {
            return Err(refused(line, col, "an anchor, `&`"));
        }
    }
    Ok(())
}

/// Parses one document, after [`screen`]; the YAML crate's own location is
/// made file-relative, and its message keeps the path and what was expected
/// but not the value found (see [`without_values`]).
pub fn parse_document(file: &Path, doc: &Document) -> Result<PolicyDoc, PolicyError> {
    parse_as(file, doc, &POLICY)
}

/// [`parse_document`] for any of our YAML kinds: screened as `kind`, then
/// deserialised as `T`.
pub fn parse_as<T: serde::de::DeserializeOwned>(
    file: &Path,
    doc: &Document,
    kind: &YamlKind,
) -> Result<T, PolicyError> {
    screen_as(file, doc, kind)?;
    serde_norway::from_str::<T>(doc.text).map_err(|e| {
        let location = e.location();
        let line = location.as_ref().map(|l| l.line()).unwrap_or(1);
        let reason = e.to_string();
        // The crate appends " at line N column M"; the prefix says the line
        // already, and the column is said once, below.
        let reason = match reason.find(" at line ") {
            Some(i) => reason[..i].to_string(),
            None => reason,
        };
        let mut reason = without_values(&reason);
        if let Some(l) = location.filter(|l| l.line() > 0) {
            // Only where the value is hidden: there the column points at it.
            if reason.contains("(not shown)") {
                reason.push_str(&format!(" (column {})", l.column()));
            }
        }
        PolicyError {
            file: file.display().to_string(),
            line: doc.first_line + line - 1,
            reason,
        }
    })
}

/// A deserialising error without the value it found: a file that is not a
/// policy (a link to `/etc/shadow`, say) must not show its content to
/// whoever reads the error (viewers of the API see rejected files'
/// errors). `invalid type: string "root:$6$…", expected struct PolicyDoc`
/// becomes `invalid type: a string (not shown), expected struct PolicyDoc`;
/// an unknown field or variant at the top of a document, where it is the
/// file's first word, is not repeated either. Below the top (`spec: unknown
/// field \`denny\``) the name is kept: the document is a policy there, and
/// the name is what its author must fix.
pub fn without_values(reason: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        if let Some(i) = reason.find(marker) {
            let from = i + marker.len();
            // What was expected is ours (a type's description), so the last
            // ", expected " is the end of the value, whatever it contains.
            let to = reason[from..]
                .rfind(", expected ")
                .map_or(reason.len(), |j| from + j);
            let found = &reason[from..to];
            let kind = [
                ("string ", "a string (not shown)"),
                ("integer ", "an integer (not shown)"),
                ("floating point ", "a number (not shown)"),
                ("boolean ", "a boolean (not shown)"),
                ("character ", "a character (not shown)"),
            ]
            .iter()
            .find(|(prefix, _)| found.starts_with(prefix))
            .map(|(_, kind)| *kind);
            // The other kinds (sequence, map, unit value, ...) carry no value.
            let kind = kind.unwrap_or(if found.contains(['"', '`']) {
                "a value (not shown)"
            } else {
                found
            });
            return format!("{}{kind}{}", &reason[..from], &reason[to..]);
        }
    }
    for marker in ["unknown field `", "unknown variant `"] {
        if let Some(rest) = reason.strip_prefix(marker) {
            let what = &marker[..marker.len() - 2];
            // What follows the name is ours (the names expected), so the
            // last of these is the end of the name, whatever it contains.
            let end = rest
                .rfind("`, expected ")
                .or_else(|| rest.rfind("`, there are no "));
            return match end {
                Some(j) => format!("{what} (not shown){}", &rest[j + 1..]),
                None => format!("{what} (not shown)"),
            };
        }
    }
    reason.to_string()
}
