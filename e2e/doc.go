// Package e2e holds the end-to-end tests of kms-ha (build tag e2e): real
// kms-ha processes signing for real cometbft validators on loopback, with
// crashes, restarts, transfers and faults. The tests are split by subject
// (failover, multiple chains, key backends, transports, operations,
// certificate roles, hot standbys, vote extensions); helpers_test.go holds
// their common preamble (newCluster) and end-of-test checks (checkSafety).
// The harness is ./harness, the demo behind `make demo` is ./cmd/demo.
//
//	go test -tags e2e ./e2e/ -v -timeout 15m
package e2e
