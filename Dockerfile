# Static sidekey on a minimal, non-root image (distroless static: CA certificates, no shell).
#   docker build -t sidekey .
# As a sidecar sharing the app's network namespace (ECS awsvpc, Kubernetes pods) the default
# loopback bind is right. Published to the host instead:
#   docker run --rm -e AWS_TOKEN=… -e SIDEKEY_LISTEN__ALLOW_NON_LOOPBACK=true \
#     -p 127.0.0.1:2773:2773 sidekey run --listen 0.0.0.0:2773

FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/sidekey /usr/local/bin/sidekey
USER nonroot:nonroot
EXPOSE 2773
# Ready = prefetch finished; uses the same config, env and token as the server (no curl needed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/sidekey", "health"]
ENTRYPOINT ["/usr/local/bin/sidekey"]
CMD ["run"]
