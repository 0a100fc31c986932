# Static sidekey on a minimal, non-root image with CA certificates.
#   docker build -t sidekey .
#   docker run --rm -e AWS_TOKEN=… -p 127.0.0.1:2773:2773 sidekey run --listen 0.0.0.0:2773
# (inside a container, listening beyond loopback needs listen.allow_non_loopback = true)

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
ENTRYPOINT ["/usr/local/bin/sidekey"]
CMD ["run"]
