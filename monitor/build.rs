//! Builds the kernel programs (monitor-ebpf) for bpfel-unknown-none and
//! leaves the object in OUT_DIR, where `kernel::load` embeds it.
//!
//! The eBPF crate needs `-Z build-std=core`, which needs a compiler with its
//! library sources: Debian's rustc (`/usr/bin/rustc`, packages rustc-web and
//! rust-web-src) and bpf-linker. `cargo xtask setup` installs both.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    compile_protos();
    build_ebpf();
}

/// The gRPC API, with a descriptor set for the reflection service.
fn compile_protos() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // JSON output of the CLI (`status -o json`, `policy list -o json`).
        .type_attribute(".egress_monitor.v1", "#[derive(serde::Serialize)]")
        // Messages in NATS (`--nats-format json`) are read back by `fleet`.
        .type_attribute(
            ".egress_monitor.v1.Event",
            "#[derive(serde::Deserialize)] #[serde(default)]",
        )
        .type_attribute(
            ".egress_monitor.v1.Flow",
            "#[derive(serde::Deserialize)] #[serde(default)]",
        )
        .type_attribute(
            ".egress_monitor.v1.Drift",
            "#[derive(serde::Deserialize)] #[serde(default)]",
        )
        // Only drift alerts carry one.
        .field_attribute(
            ".egress_monitor.v1.Event.drift",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        // A node's own answers carry no node: their JSON stays as it was.
        .field_attribute(
            ".egress_monitor.v1.Flow.node",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .field_attribute(
            ".egress_monitor.v1.Event.node",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .field_attribute(
            ".egress_monitor.v1.Event.chain_prev",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .file_descriptor_set_path(out_dir.join("egress_monitor_descriptor.bin"))
        .compile_protos(&["proto/egress_monitor/v1/egress_monitor.proto"], &["proto"])
        .expect("compiling proto/egress_monitor/v1/egress_monitor.proto (protoc from Debian's protobuf-compiler; run `cargo xtask setup`)");
    // What containerd and CRI-O say of their containers: a client only.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri/runtime.proto"], &["proto"])
        .expect("compiling proto/cri/runtime.proto");
}

fn build_ebpf() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let ebpf_dir = root.join("monitor-ebpf");
    let common_dir = root.join("monitor-common");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));

    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=EGRESS_MONITOR_BPF_RUSTC");

    let rustc = env::var("EGRESS_MONITOR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    if !Path::new(&rustc).exists() {
        panic!(
            "building the eBPF programs needs Debian's rustc at {rustc} (with rust-web-src) and \
             bpf-linker; run `cargo xtask setup` once"
        );
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Keep the nested build apart from the outer one (its own target dir, so
    // no lock is shared) and clean of the outer build's compiler settings.
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOC"
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        );
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo for monitor-ebpf: {e}"));
    if !status.success() {
        panic!("building monitor-ebpf failed ({status}); is bpf-linker installed? run `cargo xtask setup`");
    }
    let object = target_dir.join("bpfel-unknown-none/release/monitor-ebpf");
    std::fs::copy(&object, out_dir.join("monitor.bpf.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
    for (built, named) in [("geo-bench", "geo_bench.bpf.o"), ("floor", "floor.bpf.o")] {
        let bench = target_dir.join("bpfel-unknown-none/release").join(built);
        std::fs::copy(&bench, out_dir.join(named))
            .unwrap_or_else(|e| panic!("copying {}: {e}", bench.display()));
    }
}
