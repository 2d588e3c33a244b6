# syntax=docker/dockerfile:1
# tenantgate container image (used by docker-compose.yml; see README "Containers").
#
#   docker build -t tenantgate .
#   docker run --rm -v "$PWD/examples/docker/tenantgate.toml:/etc/tenantgate/tenantgate.toml:ro" \
#       -p 6432:6432 tenantgate
#
# Checked without a Docker engine by tests/tests/it/compose/: keep the two in step.

# ---- builder: Debian 12 + Rust; pg_query needs libclang (bindgen) and a C compiler ----
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cargo registry and target/ are BuildKit cache mounts, so a rebuild after a source change
# recompiles only tenantgate's crates. The binary is copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tenantgate \
 && install -m 0755 target/release/tenantgate /usr/local/bin/tenantgate

# ---- runtime: the same Debian release as the builder (glibc) ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tenantgate \
 && useradd --system --uid 10001 --gid tenantgate --home-dir /var/lib/tenantgate --no-create-home \
        --shell /usr/sbin/nologin tenantgate \
 && mkdir -p /etc/tenantgate /var/lib/tenantgate \
 && chown tenantgate:tenantgate /var/lib/tenantgate
COPY --from=builder /usr/local/bin/tenantgate /usr/local/bin/tenantgate
# The configuration is mounted at /etc/tenantgate/tenantgate.toml; the audit log (audit.path in
# examples/docker/tenantgate.toml) goes to /var/lib/tenantgate, a volume in docker-compose.yml.
USER tenantgate
WORKDIR /var/lib/tenantgate
VOLUME ["/var/lib/tenantgate"]
# 6432: PostgreSQL clients (proxy.listen); 9187: Prometheus metrics (proxy.metrics_listen).
EXPOSE 6432 9187
ENTRYPOINT ["tenantgate"]
CMD ["serve", "-c", "/etc/tenantgate/tenantgate.toml"]
