# syntax=docker/dockerfile:1
# tokentap: a small runtime image with the release binary and nothing else.
#
#   docker build -t tokentap .
#   docker run --rm -p 8080:8080 tokentap --demo
#
# The builder runs the same command as a local release build,
#   cargo build --release --locked --bin tokentap
# (tests/deploy.rs checks that this file keeps doing so).

# ---- builder ---------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when the manifest,
# the lock file or the bench target change. The bench file is copied because
# Cargo.toml declares it ([[bench]] parsers) and cargo refuses a manifest whose
# declared target file is missing; src/ is a stub here.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src \
    && printf 'fn main() {}\n' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin tokentap \
    && rm -rf src

# The crate itself. Touching the sources makes them newer than the stub's
# build records, so cargo rebuilds the crate (never reuses the stub binary).
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin tokentap

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates only, unpinned on purpose: the slim base follows Debian's
# security updates, and a pinned version would stop building once superseded.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tokentap \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tokentap

COPY --from=builder /build/target/release/tokentap /usr/local/bin/tokentap

USER 10001:10001
WORKDIR /home/tokentap

# Listen on every interface inside the container (the binary's default is
# 127.0.0.1:8080, right for a sidecar sharing a network namespace).
# (hadolint takes the TOKEN in TOKENTAP_ for a secret: it is an address.)
# hadolint ignore=DL3064
ENV TOKENTAP_LISTEN=0.0.0.0:8080
EXPOSE 8080

# GET /health on the listen address (127.0.0.1 when it is 0.0.0.0): exit 0 on 200.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["tokentap", "--healthcheck"]

ENTRYPOINT ["tokentap"]
