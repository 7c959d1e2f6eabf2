# dmvpn — build and test entry points. `make test` is what CI runs.

GO       ?= go
FUZZTIME ?= 20s
BIN      ?= bin

.PHONY: all build test deps vet unit fuzz bench bench-nhrp clean

all: build

# The version dmvpnd and dmvpnctl report (show version).
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/opendmvpn/dmvpn/internal/version.Version=$(VERSION)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

# The README's main command: a whole DMVPN in network namespaces (root).
# Installs what the lab needs, builds, and runs `dmvpn-lab up`; TOPOLOGY
# picks another topology (dmvpn-lab topologies). `make lab-down` removes it.
.PHONY: lab lab-down
lab:
	@./scripts/install-deps.sh --lab
	@$(MAKE) --no-print-directory build
	./$(BIN)/dmvpn-lab up $(TOPOLOGY)

lab-down:
	./$(BIN)/dmvpn-lab down

# The one test command: installs what the tests need, vets, runs every test
# (integration tests need root; they skip with a reason otherwise), then the
# bounded fuzz runs.
test: deps vet unit fuzz

deps:
	@./scripts/install-deps.sh

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 45m ./...

# Each fuzz target runs for FUZZTIME, seeded by its committed corpus.
fuzz:
	$(GO) test ./nhrp/wire -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./nhrp/wire -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/nhrpcap -run '^$$' -fuzz '^FuzzScan$$' -fuzztime $(FUZZTIME)
	$(GO) test ./gre -run '^$$' -fuzz '^FuzzParseHeader$$' -fuzztime $(FUZZTIME)
	$(GO) test ./gre/userspace -run '^$$' -fuzz '^FuzzReceive$$' -fuzztime $(FUZZTIME)

# Codec benchmarks.
bench:
	$(GO) test ./nhrp/wire -run '^$$' -bench . -benchmem -count 5

clean:
	rm -rf $(BIN)

# Drops the VM images (extracted kernel, initramfs) that integration/vm
# caches; the next VM test rebuilds them (~1.5 s).
.PHONY: vm-clean
vm-clean:
	rm -rf build/vm

# Data-plane benchmark (root): iperf3 and ping between two LAN hosts through
# the userspace GRE tunnel and through the plain routed path, in namespaces,
# one run; prints medians and the ratio. BENCHFLAGS, e.g. "-rounds 5 -t 10",
# "-wire" (underlay GRO like a NIC), "-profile DIR" (pprof + perf).
.PHONY: bench-dataplane
bench-dataplane:
	$(GO) run ./integration/cmd/benchdataplane $(BENCHFLAGS)

# The NHRP hub under load: N simulated spokes from N NBMA addresses in one
# namespace against one hub process in another (root).
bench-nhrp: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(BIN)/benchnhrp -n $(or $(N),10000) -rounds $(or $(ROUNDS),3)

# NHRP over IPsec (root, strongSwan): one spoke's initiate → registration,
# 50 spokes (real IKE peers from one namespace) at once, the hub's charon
# memory; then, with real spokes, the recovery after the hub's charon is
# killed (asserted ≤ 5 s) and one TCP stream with and without IPsec.
.PHONY: bench-ipsec
bench-ipsec: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(BIN)/benchnhrp -ipsec -n $(or $(N),50) -rounds $(or $(ROUNDS),3)
	$(GO) test -run '^$$' -bench 'IPsecHubRecovery' -benchtime 5x ./integration/
	$(GO) test -run '^$$' -bench 'IPsecThroughput' -benchtime 1x ./integration/
