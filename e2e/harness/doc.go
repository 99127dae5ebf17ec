// Package harness runs kms-ha clusters and CometBFT validators on loopback
// addresses for the end-to-end tests (../*_test.go) and the demo
// (../cmd/demo): one validator per chain, or a multi-validator testnet,
// on the CometBFT lines the tests name, with file or PKCS#11 keys and any
// of the transports.
//
// A Cluster lives in one directory: a cometbft home per chain, one home per
// kms-ha node and a logs/ folder with one append-only log per process. The
// logs are the test's evidence: every signature a kms-ha node releases is a
// JSON line there, and CheckNoDoubleSign reads them across all nodes and
// restarts.
// CheckCommits ties them to the chain: each committed precommit must verify
// under the chain's key and be in the logs, under that chain's id, with the
// same sign bytes.
package harness
