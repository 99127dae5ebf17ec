// Package harness runs kms-ha clusters and a CometBFT validator on loopback
// addresses for the end-to-end test (../e2e_test.go) and the demo
// (../cmd/demo).
//
// A Cluster lives in one directory: a cometbft home, one home per kms-ha
// node and a logs/ folder with one append-only log per process. The logs are
// the test's evidence: every signature a kms-ha node releases is a JSON line
// there, and CheckNoDoubleSign reads them across all nodes and restarts.
package harness
