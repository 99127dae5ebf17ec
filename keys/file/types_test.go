package file

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	"github.com/cometbft/cometbft/privval"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys"
)

func genMLDSA(t *testing.T) crypto.PrivKey {
	t.Helper()
	k, err := mldsa65.GenPrivKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Every consensus key type CometBFT v0.40 accepts loads from the
// priv_validator_key.json CometBFT's FilePV writes for it, signs what the
// type's own verifier accepts, and signs the same bytes the same way twice:
// the determinism the cluster relies on for a re-sign after failover.
func TestEveryKeyTypeFromFilePV(t *testing.T) {
	cases := []struct {
		algo   string
		priv   crypto.PrivKey
		sigLen int
	}{
		{keys.Ed25519, ed25519.GenPrivKey(), 64},
		{keys.Secp256k1, secp256k1.GenPrivKey(), 64},
		{keys.Secp256k1Eth, secp256k1eth.GenPrivKey(), 65},
		{keys.MLDSA65, genMLDSA(t), mldsa65.SignatureSize},
	}
	msg := []byte("\x2acanonical vote sign bytes stand-in")
	for _, c := range cases {
		t.Run(c.algo, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "priv_validator_key.json")
			privval.NewFilePV(c.priv, path, filepath.Join(dir, "state.json")).Key.Save()
			k, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if k.Algorithm() != c.algo || !k.PubKey().Equals(c.priv.PubKey()) {
				t.Fatalf("opened a %s key %v, want %s %v", k.Algorithm(), k.PubKey(), c.algo, c.priv.PubKey())
			}
			if err := keys.CheckAlgorithm(c.algo, k.PubKey()); err != nil {
				t.Fatal(err)
			}
			sig, err := k.Sign(context.Background(), msg)
			if err != nil {
				t.Fatal(err)
			}
			if len(sig) != c.sigLen || !c.priv.PubKey().VerifySignature(msg, sig) {
				t.Fatalf("%d-byte signature does not verify with CometBFT's %s verifier", len(sig), c.priv.Type())
			}
			again, err := k.Sign(context.Background(), msg)
			if err != nil || !bytes.Equal(again, sig) {
				t.Fatalf("second signature over the same bytes differs: %s is not deterministic", c.algo)
			}
			if !k.Deterministic() {
				t.Fatal("file keys are deterministic")
			}
		})
	}
}

// secp256k1 consensus signatures are SHA-256 of the sign bytes, 64 bytes
// r||s with low S (CometBFT refuses a high S); secp256k1eth signs the
// Keccak-256 of the sign bytes and answers r||s||v.
func TestSecp256k1SignatureFormats(t *testing.T) {
	k := New(secp256k1.GenPrivKey())
	for i := 0; i < 32; i++ {
		sig, err := k.Sign(context.Background(), []byte{byte(i), 1, 2, 3})
		if err != nil {
			t.Fatal(err)
		}
		var s dsecp.ModNScalar
		s.SetByteSlice(sig[32:])
		if s.IsOverHalfOrder() {
			t.Fatalf("signature %d has a high S", i)
		}
	}
	eth := New(secp256k1eth.GenPrivKey())
	sig, _ := eth.Sign(context.Background(), []byte("x"))
	if len(sig) != 65 || sig[64] > 1 {
		t.Fatalf("secp256k1eth signature is %d bytes with v=%d, want 65 bytes r||s||v, v in {0,1}", len(sig), sig[len(sig)-1])
	}
}

func TestAlgorithmMismatchIsNamed(t *testing.T) {
	err := keys.CheckAlgorithm(keys.Ed25519, secp256k1eth.GenPrivKey().PubKey())
	if err == nil || !strings.Contains(err.Error(), "the key is secp256k1eth but keys[].algorithm is ed25519") {
		t.Fatalf("got %v", err)
	}
}

func TestBadSecp256k1ScalarRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.json")
	// 32 bytes of 0xff: above the curve order.
	os.WriteFile(path, []byte(`{"priv_key":{"type":"tendermint/PrivKeySecp256k1","value":"//////////////////////////////////////////8="}}`), 0o600)
	_, err := Open(path)
	if err == nil || !strings.Contains(err.Error(), "not a valid secp256k1 key") {
		t.Fatalf("got %v", err)
	}
}
