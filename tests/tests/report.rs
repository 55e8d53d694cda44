//! `egress-monitor report`: the auditor's page for a window of a real
//! daemon's store, its figures read back from its `data-` attributes and
//! compared with the store's flows, rendered by headless Chromium to a PNG
//! and a PDF; bad input refused with a clear error.
use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(5);
/// Known traffic: refused TCP connects to the US from the enforcing
/// cgroup (one more from the workload named `HOSTILE`), monitor-mode TCP
/// sends to the US with `SENT` bytes each, allowed UDP datagrams to DE.
const DENIED: usize = 3;
const WOULD_DENY: usize = 2;
const ALLOWED: usize = 4;
const SENT: u64 = 300;
/// A workload calling itself a tag, with quotes and an ampersand (at
/// most 15 bytes: the kernel's comm; no slash: it is a file name).
const HOSTILE: &str = "<script>\"&'x";

/// `eu-only` enforcing on `sel`, `watch` in monitor mode on `unsel` (only
/// this suite selects it), both allowing DE; the daemon running.
fn start() -> TestEnv {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    env.write_policy(
        "m.yaml",
        &env.policy("watch", "monitor", "unsel", &allow_countries("DE")),
    );
    env.start_daemon(&[]);
    env
}

/// `egress-monitor report` on the environment's store with `args`.
fn report(env: &TestEnv, args: &[&str], path: &str) -> std::process::Output {
    Command::new(daemon_bin())
        .arg("report")
        .args(args)
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .env("PATH", path)
        .output()
        .unwrap()
}

fn system_path() -> String {
    std::env::var("PATH").unwrap_or_default()
}

/// The value of `attr` in each element of `html` that has every one of
/// `with` (`name="value"` pairs), in page order.
fn attr_where(html: &str, with: &[(&str, &str)], attr: &str) -> Vec<String> {
    html.split('<')
        .filter(|el| {
            with.iter()
                .all(|(k, v)| el.contains(&format!(" {k}=\"{v}\"")))
        })
        .filter_map(|el| {
            let key = format!(" {attr}=\"");
            let start = el.find(&key)? + key.len();
            Some(el[start..].split('"').next()?.to_string())
        })
        .collect()
}

/// The one number `attr` of the elements matching `with`.
fn number(html: &str, with: &[(&str, &str)], attr: &str) -> u64 {
    let found = attr_where(html, with, attr);
    assert_eq!(
        found.len(),
        1,
        "one element with {with:?} and {attr}: {found:?}"
    );
    found[0].parse().unwrap()
}

/// Attempts per (country, verdict) of the store's flows (`flows -o json`).
fn store_counts(env: &TestEnv) -> BTreeMap<(String, String), u64> {
    let mut by = BTreeMap::new();
    for f in env.flows(&[]) {
        *by.entry((s(&f, "country").to_string(), s(&f, "verdict").to_string()))
            .or_default() += f["count"].as_u64().unwrap_or(0);
    }
    by
}

/// Renders `html` with headless Chromium (the flags `report --pdf` uses):
/// a screenshot to `png`, or a PDF to `pdf`.
fn chromium(html: &Path, out_flag: String, profile: &Path) {
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1200,3000")
        .arg(out_flag)
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs (cargo xtask setup installs the Debian package)");
    assert!(
        o.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (width, height, non-white pixels, red pixels, amber pixels, green
/// pixels) of a PNG: red, amber and green are the bars' colours.
fn pixels(png_file: &Path) -> (u32, u32, usize, usize, usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_file).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "an RGB(A) screenshot: {:?}", info.color_type);
    let near = |p: &[u8], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 24);
    let (mut ink, mut red, mut amber, mut green) = (0, 0, 0, 0);
    for p in buf[..info.buffer_size()].chunks(step) {
        if p[..3].iter().any(|&v| v < 240) {
            ink += 1;
        }
        red += usize::from(near(p, [0xc6, 0x28, 0x28]));
        amber += usize::from(near(p, [0xef, 0x8f, 0x00]));
        green += usize::from(near(p, [0x2e, 0x7d, 0x32]));
    }
    (info.width, info.height, ink, red, amber, green)
}

/// A report of known traffic shows the store's numbers in its charts,
/// tables and first sentence, fetches nothing, shows a hostile workload
/// name as text, prints to PDF with --pdf, and renders in Chromium with
/// the charts' colours on the page.
#[test]
fn report_shows_the_stores_figures_and_renders() {
    let env = start();
    let since = now_rfc3339();
    let port = env.fresh_port().to_string();
    // The hostile workload first: the first process to contact the US
    // address, which the first-seen table names.
    let hostile = env.probe_named("sel", HOSTILE, &["tcp", US_V4, &port]);
    assert_eq!(
        hostile["errno"].as_i64(),
        Some(i64::from(libc::EPERM)),
        "{hostile}"
    );
    for _ in 0..DENIED {
        assert!(!env.probe("sel", &["tcp", US_V4, &port]).ok);
    }
    let sent = SENT.to_string();
    for _ in 0..WOULD_DENY {
        let r = env.probe("unsel", &["tcp-send", US_V4, &port, &sent]);
        assert!(r.ok, "monitor mode lets it through: {:?}", r.raw);
    }
    for _ in 0..ALLOWED {
        assert!(env.probe("sel", &["udp", DE_V4, &port]).ok);
    }
    let verdict = |v: &'static str| move |f: &Value| s(f, "verdict") == v;
    env.wait_flow_count("denied", DENIED as u64 + 1, WAIT, verdict("denied"));
    env.wait_flow_count("allowed", ALLOWED as u64, WAIT, verdict("allowed"));
    env.wait_flow_sum(
        "bytes sent in monitor mode",
        "bytes",
        SENT * WOULD_DENY as u64,
        WAIT,
        verdict("would_deny"),
    );
    let store = store_counts(&env);
    let want = |c: &str, v: &str| store.get(&(c.into(), v.into())).copied().unwrap_or(0);
    assert_eq!(want("US", "denied"), DENIED as u64 + 1, "{store:?}");
    assert_eq!(want("US", "would_deny"), WOULD_DENY as u64, "{store:?}");
    assert_eq!(want("DE", "allowed"), ALLOWED as u64, "{store:?}");

    let html_file = env.dir.path().join("report.html");
    let pdf_file = env.dir.path().join("report.pdf");
    let until = now_rfc3339();
    let (html_s, pdf_s) = (
        html_file.display().to_string(),
        pdf_file.display().to_string(),
    );
    let o = report(
        &env,
        &[
            "--since", &since, "--until", &until, "--out", &html_s, "--pdf", &pdf_s,
        ],
        &system_path(),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("--- report\n{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success());
    assert!(
        stdout.starts_with(&format!("wrote {}", html_file.display())),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&html_file).unwrap();

    // The charts and the table: attempts per country and verdict.
    let bars_are_the_stores = |html: &str, which: &str| {
        for (country, v) in [
            ("US", "denied"),
            ("US", "would_deny"),
            ("DE", "allowed"),
            ("US", "allowed"),
            ("DE", "denied"),
        ] {
            let n = want(country, v);
            let bar = [
                ("class", "bar"),
                ("data-country", country),
                ("data-verdict", v),
            ];
            assert_eq!(
                number(html, &bar, "data-count"),
                n,
                "{which}: {country} {v} bar"
            );
            let cells = attr_where(
                html,
                &[
                    ("data-country", country),
                    ("data-cloud", "-"),
                    ("data-verdict", v),
                ],
                "data-count",
            );
            assert_eq!(cells, [n.to_string()], "{which}: {country} {v} table cell");
        }
    };
    bars_are_the_stores(&html, "report");
    // Over time: the refusals per hour add up to the store's.
    let buckets = |attr: &str| -> u64 {
        attr_where(&html, &[("class", "bucket")], attr)
            .iter()
            .map(|n| n.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(buckets("data-denied"), want("US", "denied"));
    assert_eq!(buckets("data-would-deny"), want("US", "would_deny"));
    // The first sentence: what left, how much.
    let answer = [("id", "answer")];
    assert_eq!(
        number(&html, &answer, "data-left-attempts"),
        WOULD_DENY as u64
    );
    assert_eq!(
        number(&html, &answer, "data-left-bytes"),
        SENT * WOULD_DENY as u64
    );
    assert_eq!(number(&html, &answer, "data-denied"), DENIED as u64 + 1);
    let bytes = monitor::evidence::report::thousands(SENT * WOULD_DENY as u64);
    assert!(
        html.contains(&format!("{WOULD_DENY} connections in monitor mode left the allowed regions ({WOULD_DENY} attempts in 1 flow), {bytes} bytes, first ")),
        "{html}"
    );
    // The matrix: each workload's attempts to each country.
    let sel = env.rel("sel");
    let unsel = env.rel("unsel");
    let cell = |w: &str, c: &str| {
        number(
            &html,
            &[("data-workload", w), ("data-country", c)],
            "data-count",
        )
    };
    assert_eq!(cell(&sel, "US"), DENIED as u64 + 1);
    assert_eq!(cell(&sel, "DE"), ALLOWED as u64);
    assert_eq!(cell(&unsel, "US"), WOULD_DENY as u64);
    assert_eq!(cell(&unsel, "DE"), 0);
    // Policies with their digests, the deadlines.
    for p in ["eu-only", "watch"] {
        let sha = attr_where(&html, &[("data-policy", p)], "data-sha256");
        assert!(sha.iter().all(|h| h.len() == 64), "{p}: {sha:?}");
        assert!(!sha.is_empty(), "{p} in the policy table");
    }
    let start: i64 = attr_where(&html, &[("id", "incident")], "data-start")[0]
        .parse()
        .unwrap();
    let early: i64 = attr_where(&html, &[("data-deadline", "early-warning")], "data-at")[0]
        .parse()
        .unwrap();
    let notice: i64 = attr_where(&html, &[("data-deadline", "notification")], "data-at")[0]
        .parse()
        .unwrap();
    assert_eq!(
        (early - start, notice - start),
        (24 * 3_600_000_000_000, 72 * 3_600_000_000_000)
    );
    // Self-contained: nothing to fetch.
    for needle in [
        "http://", "https://", "src=", "href=", "url(", "@import", "<script", "<link",
    ] {
        assert!(!html.contains(needle), "{needle} in the page");
    }
    // The hostile name: text, in the first-seen table's process column.
    assert!(html.contains("&lt;script&gt;&quot;&amp;&#39;x"), "{html}");

    // The PDF --pdf printed.
    let pdf = std::fs::read(&pdf_file).unwrap();
    assert!(
        pdf.starts_with(b"%PDF"),
        "a PDF: {:?}",
        &pdf[..pdf.len().min(16)]
    );
    assert!(
        pdf.len() > 10_000,
        "a PDF of some pages: {} bytes",
        pdf.len()
    );

    // Rendered in a real browser: the page and its charts' colours.
    let png_file = env.dir.path().join("report.png");
    chromium(
        &html_file,
        format!("--screenshot={}", png_file.display()),
        &env.dir.path().join("chromium"),
    );
    let (w, h, ink, red, amber, green) = pixels(&png_file);
    eprintln!(
        "screenshot {w}x{h}: {ink} non-white, {red} red, {amber} amber, {green} green pixels"
    );
    assert_eq!((w, h), (1200, 3000));
    assert!(
        ink > 50_000,
        "the page is not blank: {ink} non-white pixels"
    );
    assert!(
        red > 1_000 && amber > 1_000 && green > 1_000,
        "the bars are drawn: {red} red, {amber} amber, {green} green"
    );
    // The page inside an evidence bundle of the same window: the same
    // figures, under the bundle's signature, and it renders too.
    let bundle = export_window(&env, &since, &until, "bundle.tar");
    let in_bundle = bundle_file(&bundle, "report.html");
    bars_are_the_stores(&in_bundle, "the bundle's report.html");
    let key = env.status()["node_public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        in_bundle.contains(&format!(
            "signed by node key <span class=\"mono\">{key}</span>"
        )),
        "the bundle's page names the key that signs it"
    );
    let bundle_html = env.dir.path().join("bundle-report.html");
    std::fs::write(&bundle_html, &in_bundle).unwrap();
    let bundle_png = env.dir.path().join("bundle-report.png");
    chromium(
        &bundle_html,
        format!("--screenshot={}", bundle_png.display()),
        &env.dir.path().join("chromium"),
    );
    let (_, _, ink, red, amber, green) = pixels(&bundle_png);
    assert!(
        ink > 50_000 && red > 1_000 && amber > 1_000 && green > 1_000,
        "the bundle's page renders with its bars: {ink} non-white, {red} red, {amber} amber, {green} green"
    );

    // Kept for the documentation (target/ is the build's scratch space).
    let keep = repo_root().join("target/report-example.png");
    std::fs::copy(&png_file, &keep).unwrap();
    std::fs::copy(&html_file, repo_root().join("target/report-example.html")).unwrap();
    eprintln!("screenshot kept as {}", keep.display());
}

/// Bad input gets a clear error naming what is wrong, and writes nothing:
/// a bad or empty window, a window no daemon saw, an existing --out
/// without --force, --pdf without Chromium.
#[test]
fn report_refuses_bad_input() {
    let env = start();
    assert!(!env.probe("sel", &["tcp", US_V4, &PORT.to_string()]).ok);
    let out = env.dir.path().join("r.html");
    let out_s = out.display().to_string();
    let refused = |args: &[&str], path: &str, want: &str| {
        let o = report(&env, args, path);
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("{args:?}: {err}");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    };
    let path = system_path();
    refused(
        &["--since", "yesterday", "--out", &out_s],
        &path,
        "error: --since: ",
    );
    refused(
        &["--since", "1h", "--until", "2h", "--out", &out_s],
        &path,
        "error: --until: ",
    );
    refused(
        &[
            "--since",
            "2026-01-01",
            "--until",
            "2026-01-01",
            "--out",
            &out_s,
        ],
        &path,
        "is empty: --until must be after --since",
    );
    refused(
        &[
            "--since",
            "2001-01-01",
            "--until",
            "2001-01-02",
            "--out",
            &out_s,
        ],
        &path,
        "nothing to report for 2001-01-01T00:00:00.000000000Z .. 2001-01-02T00:00:00.000000000Z",
    );
    let pdf = env.dir.path().join("r.pdf").display().to_string();
    refused(
        &["--since", "1h", "--out", &out_s, "--pdf", &pdf],
        "/nonexistent",
        "install the Debian package `chromium`",
    );
    assert!(!out.exists(), "nothing written on an error");
    std::fs::write(&out, "precious").unwrap();
    refused(
        &["--since", "1h", "--out", &out_s],
        &path,
        &format!("--out {out_s} exists; not overwritten (--force replaces it)"),
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
    let o = report(&env, &["--since", "1h", "--out", &out_s, "--force"], &path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
}
