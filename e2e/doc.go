// Package e2e holds kms-ha's end-to-end tests (build tag e2e): real kms-ha
// processes and real CometBFT validators on loopback. They cover failover
// (e2e_test.go), several chains (multichain_test.go), the CometBFT v0.38
// line (comet038_test.go), vote extensions (voteext_test.go, with the ABCI
// app in ./cmd/abciapp), PKCS#11 keys and a key mismatch (keys_test.go),
// the noise:// and unix:// transports (transport_test.go), a hot standby
// validator (standby_test.go), certificate roles (roles_test.go), rolling
// restarts, lost-quorum recovery and address changes (ops_test.go), and
// block throughput (transport_bench_test.go). The harness is ./harness;
// the demo behind `make demo` is ./cmd/demo.
//
//	make e2e    # or: go test -tags e2e -count=1 -timeout 20m -v ./e2e/
package e2e
