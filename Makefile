# dmvpn — build and test entry points. `make test` is what CI runs.

GO       ?= go
BIN      ?= bin

.PHONY: all build test deps vet unit fuzz bench bench-nhrp bench-nhrp-frr bench-nhrp-kscale bench-failover clean

all: build

# The version dmvpnd and dmvpnctl report (show version).
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/opendmvpn/dmvpn/internal/version.Version=$(VERSION)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

# The README's main command: a whole DMVPN in network namespaces (root).
# Installs what the lab needs, builds, and runs `dmvpn-lab up`; TOPOLOGY
# picks another topology (dmvpn-lab topologies). `make lab-down` removes it.
.PHONY: lab lab-down prereq
lab: prereq
	@./scripts/install-deps.sh --lab
	@$(MAKE) --no-print-directory build
	./$(BIN)/dmvpn-lab up $(TOPOLOGY)

lab-down:
	./$(BIN)/dmvpn-lab down

# What the lab needs before anything else, said plainly: Go 1.26 or later
# (go.mod asks for it; an older go would try to download a toolchain) and
# root (namespaces, packages).
prereq:
	@v=$$($(GO) env GOVERSION 2>/dev/null) || { echo "make lab: Go 1.26 or later is needed ($(GO) is not in PATH): install it, then run make lab again" >&2; exit 1; }; \
	case "$$v" in go1.2[6-9]*|go1.[3-9][0-9]*|go[2-9]*) ;; \
	*) echo "make lab: Go 1.26 or later is needed, $(GO) is $$v" >&2; exit 1 ;; esac
	@[ "$$(id -u)" = 0 ] || { echo "make lab: run it as root (it installs packages and builds network namespaces)" >&2; exit 1; }

# The one test command: installs what the tests need, checks the committed
# BPF object against its source, vets, runs every test (integration tests
# need root; they skip with a reason otherwise), then the bounded fuzz runs.
test: deps bpf-check vet unit fuzz

deps:
	@./scripts/install-deps.sh

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 45m ./...

# Each fuzz target runs a fixed number of executions, seeded by its
# committed corpus: about 15-20 s each on a quiet 2-core machine, longer on
# a loaded one. Not a duration: with -fuzztime 20s Go 1.26's coordinator
# can report its own deadline as a failure ("context deadline exceeded",
# no input written) when a worker is still busy as the time runs out
# (go.dev/issue/75804, fixed in Go 1.27); a CI run of FuzzEngine did.
# FUZZTIME=30s (or 1000x) gives every target the same budget instead.
fuzz:
	$(GO) test ./nhrp/wire -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(or $(FUZZTIME),400000x)
	$(GO) test ./nhrp/wire -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(or $(FUZZTIME),300000x)
	$(GO) test ./nhrp -run '^$$' -fuzz '^FuzzEngine$$' -fuzztime $(or $(FUZZTIME),10000x)
	$(GO) test ./ctl/nhrpcap -run '^$$' -fuzz '^FuzzScan$$' -fuzztime $(or $(FUZZTIME),200000x)
	$(GO) test ./gre -run '^$$' -fuzz '^FuzzParseHeader$$' -fuzztime $(or $(FUZZTIME),500000x)
	$(GO) test ./gre/userspace -run '^$$' -fuzz '^FuzzReceive$$' -fuzztime $(or $(FUZZTIME),200000x)
	$(GO) test ./daemon/config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(or $(FUZZTIME),40000x)
	$(GO) test ./ipsec -run '^$$' -fuzz '^FuzzParseIdentity$$' -fuzztime $(or $(FUZZTIME),250000x)
	$(GO) test ./ipsec -run '^$$' -fuzz '^FuzzCheckCredentials$$' -fuzztime $(or $(FUZZTIME),60000x)
	$(GO) test ./failover -run '^$$' -fuzz '^FuzzParseEchoReply$$' -fuzztime $(or $(FUZZTIME),250000x)

# The BPF programs of the ebpf data plane (gre/ebpf/dataplane.c): `make bpf`
# regenerates the object and its Go bindings with bpf2go (clang-14,
# llvm-strip-14, libbpf-dev); building needs neither, they are committed.
# `make bpf-check` regenerates them aside and fails if the committed ones
# differ; without clang it skips, saying so.
BPF_DIR   := gre/ebpf
BPF_FILES := dataplane_bpfel.go dataplane_bpfel.o dataplane_bpfeb.go dataplane_bpfeb.o
.PHONY: bpf bpf-check
bpf:
	cd $(BPF_DIR) && $(GO) generate ./

bpf-check:
	@if ! command -v clang-14 >/dev/null || ! command -v llvm-strip-14 >/dev/null || [ ! -e /usr/include/bpf/bpf_helpers.h ]; then \
		echo "bpf-check: skipped: clang-14, llvm-strip-14 or libbpf-dev missing (scripts/install-deps.sh installs them)"; exit 0; fi; \
	tmp=build/bpf-check; rm -rf $$tmp; mkdir -p $$tmp; \
	cp $(BPF_DIR)/dataplane.c $(BPF_DIR)/gen.go $$tmp/ && (cd $$tmp && $(GO) generate ./) || { rm -rf $$tmp; exit 1; }; \
	for f in $(BPF_FILES); do \
		cmp -s $$tmp/$$f $(BPF_DIR)/$$f || { echo "bpf-check: $(BPF_DIR)/$$f differs from what dataplane.c compiles to: run make bpf and commit it"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "bpf-check: the committed BPF object and bindings match dataplane.c"

# The Debian package: $(BIN)/dmvpn_<version>_amd64.deb (packaging/, with
# dpkg-deb): dmvpnd, dmvpnctl, the systemd unit, an example
# /etc/dmvpn/dmvpnd.yaml, bash and zsh completions and manual pages
# generated from the commands' definitions; Depends from the packages
# tagged node in scripts/packages.list. The packaging tests (make test)
# check it with lintian and install it.
.PHONY: deb
deb:
	$(GO) run ./packaging/mkdeb -out $(BIN)

# Codec benchmarks.
bench:
	$(GO) test ./nhrp/wire -run '^$$' -bench . -benchmem -count 5

# The firewall's timing goals (root: a network namespace): a 200-rule
# table replaced in one batch within 50 ms, an unconfirmed apply rolled
# back within its timeout + 100 ms; each benchmark fails when its median
# misses the goal. TestKernelRollback (make test) checks the rollback's.
.PHONY: bench-firewall
bench-firewall:
	$(GO) test ./firewall -run '^$$' -bench '^Benchmark(Replace200|Rollback)$$' -count $(or $(ROUNDS),5)

clean:
	rm -rf $(BIN)

# Drops the VM images (extracted kernel, initramfs) that integration/vm
# caches; the next VM test rebuilds them (~1.5 s).
.PHONY: vm-clean
vm-clean:
	rm -rf build/vm

# Data-plane benchmark (root): iperf3 (one and two streams) and ping between
# two LAN hosts over the plain routed path, the kernel's VXLAN, the userspace
# and the ebpf GRE backends, in namespaces, one run; prints medians, CPU and
# the ratios to plain. BENCHFLAGS, e.g. "-rounds 5 -t 10", "-wire" (underlay
# GRO like a NIC), "-profile DIR" (pprof + perf).
.PHONY: bench-dataplane
bench-dataplane:
	$(GO) run ./integration/cmd/benchdataplane $(BENCHFLAGS)

# The NHRP hub under load: N simulated spokes from N NBMA addresses in one
# namespace against one hub process in another (root).
bench-nhrp: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(BIN)/benchnhrp -n $(or $(N),10000) -rounds $(or $(ROUNDS),3)

# The hub at scale (root): N spokes (default 100,000) register with dmvpnd
# (the command, userspace data plane, in a namespace), refresh at the
# default interval's rate (CPU of the steady state) and in fast cycles,
# one of them with dmvpnctl show dmvpn, show ip nhrp json and metrics
# scrapes running back to back. Prints the medians of ROUNDS rounds beside
# the goals (all registered ≤ 10 s, ≤ 3 KB RSS per spoke, steady state
# ≤ 5% of a core, scrape ≤ 100 ms, registration p99 during scrapes within
# 2× of without) and fails when one is missed. BENCHFLAGS, e.g.
# "-steady 30s -cycle 20s".
.PHONY: bench-nhrp-scale
bench-nhrp-scale: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(GO) build -o $(BIN)/dmvpnd ./cmd/dmvpnd
	$(GO) build -o $(BIN)/dmvpnctl ./cmd/dmvpnctl
	$(BIN)/benchnhrp -scale -n $(or $(N),100000) -rounds $(or $(ROUNDS),3) $(BENCHFLAGS)

# Side by side with FRR on the production path (root, QEMU, FRR): FRR's
# nhrpd and dmvpnd, each as the hub on ip_gre in one VM boot (Debian's
# kernel), one after the other, registered by the same spoke simulator on
# the host behind the VM's TAP; SIZES spokes (default 2000,10000), ROUNDS
# rounds, then the runs where the kernel refuses neighbours. Prints rate,
# p50/p99 latency, memory per spoke, kernel neighbours, and the ratios
# measured in the same run. BENCHFLAGS, e.g. "-profile-dir DIR" (perf of
# each hub: kernel and user stacks), "-window 512".
.PHONY: bench-nhrp-frr
bench-nhrp-frr: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(GO) build -o $(BIN)/dmvpnd ./cmd/dmvpnd
	$(BIN)/benchnhrp -frr -sizes $(or $(SIZES),2000,10000) -rounds $(or $(ROUNDS),3) $(BENCHFLAGS)

# The kernel data plane at scale (root, QEMU): N spokes (default 100,000)
# register with dmvpnd alone as the hub on ip_gre in the side-by-side
# benchmark's VM; prints the time until all are registered, RSS per spoke,
# and fails unless every registered spoke is in the kernel's neighbour
# table with its NBMA address and dmvpnd raised the table's limits
# (gc_thresh1-3) from limits.max_entries itself.
.PHONY: bench-nhrp-kscale
bench-nhrp-kscale: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(GO) build -o $(BIN)/dmvpnd ./cmd/dmvpnd
	$(BIN)/benchnhrp -frr -kscale $(or $(N),100000) $(BENCHFLAGS)

# Uplink failover (root, strongSwan): a spoke with two ISPs loses the
# preferred one (nftables drop with the link up, then link down) under LAN
# traffic, ROUNDS times each way; prints the medians from the cut to the
# default route moved, the first LAN packet through the other ISP, the
# registration through it and the shortcut working again, beside the goals
# and pingu's defaults.
.PHONY: bench-failover
bench-failover: deps
	$(GO) test ./integration -run '^$$' -bench '^BenchmarkFailover$$' -benchtime $(or $(ROUNDS),5)x -count 1

# NHRP over IPsec (root, strongSwan): one spoke's initiate → registration,
# N spokes (50 by default; real IKE peers, 100 per simulator charon, each
# charon in a namespace of its own) at once, the hub's charon and dmvpnd
# memory, idle CPU at the hubs' default DPD (BENCHFLAGS=-ipsec-dpd 1s for
# the spokes' default); then, with real spokes, the recovery after the hub's charon is
# killed (asserted ≤ 5 s) and one TCP stream with and without IPsec.
.PHONY: bench-ipsec
bench-ipsec: deps
	$(GO) build -o $(BIN)/benchnhrp ./integration/cmd/benchnhrp
	$(BIN)/benchnhrp -ipsec -n $(or $(N),50) -rounds $(or $(ROUNDS),3) $(BENCHFLAGS)
	$(GO) test -run '^$$' -bench 'IPsecHubRecovery' -benchtime 5x ./integration/
	$(GO) test -run '^$$' -bench 'IPsecThroughput' -benchtime 1x ./integration/

# BGP on the hub (root, FRR): N spokes simulated by a wire-level BGP
# generator (GoBGP's packet codec) against our hub (the BGP controller on
# GoBGP, routes through host) and against FRR's bgpd and zebra, ROUNDS
# rounds each on fresh namespaces: one spoke from registration to its
# session and its routes in the kernel, a withdrawal, an expiry, N spokes
# × 4 prefixes at once, the FIB rate of 5,000 prefixes from one
# neighbour, memory per neighbour; then hub1 killed on the lab, ROUNDS
# times. Prints both columns' medians beside the goals and fails when one
# of ours misses its goal.
.PHONY: bench-bgp
bench-bgp: deps build
	$(GO) build -o $(BIN)/benchbgp ./integration/cmd/benchbgp
	$(BIN)/benchbgp -n $(or $(N),1000) -rounds $(or $(ROUNDS),3) -failover $(or $(ROUNDS),3) -bin $(BIN)
