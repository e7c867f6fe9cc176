# syntax=docker/dockerfile:1
# pum-collector: docker build -t pum-collector .
#   docker run -p 3000:3000 -p 9102:9102 -v pum-data:/var/lib/pum pum-collector
# Ingest, demo page and client on :3000, /metrics on :9102.

# --- build ---------------------------------------------------------------
# Keep the Rust version equal to rust-toolchain.toml's channel (a test checks).
FROM rust:1.95.0-slim-bookworm AS build
# Use the image's toolchain as is, instead of letting rustup fetch the extra
# targets and components that rust-toolchain.toml lists for development.
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# The caches keep the registry and incremental builds between image builds;
# the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pum-collector \
    && install -D -m 0755 target/release/pum-collector /out/pum-collector

# --- run -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 pum \
    && useradd --system --uid 10001 --gid pum --home-dir /var/lib/pum --no-create-home pum \
    && install -d -o pum -g pum -m 0750 /var/lib/pum
COPY --from=build /out/pum-collector /usr/local/bin/pum-collector
USER 10001:10001
# Listen on every interface inside the container (the binary's defaults are
# 127.0.0.1); the flags of `pum-collector standalone` override these.
ENV PUM_INGEST_LISTEN=0.0.0.0:3000 \
    PUM_METRICS_LISTEN=0.0.0.0:9102 \
    PUM_DATA_DIR=/var/lib/pum
VOLUME ["/var/lib/pum"]
EXPOSE 3000 9102
ENTRYPOINT ["/usr/local/bin/pum-collector"]
CMD ["standalone"]
