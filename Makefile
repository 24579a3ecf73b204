# GPU telemetry pipeline. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo
BINARIES := streamer collector gateway

.PHONY: help deps build build-streamer build-collector build-gateway test test-unit lint fmt bench bench-storage bench-insight bench-security bench-folding bench-cluster demo demo-secure clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install protoc (and etcd if no vendored one) with apt-get when missing
	@bash .ci/deps.sh

build: deps ## Build release binaries into bin/
	$(CARGO) build --release $(addprefix -p ,$(BINARIES))
	@for b in $(BINARIES); do $(call install_bin,$$b); done
	@echo "built: $(addprefix bin/,$(BINARIES))"

# Copies a release binary into bin/ under a temporary name, then renames it over the old one:
# a running binary keeps its (unlinked) file, so `make build` works while the demo runs.
install_bin = mkdir -p bin && install -m 755 target/release/$(1) bin/.$(1).tmp && mv -f bin/.$(1).tmp bin/$(1)

build-streamer: deps ## Build bin/streamer only
	$(CARGO) build --release -p streamer
	@$(call install_bin,streamer) && echo "built: bin/streamer"

build-collector: deps ## Build bin/collector only
	$(CARGO) build --release -p collector
	@$(call install_bin,collector) && echo "built: bin/collector"

build-gateway: deps ## Build bin/gateway only
	$(CARGO) build --release -p gateway
	@$(call install_bin,gateway) && echo "built: bin/gateway"

test: ## Run every test: unit, integration and end-to-end, on real etcd
	@TESTS=1 bash .ci/deps.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

test-unit: deps ## Run the unit tests only (no etcd needed)
	$(CARGO) test --workspace --lib --bins

screenshots: ## Re-take the dashboard screenshots in docs/img/ with the browser tests
	@TESTS=1 bash .ci/deps.sh
	$(CARGO) build --workspace --bins
	UPDATE_SCREENSHOTS=1 $(CARGO) test -p pipeline-tests --test it -- dashboard::

lint: deps ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: ## Benchmark on a fresh single-node etcd; prints a table, writes bench-results/
	@BENCH=1 bash .ci/deps.sh
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -q -p pipeline-tests --bin bench -- $(BENCH_ARGS)

bench-storage: ## Storage lifecycle: a 20M-sample soak on a 256 MiB etcd quota, maintainer on vs off (~70 min)
	$(MAKE) bench BENCH_ARGS="--storage $(BENCH_ARGS)"

bench-insight: ## Fleet insight: ingest with rules on vs off; one-day aggregate and fleet/latest p99 on 2,504 folded GPUs (~10 min)
	$(MAKE) bench BENCH_ARGS="--insight $(BENCH_ARGS)"

bench-security: ## Security: ingest and query throughput with TLS and auth against without, same run (~5 min)
	$(MAKE) bench BENCH_ARGS="--security $(BENCH_ARGS)"

bench-dashboard: ## Dashboard: first load in headless Chromium, and the gateway's cost of 100 open dashboards on live data (~2 min)
	@TESTS=1 bash .ci/deps.sh
	$(MAKE) bench BENCH_ARGS="--dashboard $(BENCH_ARGS)"

bench-folding: ## Folding: ingest on vs off, a 20M-sample soak on a 256 MiB quota, bytes per sample against promtool's blocks (~30 min)
	@command -v promtool >/dev/null || DEBIAN_FRONTEND=noninteractive $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y --no-install-recommends prometheus
	$(MAKE) bench BENCH_ARGS="--folding $(BENCH_ARGS)"

bench-cluster: ## The same benchmark on a 3-node local etcd cluster
	$(MAKE) bench BENCH_ARGS="--cluster $(BENCH_ARGS)"

demo: build ## Run etcd, a collector, the gateway and a looping streamer on generated data
	@bash tests/demo.sh

demo-secure: build ## The demo over mutual TLS with etcd auth, per-role users, HTTPS and API tokens (docs/security.md)
	@bash tests/demo-secure.sh

clean: ## Remove build output, demo data and benchmark results
	$(CARGO) clean
	rm -rf bin .demo .demo-secure bench-results
