//go:build cgo

package grpcapi

import (
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/kms-ha/kms-ha/grpcapi/signerpb"
	"github.com/kms-ha/kms-ha/grpcapi/signerservicepb"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/awskms/kmstest"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"google.golang.org/grpc/codes"
)

const tokenPin = "pin-grpcapi-signerservice-5521"

// pkcs11Keys provisions a SoftHSM token with a secp256k1 and an Ed25519
// key, generated on the token, and configures both as grpc.keys.
func pkcs11Keys(t testing.TB, label string) []SignerKey {
	t.Helper()
	module, _ := pkcs11test.NewToken(t, label, tokenPin)
	pkcs11test.GenerateSecp256k1(t, module, label, tokenPin, "eth-key", []byte{0x0e})
	pkcs11test.GenerateEd25519(t, module, label, tokenPin, "ed-key", []byte{0x0d})
	cfg := func(keyLabel string) pkcs11.Config {
		return pkcs11.Config{Module: module, TokenLabel: label, KeyLabel: keyLabel, Pin: tokenPin}
	}
	return []SignerKey{
		{ID: "hsm-eth", Backend: BackendPKCS11, Algorithm: AlgoSecp256k1Eth, PKCS11: cfg("eth-key")},
		{ID: "hsm-ed", Backend: BackendPKCS11, Algorithm: AlgoEd25519, PKCS11: cfg("ed-key")},
	}
}

// awskmsKeys adds one key of each algorithm AWS KMS offers the
// SignerService to a local KMS endpoint that the real AWS SDK talks to.
func awskmsKeys(t testing.TB) []SignerKey {
	t.Helper()
	kmstest.IsolateEnv(t)
	srv := kmstest.New(t)
	edID, _ := srv.AddEd25519Key("signer-ed")
	secpID, _ := srv.AddSecp256k1Key("signer-secp")
	ethID, _ := srv.AddSecp256k1Key("")
	cfg := func(id string) awskms.Config { return awskms.Config{KeyID: id, Endpoint: srv.URL} }
	return []SignerKey{
		{ID: "kms-ed", Backend: BackendAWSKMS, Algorithm: AlgoEd25519, AWSKMS: cfg(edID)},
		{ID: "kms-secp", Backend: BackendAWSKMS, Algorithm: AlgoSecp256k1, AWSKMS: cfg("alias/signer-secp")},
		{ID: "kms-eth", Backend: BackendAWSKMS, Algorithm: AlgoSecp256k1Eth, AWSKMS: cfg(srv.ARN(ethID))},
		{ID: "kms-secp-by-id", Backend: BackendAWSKMS, Algorithm: AlgoSecp256k1, AWSKMS: cfg(secpID)},
	}
}

// Every backend and scheme cosmos/kms v0.1.0 allows, through one service:
// each signature verifies against the key GetKey answers, by the scheme's
// rules. ECDSA on a token or KMS draws a random nonce, so its signatures
// over the same bytes differ; Ed25519 and file keys do not.
func TestSignerServiceReleasedEveryBackend(t *testing.T) {
	keys := append(fileVectorKeys(t, t.TempDir()), pkcs11Keys(t, "grpcapi-released")...)
	keys = append(keys, awskmsKeys(t)...)
	c, _ := releasedFixture(t, keys...)
	differs := checkReleased(t, c)
	want := map[string]bool{"eth": false, "ed": false, "hsm-eth": true, "hsm-ed": false,
		"kms-ed": false, "kms-secp": true, "kms-eth": true, "kms-secp-by-id": true}
	if len(differs) != len(want) {
		t.Fatalf("checked %d keys, want %d: %v", len(differs), len(want), differs)
	}
	for id, w := range want {
		if differs[id] != w {
			t.Errorf("%s: a second signature over the same bytes differs: %v, want %v", id, differs[id], w)
		}
	}
	// AWS KMS signs 1 to 4096 bytes with Ed25519; the other backends any
	// length.
	ctx := callCtx(t)
	for _, n := range []int{0, 4097} {
		_, err := c.Sign(ctx, &signerservicepb.SignRequest{KeyId: "kms-ed", Payload: generic(make([]byte, n))})
		wantCode(t, fmt.Sprintf("kms-ed: %d-byte payload", n), err, codes.InvalidArgument)
	}
	for _, id := range []string{"ed", "hsm-ed"} {
		sign(ctx, t, c, id, make([]byte, 5000))
	}
}

// The pre-release contract signs with secp256k1 keys on any backend.
func TestPreviewSignerServiceHSMAndKMSKeys(t *testing.T) {
	f := newSignerFixture(t)
	f.cfg.Keys = append(pkcs11Keys(t, "grpcapi-preview")[:1], awskmsKeys(t)[2])
	f.start(t)
	c := f.client(t)
	for _, id := range []string{"hsm-eth", "kms-eth"} {
		checkPreviewSignature(t, c, id)
	}
}

// checkPreviewSignature: a RecoverableMessage signature (r, s, v over
// SHA-256 of the message) recovers the key GetKey answers, with low S.
func checkPreviewSignature(t *testing.T, c signerpb.SignerServiceClient, id string) {
	t.Helper()
	ctx := callCtx(t)
	k, err := c.GetKey(ctx, &signerpb.GetKeyRequest{Id: id})
	if err != nil {
		t.Fatalf("GetKey(%s): %v", id, err)
	}
	if k.GetKey().GetAlgo() != "secp256k1" {
		t.Errorf("%s: algo %q", id, k.GetKey().GetAlgo())
	}
	msg := []byte("preview message for " + id)
	resp, err := c.Sign(ctx, recoverableReq(id, msg))
	if err != nil {
		t.Fatalf("Sign(%s): %v", id, err)
	}
	sig := resp.GetRecoverableSignature()
	digest := sha256.Sum256(msg)
	checkRecoverable(t, id, k.GetKey().GetPubkey(), digest[:], append(append(append([]byte{}, sig.GetR()...), sig.GetS()...), sig.GetV()...))
}
