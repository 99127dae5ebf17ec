package signer

import "fmt"

// ChainMismatchError is a request for another chain than the one its
// connection is configured for: the validator's genesis.json names
// Requested, kms.yaml's validators entry names Configured. Nothing is
// signed; CometBFT exits on it, so both sides of the message point at
// the fields to correct.
type ChainMismatchError struct {
	Requested, Configured string
	// Fields names the kms.yaml fields that spell Configured (empty when
	// the signer was not told).
	Fields string
}

// Error is what the validator's log shows (the RemoteSignerError's
// description): it keeps CometBFT's own wording first.
func (e *ChainMismatchError) Error() string {
	return fmt.Sprintf("request for chain %q on a connection for chain %q: the signer's kms.yaml names chain %q (%s) "+
		"where this validator's genesis.json names %q", e.Requested, e.Configured, e.Configured, e.fields(), e.Requested)
}

// Hint is what the signer's log shows.
func (e *ChainMismatchError) Hint() string {
	return fmt.Sprintf("the validator asked to sign for chain %q, but this connection is configured for chain %q "+
		"(%s): the chain id in kms.yaml must be the chain_id of the validator's genesis.json. If %q is the right chain, "+
		"put it in those fields and restart kms-ha; otherwise the validators entry dials the wrong node. Nothing was signed",
		e.Requested, e.Configured, e.fields(), e.Requested)
}

func (e *ChainMismatchError) fields() string {
	if e.Fields == "" {
		return "validators[].chain_id and chains[].id in kms.yaml"
	}
	return e.Fields
}
