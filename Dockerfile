# One image for every service binary (user-service, product-service, order-service,
# payment-service), `shop`, and the load tests' bare `ceiling`; the container's command
# names the one to run:
#   docker build -t shop .
#   docker run shop order-service
#
# Dependencies are built in their own layer (cargo-chef), so a code change rebuilds only
# the workspace's crates. Queries are checked against the committed .sqlx/ data
# (SQLX_OFFLINE), so the build needs no database.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1 \
 && apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV SQLX_OFFLINE=true
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
      --bin shop --bin user-service --bin product-service --bin order-service --bin payment-service \
      --bin ceiling \
 && mkdir /out \
 && cp target/release/shop target/release/*-service target/release/ceiling /out/

FROM debian:bookworm-slim AS runtime
# curl for the health check; ca-certificates for TLS to managed PostgreSQL/Redis/Kafka.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin shop
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV APP_ENV=production PORT=8080
EXPOSE 8080
# Liveness on the port the service listens on (PORT), as Kubernetes probes it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
CMD ["shop"]
