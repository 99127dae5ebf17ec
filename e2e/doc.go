// Package e2e holds the end-to-end test of kms-ha (e2e_test.go, build tag
// e2e), its harness (./harness) and the demo behind `make demo` (./cmd/demo).
//
//	go test -tags e2e ./e2e/ -v -timeout 15m
package e2e
