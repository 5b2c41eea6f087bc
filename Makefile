# wattserve: the two set-up commands are `make serve` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: serve test models openai-client v2-clients build release fmt clean check-cuda soak

## Fetch the default models if missing, build release, serve on :8080 (pass more flags with ARGS=...).
serve: models
	$(CARGO) build --release --locked
	./target/release/wattserve serve --port 8080 $(ARGS)

## Fetch models and the Python test clients, then format check, clippy and all tests (what CI runs).
test: models openai-client v2-clients
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) test --locked --workspace

## Fetch the default models' weights (idempotent; verifies sha256).
models:
	./models/fetch.sh

## Type-check and lint the CUDA build (`--features cuda`): unpacks NVIDIA's CUDA 13.0 compiler from
## its Python wheels into target/cuda-toolkit, then nvcc compiles candle's and our kernels (about
## 45 min on 2 cores, in target/cuda). Needs no GPU; NOT part of `make test` or CI.
CUDA_COMPUTE_CAP ?= 90
check-cuda:
	@home="$$(./kernels/cuda/fetch-toolkit.sh $(CURDIR)/target/cuda-toolkit)" && \
	  echo "check-cuda: CUDA_HOME=$$home CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP)" && \
	  CUDA_HOME="$$home" CUDA_ROOT="$$home" PATH="$$home/bin:$$PATH" \
	  CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO_TARGET_DIR=$(CURDIR)/target/cuda \
	  $(CARGO) clippy --locked --workspace --all-targets --features cuda -- -D warnings

## Soak (not in CI): 10 minutes at 10x the sustained rate, mixed embeddings and streams with
## disconnects, against the release binary; report in target/soak/soak.json (SOAK_ARGS to change).
SOAK_ARGS ?= --duration 600 --overload 10
soak: models release
	python3 tests/soak/soak.py --binary target/release/wattserve --out target/soak $(SOAK_ARGS)

## The official openai Python client in target/openai-venv, for tests/openai_client.rs (idempotent).
openai-client:
	./tests/clients/setup.sh tests/openai/requirements.txt target/openai-venv

## The official Open Inference Protocol v2 clients (tritonclient[http,grpc], kserve) in
## target/v2-venv, for the tests/v2/*_check.py scripts (idempotent; about 500 MB, a minute to install).
v2-clients:
	./tests/clients/setup.sh tests/v2/requirements.txt target/v2-venv

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
