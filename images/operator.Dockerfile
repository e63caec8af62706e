# syntax=docker/dockerfile:1.7
# The operator image (virtrigaud/operator:dev). Build from the repository root:
#   docker build -f images/operator.Dockerfile -t virtrigaud/operator:dev .
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p operator \
 && install -D target/release/operator /out/operator

# glibc and CA certificates only; runs as the distroless "nonroot" user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/operator /usr/local/bin/operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]
