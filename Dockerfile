# syntax=docker/dockerfile:1
# quo-sync: compile in the Rust image with cached dependencies, run in a distroless image (no
# shell, no package manager: glibc, CA certificates and the binary) as a non-root user.
#
#   docker build --build-arg QUO_SYNC_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t quo-sync .
#   docker run --rm quo-sync once --with-sandbox            # the sample, against the built-in sandbox
#   docker run -e QUO_API_KEY=… -v quo-sync-data:/var/lib/quo-sync -p 9464:9464 quo-sync
#
# tests/deploy.rs runs this file's ENV, USER, WORKDIR, ENTRYPOINT/CMD and HEALTHCHECK against
# the sandbox (there is no Docker daemon in CI): keep each directive on one line.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# `--version` and quo_sync_build_info name the commit; .git is not in the build context.
ARG QUO_SYNC_GIT_COMMIT=unknown
ENV QUO_SYNC_GIT_COMMIT=${QUO_SYNC_GIT_COMMIT}
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
COPY src ./src
COPY benches ./benches
# Cache mounts keep the registry and the compiled dependencies between builds, so a change to
# src/ recompiles quo-sync alone instead of ~290 crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin quo-sync \
 && cp target/release/quo-sync /usr/local/bin/quo-sync
# The data volume's first contents: the sample CSV (a new named volume is filled from here).
RUN mkdir -p /volume && cp /dev/null /volume/.keep
COPY config/contacts.example.csv /volume/contacts.csv

FROM gcr.io/distroless/cc-debian12:nonroot
ARG QUO_SYNC_GIT_COMMIT=unknown
ARG QUO_SYNC_VERSION=0.1.0
LABEL org.opencontainers.image.title="quo-sync" \
      org.opencontainers.image.description="Keeps a CRM's contacts and a Quo (formerly OpenPhone) workspace's contacts in agreement, both ways." \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${QUO_SYNC_VERSION}" \
      org.opencontainers.image.revision="${QUO_SYNC_GIT_COMMIT}" \
      org.opencontainers.image.documentation="docs/deploy.md"
COPY --from=build /usr/local/bin/quo-sync /usr/local/bin/quo-sync
COPY config/container.toml /etc/quo-sync/quo-sync.toml
COPY --from=build --chown=65532:65532 /volume /var/lib/quo-sync
# The ledger and the CSV: the product's memory, keep it on a volume.
VOLUME ["/var/lib/quo-sync"]
ENV QUO_SYNC_CONFIG=/etc/quo-sync/quo-sync.toml
USER 65532:65532
WORKDIR /var/lib/quo-sync
# /healthz, /readyz, /metrics (and webhooks when reverse.listen shares the port).
EXPOSE 9464
# No curl in the image: the binary asks its own /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["quo-sync", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["quo-sync"]
CMD ["run"]
