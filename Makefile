# VirtRigaud VM migration: build, test and demo entry points.
# `make test` and `make demo` install what they need on a fresh machine (Debian 12, root).

SHELL := /bin/bash
export VRG_CACHE ?= $(HOME)/.cache/virtrigaud
# One cargo target dir outside the tree, so fresh clones (CI) reuse earlier builds on this machine.
export CARGO_TARGET_DIR ?= $(VRG_CACHE)/target
CARGO ?= cargo

.PHONY: all build test deps unit lint fmt crds crds-check demo e2e-up e2e-down e2e-check bench matrix load toolchain images images-check

all: build

toolchain:
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

build:
	$(CARGO) build --workspace --all-targets

## Every test: formatting, lints, CRD drift, unit tests, and tests against the real e2e world.
test: toolchain deps lint build e2e-up e2e-check unit images-check

## Debian packages, s3s-fs, vcsim (idempotent; fast when present).
deps:
	bash e2e/scripts/install-deps.sh

unit:
	$(CARGO) test --workspace --no-fail-fast

lint: toolchain
	bash images/context-check.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate the CRD YAML under kustomize/base/crds from the Rust types.
crds:
	$(CARGO) run -q -p crd --bin crdgen

crds-check:
	$(CARGO) run -q -p crd --bin crdgen -- --check

## A real migration in the local world (libvirt -> libvirt through S3, run by operator, webhook and runner pods).
demo: toolchain deps build e2e-up
	bash e2e/demo.sh

## The local world: control plane, libvirtd, vcsim, S3, nginx, sshd, Proxmox simulator, and a real node
## (containerd, kubelet, kube-proxy in a network namespace) running the images.
e2e-up: build images
	bash e2e/scripts/world-up.sh

e2e-down:
	bash e2e/scripts/world-down.sh

e2e-check:
	bash e2e/scripts/endpoints-check.sh

## The nine source x target pairs through the cluster, one staging backend each (rotated); prints the table.
matrix: build e2e-up
	$(CARGO) test -p runner --test matrix -- --nocapture

## The operator, webhook and runner images as OCI archives (debootstrap + umoci; no container daemon).
images:
	bash images/build.sh

## Runs each image's entrypoint under containerd (and qemu-img in the runner image).
images-check: images
	bash images/check.sh

## Benchmarks: the runner's engine vs standalone tools, ratios printed per figure.
bench:
	bash bench/run.sh

## The control plane under 500 migrations applied at once (stub runner image), and the webhook at
## 500 requests/s: prints the table.
load: build e2e-up
	bash bench/load.sh
