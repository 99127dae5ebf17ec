//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
)

// secp256k1 and secp256k1eth consensus keys on SoftHSM2, generated on the
// token: CKM_ECDSA over SHA-256 (secp256k1: 64-byte low-S r||s) or
// Keccak-256 (secp256k1eth: 65-byte r||s||v) of the sign bytes, verified
// with CometBFT's own verifiers. SoftHSM2 draws a random ECDSA nonce, so
// the key reports itself non-deterministic, and two signatures over the
// same bytes differ.
func TestSecp256k1OnSoftHSM(t *testing.T) {
	label := fmt.Sprintf("secp-%d", tokenSeq.Add(1))
	module, _ := pkcs11test.NewToken(t, label, goodPin)
	pub := pkcs11test.GenerateSecp256k1Consensus(t, module, label, goodPin, "validator", keyID)
	for _, c := range []struct {
		algo, typ string
		sigLen    int
	}{{keys.Secp256k1, secp256k1.KeyType, 64}, {keys.Secp256k1Eth, secp256k1eth.KeyType, 65}} {
		t.Run(c.algo, func(t *testing.T) {
			k, err := Open(context.Background(), Config{Module: module, TokenLabel: label, KeyLabel: "validator", Pin: goodPin, Algorithm: c.algo})
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			if k.PubKey().Type() != c.typ || !bytes.Equal(k.PubKey().Bytes(), pub) || k.Deterministic() {
				t.Fatalf("key %s %X deterministic=%v, want %s %X, not deterministic", k.PubKey().Type(), k.PubKey().Bytes(), k.Deterministic(), c.typ, pub)
			}
			msg := []byte("\x2acanonical vote stand-in")
			var first []byte
			for i := 0; i < 8; i++ {
				sig, err := k.Sign(context.Background(), msg)
				if err != nil {
					t.Fatal(err)
				}
				if len(sig) != c.sigLen || !k.PubKey().VerifySignature(msg, sig) {
					t.Fatalf("%d-byte signature does not verify with CometBFT's %s verifier", len(sig), c.typ)
				}
				var s dsecp.ModNScalar
				s.SetByteSlice(sig[32:64])
				if s.IsOverHalfOrder() {
					t.Fatal("high S")
				}
				if i == 0 {
					first = sig
				} else if bytes.Equal(sig, first) {
					t.Fatal("SoftHSM2's CKM_ECDSA signed the same bytes identically; the non-determinism the signer guards against was not exercised")
				}
			}
		})
	}
	// An Ed25519 algorithm on the EC key is refused at Open, naming both.
	_, err := Open(context.Background(), Config{Module: module, TokenLabel: label, KeyLabel: "validator", Pin: goodPin})
	if err == nil || !strings.Contains(err.Error(), "is not an Ed25519 key (CKK_EC_EDWARDS") {
		t.Fatalf("ed25519 on an EC key: %v", err)
	}
}

// ML-DSA-65 has no PKCS#11 mechanism: Open refuses before touching the
// token, saying so.
func TestMLDSA65RefusedOnPKCS11(t *testing.T) {
	_, err := Open(context.Background(), Config{Module: "/nonexistent/libsofthsm2.so", TokenLabel: "t", KeyLabel: "k", Pin: goodPin, Algorithm: keys.MLDSA65})
	if err == nil || !strings.Contains(err.Error(), "define no ML-DSA mechanism") {
		t.Fatalf("got %v", err)
	}
}
