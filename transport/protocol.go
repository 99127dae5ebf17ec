package transport

import (
	"fmt"
	"strings"
)

// Protocol is the privval wire format of one CometBFT line, chosen per
// validator entry (validators[].protocol).
type Protocol string

// The protocols a validator entry may name.
const (
	// ProtocolV034 serves CometBFT v0.34 (and Tendermint v0.34): the v0.38
	// frames without vote extensions.
	ProtocolV034 Protocol = "v0.34"
	// ProtocolV037 serves CometBFT v0.37: as v0.34.
	ProtocolV037 Protocol = "v0.37"
	// ProtocolV038 serves CometBFT v0.38, v0.39 and v0.40 (tendermint.privval):
	// the extension of every non-nil precommit is signed, as FilePV does.
	ProtocolV038 Protocol = "v0.38"
	// ProtocolV1 serves CometBFT v1.0 (cometbft.privval.v1).
	ProtocolV1 Protocol = "v1"
)

// DefaultProtocol is what an entry without protocol speaks.
const DefaultProtocol = ProtocolV038

// protocolForms is quoted in errors so that a user sees every value that
// works and which nodes each serves.
const protocolForms = "v0.34, v0.37, v0.38 (CometBFT v0.38, v0.39 and v0.40; the default) or v1 (CometBFT v1.0)"

// ParseProtocol returns the protocol a validators[].protocol value names;
// the empty string is DefaultProtocol.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.TrimSpace(s)); p {
	case "":
		return DefaultProtocol, nil
	case ProtocolV034, ProtocolV037, ProtocolV038, ProtocolV1:
		return p, nil
	}
	return "", fmt.Errorf("transport: unknown protocol %q, want %s", s, protocolForms)
}

// signsExtensions reports whether the line has vote extensions that the
// signer must sign unless the request says otherwise.
func (p Protocol) signsExtensions() bool {
	return p == ProtocolV038 || p == ProtocolV1
}

// CheckProtocol checks a validators[].protocol value against the entry's
// address: only v0.40 nodes have noise:// listeners, and they speak v0.38.
func CheckProtocol(addr, protocol string) error {
	p, err := ParseProtocol(protocol)
	if err != nil {
		return err
	}
	t, err := parseTarget(addr)
	if err != nil {
		return err
	}
	return checkSchemeProtocol(t.Scheme, p)
}

func checkSchemeProtocol(scheme string, p Protocol) error {
	if scheme == "noise" && p != ProtocolV038 {
		return fmt.Errorf("transport: protocol %s cannot be used with a noise:// address: only CometBFT v0.40 nodes have noise:// privval listeners, "+
			"and they speak protocol v0.38; use tcp:// or unix:// for a %s node", p, p)
	}
	return nil
}

// CarriesKey reports whether the line's PubKeyResponse can carry a key of
// algorithm (keys[].algorithm). The v0.38 format is CometBFT v0.40's
// tendermint.crypto.PublicKey, which has every type; v0.34 and v0.37 know
// only ed25519 and secp256k1, and v1.0's type names do not include
// secp256k1eth or ml_dsa_65.
func CarriesKey(p Protocol, algorithm string) bool {
	switch algorithm {
	case "secp256k1eth", "mldsa65":
		return p == ProtocolV038
	}
	return true
}
