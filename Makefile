# kms-ha: the two commands a newcomer needs are `make demo` and `make test`.
SHELL   := /bin/bash
GO      ?= go
BUILD   := build
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build cometbft demo test deps unit fuzz e2e race vet fmt bench proto clean chaos chaos-short bench-scale loadgen images compose-up compose-down compose-status compose-test

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BUILD)/kms-ha ./cmd/kms-ha

# The CometBFT node used by the demo and the end-to-end tests, pinned in go.mod.
cometbft:
	$(GO) build -o $(BUILD)/cometbft github.com/cometbft/cometbft/cmd/cometbft

# A local 3-node cluster signing for a real one-validator chain, with a
# leader failover. Ctrl-C stops and cleans up everything, and make exits 0.
# The demo program is built first, with a dot per package compiled (go
# build -v names each one; compiler errors, which hold spaces, print as
# they are), so a cold cache is never minutes of silence.
demo:
	@mkdir -p $(BUILD)
	@echo "building the demo program (first run: 1-3 minutes, a dot per package) ..."
	@$(GO) build -v -o $(BUILD)/demo ./e2e/cmd/demo 2>&1 | \
	  while IFS= read -r line; do case "$$line" in *" "*|"#"*) echo "$$line" ;; *) printf . ;; esac; done; \
	  status=$${PIPESTATUS[0]}; echo; exit $$status
	@$(BUILD)/demo $(DEMO_FLAGS)

# The whole suite: unit and in-process cluster tests with the race detector,
# a short fuzzing run, then the end-to-end tests against a real cometbft node.
test: deps vet unit fuzz e2e

# What the tests need beyond Go: SoftHSM2 for the PKCS#11 backend, promtool
# for the alert rules and systemd-analyze for the service unit (Debian's
# packages; the tests fail, never skip, without them).
deps:
	@bash scripts/install-softhsm.sh
	@bash scripts/install-promtool.sh
	@bash scripts/install-systemd-analyze.sh

unit: deps
	$(GO) test -race -count=1 ./...
	cd deploy/kubernetes && $(GO) test -count=1 ./...

# Privval frames as a validator connection reads them, from the committed
# corpus (transport/testdata/fuzz) plus FUZZTIME of new inputs; a crash
# is saved there as a new failing case. FUZZTIME counts executions, not
# seconds: with a duration, go1.26's fuzz coordinator can report a bare
# "context deadline exceeded" failure as the time runs out on a loaded
# machine (golang/go#75804, fixed in go1.27); a count has no deadline to
# race. 30000 executions take about 10 s here.
FUZZTIME ?= 30000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadRequest$$' -fuzztime $(FUZZTIME) ./transport/
	$(GO) test -run '^$$' -fuzz '^FuzzReadRequestV1$$' -fuzztime $(FUZZTIME) ./transport/

e2e:
	@mkdir -p $(BUILD)
	KMSHA_E2E_RACE=1 $(GO) test -tags e2e -count=1 -timeout 20m -v ./e2e/ 2>&1 | tee $(BUILD)/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; exit $${PIPESTATUS[0]}

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/...
	$(GO) vet -tags chaos ./e2e/chaos/
	$(GO) vet -tags docker ./deploy/compose/
	CGO_ENABLED=0 $(GO) vet ./keys/pkcs11/ ./cmd/kms-ha/ ./deploy/compose/init/
	cd deploy/kubernetes && $(GO) vet ./...

# Fault injection on separate hosts (network namespaces; needs root): a
# 4-validator testnet, a 3-node kms-ha cluster, CHAOS_FAULTS seeded faults
# (CHAOS_SEED=0 draws a seed; CHAOS_CRITICAL=1 gives kms-ha 40% of the
# power). Writes $(BUILD)/chaos-report/{report.md,chaos.png,logs} and the
# summary in docs/chaos.md; fails on any safety violation.
# CHAOS_KINDS=leader-validator draws only those faults and
# CHAOS_HANDOVER=0s sets cluster.validator_handover_after (such runs leave
# docs/chaos.md alone).
CHAOS_FAULTS ?= 100
CHAOS_SEED   ?= 0
CHAOS_OUT    ?= $(BUILD)/chaos-report
CHAOS_DOCS   ?= docs/chaos.md
chaos:
	@mkdir -p $(BUILD)
	$(GO) build -tags chaos -o $(BUILD)/chaos ./e2e/chaos
	$(BUILD)/chaos -faults $(CHAOS_FAULTS) -seed $(CHAOS_SEED) -out $(CHAOS_OUT) -docs "$(CHAOS_DOCS)" 2>&1 | tee $(CHAOS_OUT).log; exit $${PIPESTATUS[0]}

# The short pass .ci/run makes after make test: 20 faults (about 3
# minutes), a new seed each time, report in $(BUILD)/chaos-short, docs
# untouched.
chaos-short:
	$(MAKE) chaos CHAOS_FAULTS=20 CHAOS_OUT=$(BUILD)/chaos-short CHAOS_DOCS=

# Sign latency (1-node baseline vs 3 nodes; each key backend alone and
# through the cluster), read latency (follower, linearizable), the
# SignerService's Sign per backend and scheme; then the
# load generator (e2e/cmd/loadgen): validators played with CometBFT's own
# privval listener against real processes, CometBFT's FilePV signer, kms-ha
# 1-node and 3-node, interleaved round by round (docs/performance.md).
# LOADGEN_FLAGS adds flags, e.g. -nodes 5, or -kmsha-old OLD -systems
# old-kms3,kms3 for an A/B of two builds.
LOADGEN_FLAGS ?=
bench: deps build loadgen
	$(GO) test -run '^$$' -bench . -benchtime 2000x -count 1 ./signer/ ./grpcapi/
	$(BUILD)/loadgen -kmsha $(BUILD)/kms-ha -systems filepv,kms1,kms3 -validators 1 -pairs 3 -window 10s \
	  -md $(BUILD)/bench-sequential.md $(LOADGEN_FLAGS)
	$(BUILD)/loadgen -kmsha $(BUILD)/kms-ha -systems filepv,kms1,kms3 -validators 20 -rate 2 -proposal-every 4 \
	  -pairs 3 -window 10s -md $(BUILD)/bench-20chains.md $(LOADGEN_FLAGS)

loadgen:
	$(GO) build -o $(BUILD)/loadgen ./e2e/cmd/loadgen

# Per chain count, a fresh 3-node cluster, then a fresh FilePV signer (the
# same machine minutes apart), each chain a validator at 1 block/s: latency,
# CPU, memory, raft entries and disk writes per second; the table goes to
# $(BUILD)/bench-scale.md, the plot to $(BUILD)/bench-scale.png
# (docs/performance.md quotes both). About 8 minutes.
SCALE_CHAINS ?= 1,10,50,100,200
bench-scale: build loadgen
	$(BUILD)/loadgen -kmsha $(BUILD)/kms-ha -scale $(SCALE_CHAINS) -rate 1 -proposal-every 4 -window 20s -warmup 5s \
	  -md $(BUILD)/bench-scale.md -png $(BUILD)/bench-scale.png $(LOADGEN_FLAGS)

# Regenerate gRPC code (needs protoc; the generated files are committed).
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I grpcapi/proto \
	  --go_out=. --go_opt=module=github.com/kms-ha/kms-ha \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/kms-ha/kms-ha \
	  grpcapi/proto/kmsha/cluster/v1/cluster.proto \
	  grpcapi/proto/signerservice/signerservice.proto \
	  grpcapi/proto/signerservice/preview/signerservice.proto

# Container images FROM scratch, built from static binaries without any
# registry (deploy/docker): kms-ha:dev, cometbft:dev, kms-ha-compose-init:dev.
images:
	@bash deploy/docker/images.sh

# A 3-node kms-ha cluster signing for a one-validator chain in Docker
# (deploy/compose). compose-down removes the containers and the volumes.
COMPOSE := docker-compose -f deploy/compose/docker-compose.yml -p $(or $(COMPOSE_PROJECT),kms-ha)
compose-up: images
	$(COMPOSE) up -d
	@echo "blocks: curl -s 127.0.0.1:$${KMSHA_RPC_PORT:-26657}/status | jq .result.sync_info.latest_block_height"
	@echo "status: make compose-status   (or: $(COMPOSE) exec node1 kms-ha status --home /var/lib/kms-ha)"

compose-status:
	$(COMPOSE) exec -T node1 kms-ha status --home /var/lib/kms-ha

compose-down:
	$(COMPOSE) down -v --remove-orphans

# Builds the images, brings the compose project up under its own name and
# network, waits for blocks, runs kms-ha status, kills the leader's
# container, checks the chain goes on, and tears everything down. Needs
# Docker; not part of `make test`.
compose-test: images
	$(GO) test -tags docker -count=1 -timeout 10m -v ./deploy/compose/

clean:
	rm -rf $(BUILD)
