# wattserve: the two set-up commands are `make serve` and `make test`.
CARGO ?= cargo
ARGS ?=

.PHONY: serve test models build release fmt clean

## Fetch the default models if missing, build release, serve on :8080 (pass more flags with ARGS=...).
serve: models
	$(CARGO) build --release --locked
	./target/release/wattserve serve --port 8080 $(ARGS)

## Fetch models, then format check, clippy and all tests (what CI runs).
test: models
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) test --locked --workspace

## Fetch the default models' weights (idempotent; verifies sha256).
models:
	./models/fetch.sh

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
