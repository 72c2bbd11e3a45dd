# The orchestrator's image: one statically linked binary on `scratch` (no
# shell, no libc, a few MB). Two ways to get the binary into the same runtime
# stage:
#
#   docker build .                   compiles it from source in `rust:` (the
#                                    default: the last stage, `runtime`)
#   docker build --target runtime-prebuilt .
#                                    packs the binary CI built on the host, for
#                                    machines that cannot pull base images:
#     RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/static \
#       cargo build --release --locked --target x86_64-unknown-linux-gnu --bin orchestrator
#     tests/compose/nft-root.sh target/static/nft-root
#
# Both carry `nft` and the libraries it loads (under /usr/sbin, /lib,
# /lib64): the service installs its egress rules with it (RUNNER_EGRESS).
#
# The stage order matters for the legacy builder (DOCKER_BUILDKIT=0), which
# builds every stage up to its target, used or not: `runtime-prebuilt` comes
# before the `rust:` stage so that building it never pulls `rust:`, and its
# COPY tolerates a missing host binary so that the from-source build, which
# passes through it, does not need one. BuildKit skips unused stages anyway.

ARG RUST_VERSION=1.94

# What both runtime images share.
FROM scratch AS runtime-base
# Runs as root: it needs the Docker socket, which is root-equivalent anyway.
ENV PORT=3001 \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LISTEN_ADDRESS=0.0.0.0 \
    DATABASE_URL=/data/orchestrator.db
# The SQLite database (and its WAL) lives here: mount a named volume on it.
WORKDIR /data
VOLUME /data
EXPOSE 3001
# PID 1 gets SIGTERM from `docker stop`; the binary handles it (drains
# requests, exits 0, leaves the runners running for the next start).
STOPSIGNAL SIGTERM
# No shell in the image: the binary checks itself (`GET /healthz` on $PORT).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/orchestrator", "healthcheck"]
ENTRYPOINT ["/orchestrator"]
CMD ["serve"]

# CI: the static binary built on the host. `orchestrato[r]` is a pattern, so a
# missing binary matches nothing instead of failing; Cargo.toml (always in the
# context) keeps the source list non-empty. The smoke test checks the binary.
FROM runtime-base AS runtime-prebuilt
COPY Cargo.toml target/static/x86_64-unknown-linux-gnu/release/orchestrato[r] /
COPY Cargo.toml target/static/nft-roo[t] /

# From source: the same static glibc binary, built in the official image.
FROM rust:${RUST_VERSION}-slim AS builder
WORKDIR /build
ENV CARGO_TARGET_DIR=/build/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static"
# Dependencies first, in their own layer, so that a change to the sources
# does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src migrations \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-gnu --bin orchestrator \
    && rm -rf src
COPY migrations migrations
COPY src src
COPY tests/compose/nft-root.sh ./
RUN apt-get update \
    && apt-get install --yes --no-install-recommends nftables \
    && ./nft-root.sh /nft-root
# COPY keeps the sources' old mtimes: touch them so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-gnu --bin orchestrator \
    && cp target/x86_64-unknown-linux-gnu/release/orchestrator /orchestrator \
    && /orchestrator --version

FROM runtime-base AS runtime
COPY --from=builder /orchestrator /orchestrator
COPY --from=builder /nft-root/ /
