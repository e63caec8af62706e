# syntax=docker/dockerfile:1.7
# The admission webhook image (virtrigaud/webhook:dev). Build from the repository root:
#   docker build -f images/webhook.Dockerfile -t virtrigaud/webhook:dev .
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p webhook \
 && install -D target/release/webhook /out/webhook

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/webhook /usr/local/bin/webhook
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/webhook"]
