// Package harness runs kms-ha clusters and the CometBFT validators they sign
// for on loopback addresses, for the end-to-end tests (package e2e) and the
// demo (../cmd/demo). It imports no kms-ha package: it drives the kms-ha
// binary and reads its logs, as an operator would.
//
// New is the one way to build a cluster: a single-validator chain, several
// chains, or the remote validator of a multi-validator testnet (with hot
// standbys), all signed for by one kms-ha cluster. A Cluster lives in one
// directory: a cometbft home per validator node, one home per kms-ha node
// and a logs/ folder with one append-only log per process. The logs are the
// tests' evidence: every signature a kms-ha node releases is a JSON line
// there, and CheckNoDoubleSign reads them across all nodes and restarts;
// CheckLeaderOnly checks that each node connected to validators and signed
// only while it led. CheckCommits ties them to the chain: each committed
// precommit must verify under the chain's key and be in the logs, under
// that chain's id, with the same sign bytes.
package harness
