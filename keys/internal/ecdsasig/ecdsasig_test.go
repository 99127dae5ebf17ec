package ecdsasig

import (
	"bytes"
	"encoding/asn1"
	"math/big"
	"testing"

	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// A high S is lowered (n - s), DER and raw forms agree, and the recovery
// id makes the signature verify as secp256k1eth.
func TestLowSAndRecovery(t *testing.T) {
	priv := secp256k1eth.GenPrivKey()
	msg := []byte("sign bytes")
	want, err := priv.Sign(msg) // r||s||v, low S
	if err != nil {
		t.Fatal(err)
	}
	n := dsecp.S256().N
	high := new(big.Int).Sub(n, new(big.Int).SetBytes(want[32:64]))
	der, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(want[:32]), high})
	rs, err := FromDER(der)
	if err != nil || !bytes.Equal(rs, want[:64]) {
		t.Fatalf("FromDER of the high-S form: %X, %v; want %X", rs, err, want[:64])
	}
	got, err := WithRecoveryID(priv.PubKey().Bytes(), Keccak256(msg), rs)
	if err != nil || !bytes.Equal(got, want) || !priv.PubKey().VerifySignature(msg, got) {
		t.Fatalf("WithRecoveryID: %X, %v; want %X", got, err, want)
	}
	if _, err := FromDER([]byte{0x30, 0x00}); err == nil {
		t.Fatal("an empty DER sequence is not a signature")
	}
	if _, err := WithRecoveryID(secp256k1eth.GenPrivKey().PubKey().Bytes(), Keccak256(msg), rs); err == nil {
		t.Fatal("a signature by another key must not get a recovery id")
	}
}
