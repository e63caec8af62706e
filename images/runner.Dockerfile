# syntax=docker/dockerfile:1.7
# The runner image (virtrigaud/runner; `make images` builds the same without Docker): the runner binary, qemu-img and libvirt's client library.
# Build from the repository root:
#   docker build -f images/runner.Dockerfile -t virtrigaud/runner:dev .
# Build and run stages use the same Debian release, so the libvirt the binary links against is the
# one it finds at run time.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# libvirt from bookworm-backports, as in the run stage and in `make images`.
RUN echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/backports.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends -t bookworm-backports libvirt-dev \
 && apt-get install -y --no-install-recommends pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p runner \
 && install -D target/release/runner /out/runner

FROM debian:bookworm-slim
# qemu-utils: qemu-img (convert, info, map, check). libvirt0: the client library the runner links.
# openssh-client: Proxmox disk export (pvesm export over SSH) and qemu+ssh:// libvirt URIs.
# qemu-utils and libvirt0 from bookworm-backports: the qemu 10 and libvirt the tests run against.
RUN echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/backports.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends -t bookworm-backports qemu-utils libvirt0 \
 && apt-get install -y --no-install-recommends openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /scratch runner
COPY --from=build /out/runner /usr/local/bin/runner
# The operator mounts the plan at /var/run/virtrigaud, scratch space at /scratch (also HOME and
# TMPDIR) and an NFS export at /mnt/staging; the root filesystem is read-only.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/runner"]
CMD ["migrate"]
