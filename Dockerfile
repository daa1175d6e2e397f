# Multi-stage build: compile in the Rust image, run in a small Debian image as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin quo-sync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/quo-sync --create-home quo-sync
COPY --from=build /src/target/release/quo-sync /usr/local/bin/quo-sync
COPY config /etc/quo-sync/
# Config (read-only) and ledger (the product's memory: keep it on a volume).
VOLUME ["/etc/quo-sync", "/var/lib/quo-sync"]
ENV QUO_SYNC_CONFIG=/etc/quo-sync/quo-sync.toml \
    QUO_SYNC__LEDGER__PATH=/var/lib/quo-sync/quo-sync.db
USER quo-sync
WORKDIR /var/lib/quo-sync
ENTRYPOINT ["quo-sync"]
CMD ["run"]
