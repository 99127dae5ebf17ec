package awskms

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys"
)

// Each consensus algorithm AWS KMS offers a key spec for, through the real
// AWS SDK against the local KMS endpoint: the public key as CometBFT
// encodes it, signatures in the format CometBFT verifies for the type
// (secp256k1: 64-byte low-S r||s over SHA-256; secp256k1eth: 65-byte
// r||s||v over Keccak-256; ML-DSA-65: pure, empty context), and the
// determinism the signer relies on: Ed25519 only.
func TestEveryAlgorithmOnAWSKMS(t *testing.T) {
	e := newEnv(t)
	secpID, secpPub := e.srv.AddSecp256k1ConsensusKey("secp")
	mlID, mlPub := e.srv.AddMLDSA65Key("mldsa")
	edID, edPub := e.srv.AddEd25519Key("ed")
	for _, c := range []struct {
		algo, keyID string
		pub         []byte
		typ         string
		sigLen      int
		det         bool
	}{
		{keys.Ed25519, edID, edPub, "ed25519", 64, true},
		{keys.Secp256k1, secpID, secpPub, secp256k1.KeyType, 64, false},
		{keys.Secp256k1Eth, secpID, secpPub, secp256k1eth.KeyType, 65, false},
		{keys.MLDSA65, mlID, mlPub, mldsa65.KeyType, mldsa65.SignatureSize, false},
	} {
		t.Run(c.algo, func(t *testing.T) {
			cfg := e.cfg
			cfg.KeyID, cfg.Algorithm = c.keyID, c.algo
			k, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			if k.PubKey().Type() != c.typ || !bytes.Equal(k.PubKey().Bytes(), c.pub) || keys.CheckAlgorithm(c.algo, k.PubKey()) != nil {
				t.Fatalf("public key %s %X, want %s %X", k.PubKey().Type(), k.PubKey().Bytes(), c.typ, c.pub)
			}
			if k.Deterministic() != c.det {
				t.Fatalf("Deterministic() = %v, want %v", k.Deterministic(), c.det)
			}
			var sigs [][]byte
			for i := 0; i < 8; i++ {
				msg := []byte{0x2a, byte(i % 2), 'v', 'o', 't', 'e'}
				sig, err := k.Sign(context.Background(), msg)
				if err != nil {
					t.Fatal(err)
				}
				if len(sig) != c.sigLen || !k.PubKey().VerifySignature(msg, sig) {
					t.Fatalf("%d-byte signature does not verify with CometBFT's %s verifier", len(sig), c.typ)
				}
				if c.algo == keys.Secp256k1 || c.algo == keys.Secp256k1Eth {
					var s dsecp.ModNScalar
					s.SetByteSlice(sig[32:64])
					if s.IsOverHalfOrder() {
						t.Fatal("high S: CometBFT refuses it")
					}
				}
				sigs = append(sigs, sig)
			}
			// sigs[0] and sigs[2] are over the same message.
			if same := bytes.Equal(sigs[0], sigs[2]); same != c.det {
				t.Fatalf("two signatures over the same bytes equal: %v; the key claims deterministic %v", same, c.det)
			}
		})
	}
}

// A key of another spec than the algorithm needs is refused at Open with
// the spec to create.
func TestAlgorithmNeedsItsKeySpec(t *testing.T) {
	e := newEnv(t)
	edID, _ := e.srv.AddEd25519Key("ed")
	cfg := e.cfg
	cfg.KeyID, cfg.Algorithm = edID, keys.MLDSA65
	_, err := Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "has key spec ECC_NIST_EDWARDS25519; kms-ha needs ML_DSA_65") {
		t.Fatalf("got %v", err)
	}
}
