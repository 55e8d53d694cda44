//! The snapshot formats: AWS `ip-ranges.json`, Google Cloud `cloud.json`,
//! Azure Service Tags JSON and our CSV. Each parser hands its ranges to a
//! sink and returns the snapshot's date.
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{de::IgnoredAny, Deserialize};

use super::{CloudError, RawRange};

/// What a sink refuses a range for becomes the file's error.
pub(crate) type Sink<'a> = dyn FnMut(RawRange) -> Result<(), String> + 'a;

pub const CSV_HEADER: [&str; 4] = ["cidr", "provider", "region", "service"];

const EXPECTED: &str = "expected AWS ip-ranges.json (syncToken, createDate, prefixes), \
Google Cloud cloud.json (creationTime, prefixes), Azure Service Tags JSON (changeNumber, \
cloud, values) or CSV with the header cidr,provider,region,service";

/// Tells the format of `bytes` and parses it; the date of the snapshot.
pub(crate) fn parse(path: &Path, bytes: &[u8], sink: &mut Sink) -> Result<String, CloudError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        CloudError::new(path, Some(line), "not UTF-8 text")
    })?;
    let is_csv_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    if is_csv_name || first.is_some_and(|l| l.starts_with("cidr,")) {
        return csv(path, text, sink);
    }
    if !text.trim_start().starts_with('{') {
        return Err(CloudError::new(
            path,
            None,
            format!("unknown format: {EXPECTED}"),
        ));
    }
    json(path, text, sink)
}

/// serde_json's message without its position, which becomes the line.
fn json_error(path: &Path, what: &str, e: serde_json::Error) -> CloudError {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    let line = (e.line() > 0).then_some(e.line());
    CloudError::new(
        path,
        line,
        format!("{what}: {message} (column {})", e.column()),
    )
}

/// A network, host bits cleared.
pub(crate) fn parse_net(s: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a CIDR network: {e}"))?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("{s:?}: {e}"))
}

/// `YYYY-MM-DD` at the start of `s`.
fn date_prefix(s: &str) -> Option<String> {
    let d = s.trim().get(..10)?;
    let b = d.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10))
        .then(|| d.to_string())
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "createDate")]
    create_date: Option<IgnoredAny>,
    #[serde(rename = "creationTime")]
    creation_time: Option<IgnoredAny>,
    #[serde(rename = "changeNumber")]
    change_number: Option<IgnoredAny>,
    values: Option<IgnoredAny>,
}

fn json(path: &Path, text: &str, sink: &mut Sink) -> Result<String, CloudError> {
    let probe: Probe =
        serde_json::from_str(text).map_err(|e| json_error(path, "not valid JSON", e))?;
    if probe.create_date.is_some() {
        aws(path, text, sink)
    } else if probe.creation_time.is_some() {
        gcp(path, text, sink)
    } else if probe.change_number.is_some() && probe.values.is_some() {
        azure(path, text, sink)
    } else {
        Err(CloudError::new(
            path,
            None,
            format!("unknown JSON format: {EXPECTED}"),
        ))
    }
}

#[derive(Deserialize)]
struct AwsFile {
    #[serde(rename = "syncToken")]
    _sync_token: IgnoredAny,
    #[serde(rename = "createDate")]
    create_date: String,
    prefixes: Vec<AwsPrefix>,
    #[serde(default)]
    ipv6_prefixes: Vec<AwsPrefix6>,
}

#[derive(Deserialize)]
struct AwsPrefix {
    ip_prefix: String,
    region: String,
    service: String,
}

#[derive(Deserialize)]
struct AwsPrefix6 {
    ipv6_prefix: String,
    region: String,
    service: String,
}

fn aws(path: &Path, text: &str, sink: &mut Sink) -> Result<String, CloudError> {
    let file: AwsFile =
        serde_json::from_str(text).map_err(|e| json_error(path, "AWS ip-ranges.json", e))?;
    let date = date_prefix(&file.create_date).ok_or_else(|| {
        CloudError::new(
            path,
            None,
            format!("createDate {:?} is not YYYY-MM-DD-…", file.create_date),
        )
    })?;
    let v4 = file.prefixes.iter().enumerate().map(|(i, p)| {
        (
            format!("prefixes[{i}].ip_prefix"),
            &p.ip_prefix,
            &p.region,
            &p.service,
        )
    });
    let v6 = file.ipv6_prefixes.iter().enumerate().map(|(i, p)| {
        (
            format!("ipv6_prefixes[{i}].ipv6_prefix"),
            &p.ipv6_prefix,
            &p.region,
            &p.service,
        )
    });
    for (at, cidr, region, service) in v4.chain(v6) {
        let net = parse_net(cidr).map_err(|r| CloudError::new(path, None, format!("{at}: {r}")))?;
        sink(RawRange {
            net,
            provider: "aws",
            region,
            service,
        })
        .map_err(|r| CloudError::new(path, None, format!("{at}: {r}")))?;
    }
    Ok(date)
}

#[derive(Deserialize)]
struct GcpFile {
    #[serde(rename = "creationTime")]
    creation_time: String,
    prefixes: Vec<GcpPrefix>,
}

#[derive(Deserialize)]
struct GcpPrefix {
    #[serde(rename = "ipv4Prefix")]
    ipv4_prefix: Option<String>,
    #[serde(rename = "ipv6Prefix")]
    ipv6_prefix: Option<String>,
    scope: String,
    #[serde(default)]
    service: String,
}

fn gcp(path: &Path, text: &str, sink: &mut Sink) -> Result<String, CloudError> {
    let file: GcpFile =
        serde_json::from_str(text).map_err(|e| json_error(path, "Google Cloud cloud.json", e))?;
    let date = date_prefix(&file.creation_time).ok_or_else(|| {
        CloudError::new(
            path,
            None,
            format!("creationTime {:?} is not YYYY-MM-DD…", file.creation_time),
        )
    })?;
    for (i, p) in file.prefixes.iter().enumerate() {
        let err = |r: String| CloudError::new(path, None, format!("prefixes[{i}]: {r}"));
        let cidr = match (&p.ipv4_prefix, &p.ipv6_prefix) {
            (Some(c), None) | (None, Some(c)) => c,
            (None, None) => return Err(err("neither ipv4Prefix nor ipv6Prefix".into())),
            (Some(_), Some(_)) => return Err(err("both ipv4Prefix and ipv6Prefix".into())),
        };
        let net = parse_net(cidr).map_err(err)?;
        sink(RawRange {
            net,
            provider: "gcp",
            region: &p.scope,
            service: &p.service,
        })
        .map_err(err)?;
    }
    Ok(date)
}

#[derive(Deserialize)]
struct AzureFile {
    #[serde(rename = "changeNumber")]
    change_number: u64,
    #[serde(rename = "cloud")]
    _cloud: String,
    values: Vec<AzureValue>,
}

#[derive(Deserialize)]
struct AzureValue {
    name: String,
    properties: AzureProperties,
}

#[derive(Deserialize)]
struct AzureProperties {
    #[serde(default)]
    region: String,
    #[serde(rename = "systemService", default)]
    system_service: String,
    #[serde(rename = "addressPrefixes")]
    address_prefixes: Vec<String>,
}

/// The date in a name like `ServiceTags_Public_20261026.json`.
fn date_in_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let b = stem.as_bytes();
    (0..b.len().checked_sub(7)?).find_map(|i| {
        let d = &stem[i..i + 8];
        let edge = |j: usize| b.get(j).is_none_or(|c| !c.is_ascii_digit());
        let (m, day) = (d[4..6].parse::<u8>().ok()?, d[6..8].parse::<u8>().ok()?);
        (d.bytes().all(|c| c.is_ascii_digit())
            && (i == 0 || edge(i - 1))
            && edge(i + 8)
            && (1..=12).contains(&m)
            && (1..=31).contains(&day))
        .then(|| format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]))
    })
}

fn azure(path: &Path, text: &str, sink: &mut Sink) -> Result<String, CloudError> {
    let file: AzureFile =
        serde_json::from_str(text).map_err(|e| json_error(path, "Azure Service Tags", e))?;
    for (i, v) in file.values.iter().enumerate() {
        let service = if v.properties.system_service.is_empty() {
            &v.name
        } else {
            &v.properties.system_service
        };
        for (j, cidr) in v.properties.address_prefixes.iter().enumerate() {
            let err = |r: String| {
                CloudError::new(
                    path,
                    None,
                    format!("values[{i}] ({}).addressPrefixes[{j}]: {r}", v.name),
                )
            };
            let net = parse_net(cidr).map_err(err)?;
            sink(RawRange {
                net,
                provider: "azure",
                region: &v.properties.region,
                service,
            })
            .map_err(err)?;
        }
    }
    Ok(date_in_name(path).unwrap_or_else(|| format!("changeNumber {}", file.change_number)))
}

fn csv(path: &Path, text: &str, sink: &mut Sink) -> Result<String, CloudError> {
    // `# date:` among the comments before the header.
    let mut date = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(comment) = line.strip_prefix('#') else {
            if line.is_empty() {
                continue;
            }
            break;
        };
        if let Some(value) = comment.trim().strip_prefix("date:") {
            let value = value.trim();
            date = Some(
                date_prefix(value)
                    .filter(|d| d.len() == value.len())
                    .ok_or_else(|| {
                        CloudError::new(
                            path,
                            Some(i + 1),
                            format!("# date: {value:?} is not YYYY-MM-DD"),
                        )
                    })?,
            );
        }
    }
    // csv's line numbers count records, not the blank and comment lines
    // between them, and its byte offset is where it began looking: the line
    // is the first after that offset that holds something.
    let line_at = |pos: &csv::Position| {
        let mut byte = (pos.byte() as usize).min(text.len());
        loop {
            let rest = &text[byte..];
            if rest.starts_with('\n') {
                byte += 1;
            } else if rest.starts_with("\r\n") {
                byte += 2;
            } else if rest.starts_with('#') {
                byte += rest.find('\n').map_or(rest.len(), |i| i + 1);
            } else {
                break;
            }
        }
        text.as_bytes()[..byte]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    };
    let csv_error = |e: csv::Error| {
        let line = e.position().map(line_at);
        let reason = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => {
                format!("{len} fields, expected {expected_len} (cidr,provider,region,service)")
            }
            _ => e.to_string(),
        };
        CloudError::new(path, line, reason)
    };
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(csv_error)?.clone();
    let header_line = header.position().map(line_at);
    if header.is_empty() {
        return Err(CloudError::new(
            path,
            None,
            "no header line (expected cidr,provider,region,service)",
        ));
    }
    if header.iter().ne(CSV_HEADER) {
        return Err(CloudError::new(
            path,
            header_line,
            format!(
                "header {:?}, expected cidr,provider,region,service",
                header.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        // Only an error needs the line.
        let err = |r: String| CloudError::new(path, record.position().map(line_at), r);
        let net = parse_net(&record[0]).map_err(err)?;
        if record[1].is_empty() {
            return Err(err("no provider".into()));
        }
        sink(RawRange {
            net,
            provider: &record[1],
            region: &record[2],
            service: &record[3],
        })
        .map_err(err)?;
    }
    Ok(date.unwrap_or_else(|| "unknown".into()))
}
