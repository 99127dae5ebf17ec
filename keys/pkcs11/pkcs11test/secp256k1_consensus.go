//go:build cgo

package pkcs11test

import "testing"

// GenerateSecp256k1Consensus is GenerateSecp256k1 for the consensus-key
// tests, which want the 33-byte compressed public key a validator announces.
func GenerateSecp256k1Consensus(t testing.TB, module, tokenLabel, pin, keyLabel string, keyID []byte) []byte {
	return GenerateSecp256k1(t, module, tokenLabel, pin, keyLabel, keyID).SerializeCompressed()
}
