package grpcapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	cmted25519 "github.com/cometbft/cometbft/crypto/ed25519"
	cmtsecp "github.com/cometbft/cometbft/crypto/secp256k1"
	cmtsecpeth "github.com/cometbft/cometbft/crypto/secp256k1eth"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	decdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"golang.org/x/crypto/sha3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kms-ha/kms-ha/grpcapi/signerservicepb"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// Test vectors. The secp256k1 key is SHA-256("kms-ha signerservice test
// vector key"); its RFC 6979 signatures were computed with an independent
// pure-Python ECDSA (which reproduces the well-known vector of key 1 over
// "Satoshi Nakamoto"). The Ed25519 key and signature are RFC 8032's TEST 1.
const (
	vecSecpPriv  = "b85929dd9b942d116b4dd84b44280137720acc167a2fb3c84e2a09af82f474a3"
	vecSecpPub   = "03b6ef03f29059b6a0a6be06e062e89d25e04248092362dcfb28bc9466f4e6af43"
	vecEthDigest = "a4dafcc5fb4d3d5172508e62733bae96d0b5e880f0395cd57fd0273b425d5ccd" // SHA-256("kms-ha secp256k1eth test vector")
	vecEthSig    = "5d0dd257f3e170070c65baba5791b2997d161a38530358788ce62bb54c986d56" +
		"3314e51c8e1ffe25997d68faff4a81f7817a215405666bd9519adc9039231f3c01"
	vecEdSeed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	vecEdPub  = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	vecEdSig  = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// releasedFixture starts the released contract over TLS on 127.0.0.1 with
// keys, and returns a client generated from the release's proto.
func releasedFixture(t testing.TB, keys ...SignerKey) (signerservicepb.SignerServiceClient, *signerFixture) {
	t.Helper()
	f := newSignerFixture(t)
	f.cfg.API = APIReleased
	f.cfg.Keys = keys
	f.start(t)
	return signerservicepb.NewSignerServiceClient(f.dial(t)), f
}

// fileVectorKeys writes the test-vector keys as cosmos/kms's file backend
// reads them: hex for secp256k1eth, base64 of seed||pubkey for ed25519.
func fileVectorKeys(t testing.TB, dir string) []SignerKey {
	edKey := append(mustHex(t, vecEdSeed), mustHex(t, vecEdPub)...)
	return []SignerKey{
		{ID: "eth", Backend: BackendFile, Algorithm: AlgoSecp256k1Eth,
			KeyFile: writeFile(t, dir, "eth.hex", []byte("0x"+vecSecpPriv+"\n"))},
		{ID: "ed", Backend: BackendFile, Algorithm: AlgoEd25519,
			KeyFile: writeFile(t, dir, "ed.key", []byte(base64.StdEncoding.EncodeToString(edKey)))},
	}
}

func generic(b []byte) *signerservicepb.Payload {
	return &signerservicepb.Payload{Kind: &signerservicepb.Payload_Generic{Generic: b}}
}

func sign(ctx context.Context, t *testing.T, c signerservicepb.SignerServiceClient, id string, payload []byte) []byte {
	t.Helper()
	r, err := c.Sign(ctx, &signerservicepb.SignRequest{KeyId: id, Payload: generic(payload)})
	if err != nil {
		t.Fatalf("Sign(%s): %v", id, err)
	}
	return r.GetSignature()
}

// The file backend signs exactly the pinned vectors, through a client
// generated from the release's proto over TLS.
func TestSignerServiceReleasedFileVectors(t *testing.T) {
	c, _ := releasedFixture(t, fileVectorKeys(t, t.TempDir())...)
	ctx := callCtx(t)

	keys, err := c.GetKeys(ctx, &signerservicepb.GetKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, k := range keys.GetKeys() {
		got += fmt.Sprintf("%s %s %x; ", k.GetId(), k.GetScheme(), k.GetPubkey())
	}
	want := "ed ED25519 " + vecEdPub + "; eth ECDSA_SECP256K1ETH " + vecSecpPub + "; "
	if got != want {
		t.Fatalf("GetKeys = %s\nwant      %s", got, want)
	}
	one, err := c.GetKey(ctx, &signerservicepb.GetKeyRequest{Id: "eth"})
	if err != nil || one.GetKey().GetScheme() != signerservicepb.SignatureScheme_ECDSA_SECP256K1ETH ||
		hex.EncodeToString(one.GetKey().GetPubkey()) != vecSecpPub {
		t.Fatalf("GetKey(eth) = %v, %v", one, err)
	}

	if sig := sign(ctx, t, c, "eth", mustHex(t, vecEthDigest)); hex.EncodeToString(sig) != vecEthSig {
		t.Errorf("secp256k1eth signature\n %x\nwant %s", sig, vecEthSig)
	}
	if sig := sign(ctx, t, c, "ed", nil); hex.EncodeToString(sig) != vecEdSig {
		t.Errorf("ed25519 signature (RFC 8032 TEST 1)\n %x\nwant %s", sig, vecEdSig)
	}
}

// checkReleased signs with every key c serves and checks each signature as
// its scheme says, with CometBFT's own verifiers where it has one: an
// ECDSA_SECP256K1ETH signature over Keccak-256(msg) is what CometBFT's
// secp256k1eth key verifies, an ECDSA_SECP256K1 one over the message what
// its secp256k1 key verifies (SHA-256, low-S). It returns, by key id,
// whether a second signing of the same bytes gave a different signature.
func checkReleased(t *testing.T, c signerservicepb.SignerServiceClient) map[string]bool {
	t.Helper()
	ctx := callCtx(t)
	keys, err := c.GetKeys(ctx, &signerservicepb.GetKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	differs := map[string]bool{}
	for _, k := range keys.GetKeys() {
		id, pub := k.GetId(), k.GetPubkey()
		msg := []byte("attestation for " + id)
		switch k.GetScheme() {
		case signerservicepb.SignatureScheme_ECDSA_SECP256K1ETH:
			h := sha3.NewLegacyKeccak256()
			h.Write(msg)
			digest := h.Sum(nil)
			sig := sign(ctx, t, c, id, digest)
			checkRecoverable(t, id, pub, digest, sig)
			if !cmtsecpeth.PubKey(pub).VerifySignature(msg, sig) {
				t.Errorf("%s: CometBFT's secp256k1eth key does not verify the signature over Keccak-256 of the message", id)
			}
			differs[id] = !bytes.Equal(sig, sign(ctx, t, c, id, digest))
			for _, n := range []int{0, 31, 33, 64} {
				_, err := c.Sign(ctx, &signerservicepb.SignRequest{KeyId: id, Payload: generic(make([]byte, n))})
				wantCode(t, fmt.Sprintf("%s: %d-byte digest", id, n), err, codes.InvalidArgument)
			}
		case signerservicepb.SignatureScheme_ECDSA_SECP256K1:
			sig := sign(ctx, t, c, id, msg)
			if len(sig) != 64 || isHighS(sig) {
				t.Errorf("%s: %d-byte signature (high s: %v), want 64 bytes, low-S", id, len(sig), len(sig) == 64 && isHighS(sig))
			}
			if !cmtsecp.PubKey(pub).VerifySignature(msg, sig) {
				t.Errorf("%s: CometBFT's secp256k1 key does not verify the signature over the message", id)
			}
			differs[id] = !bytes.Equal(sig, sign(ctx, t, c, id, msg))
		case signerservicepb.SignatureScheme_ED25519:
			sig := sign(ctx, t, c, id, msg)
			if len(sig) != 64 || !cmted25519.PubKey(pub).VerifySignature(msg, sig) {
				t.Errorf("%s: %d-byte ed25519 signature does not verify", id, len(sig))
			}
			differs[id] = !bytes.Equal(sig, sign(ctx, t, c, id, msg))
		default:
			t.Errorf("%s: scheme %v", id, k.GetScheme())
		}
	}
	_, err = c.Sign(ctx, &signerservicepb.SignRequest{KeyId: "nope", Payload: generic(make([]byte, 32))})
	wantCode(t, "unknown key", err, codes.NotFound)
	_, err = c.GetKey(ctx, &signerservicepb.GetKeyRequest{Id: "nope"})
	wantCode(t, "GetKey of an unknown key", err, codes.NotFound)
	return differs
}

// checkRecoverable: 65 bytes r||s||v, v 0 or 1, low-S, and r||s||v over
// digest recovers the key GetKey answered.
func checkRecoverable(t *testing.T, id string, pub, digest, sig []byte) {
	t.Helper()
	if len(sig) != 65 || sig[64] > 1 {
		t.Fatalf("%s: signature of %d bytes (v %v), want 65 with v 0 or 1", id, len(sig), sig[len(sig)-1:])
	}
	if isHighS(sig[:64]) {
		t.Errorf("%s: s is in the upper half of the group order", id)
	}
	got, _, err := decdsa.RecoverCompact(append([]byte{27 + sig[64]}, sig[:64]...), digest)
	if err != nil || !bytes.Equal(got.SerializeCompressed(), pub) {
		t.Errorf("%s: r||s||v does not recover the GetKey public key (err %v)", id, err)
	}
}

func isHighS(rs []byte) bool {
	var s dsecp.ModNScalar
	s.SetByteSlice(rs[32:64])
	return s.IsOverHalfOrder()
}

// File keys: every scheme checked, and deterministic signatures (RFC 6979
// and RFC 8032).
func TestSignerServiceReleasedFileBackend(t *testing.T) {
	c, f := releasedFixture(t, fileVectorKeys(t, t.TempDir())...)
	for id, differ := range checkReleased(t, c) {
		if differ {
			t.Errorf("%s: a file key signed the same bytes twice differently; file keys are deterministic", id)
		}
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "key_id=eth") || strings.Contains(logs, vecSecpPriv) || strings.Contains(logs, vecEdSeed) {
		t.Errorf("sign logs lack the key id or hold a private key:\n%s", logs)
	}
	payload := sha256.Sum256([]byte("attestation for ed"))
	if !strings.Contains(logs, "payload_sha256="+hex.EncodeToString(payload[:])) {
		t.Errorf("sign logs lack the payload's SHA-256:\n%s", logs)
	}
}

// Plaintext, as cosmos/kms serves it without tls_cert/tls_key, on
// loopback.
func TestSignerServiceReleasedPlaintextOnLoopback(t *testing.T) {
	f := newSignerFixture(t)
	f.cfg.API, f.cfg.TLSCert, f.cfg.TLSKey = APIReleased, "", ""
	f.cfg.Keys = fileVectorKeys(t, f.dir)
	f.start(t)
	conn, err := grpc.NewClient(f.listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := signerservicepb.NewSignerServiceClient(conn)
	if sig := sign(callCtx(t), t, c, "eth", mustHex(t, vecEthDigest)); hex.EncodeToString(sig) != vecEthSig {
		t.Errorf("plaintext secp256k1eth signature %x", sig)
	}
	if !strings.Contains(f.logs.String(), "tls=false") {
		t.Errorf("the start log does not say the service is plaintext:\n%s", f.logs.String())
	}
}

// The released contract, pinned: the wire names and numbers of cosmos/kms
// v0.1.0's proto.
func TestSignerServiceReleasedWireContract(t *testing.T) {
	fd := signerservicepb.File_signerservice_signerservice_proto
	if fd.Package() != "cosmos.kms.signerservice" || fd.Services().Get(0).FullName() != releasedPath {
		t.Fatalf("package %q service %q", fd.Package(), fd.Services().Get(0).FullName())
	}
	var got []string
	ev := fd.Enums().ByName("SignatureScheme").Values()
	for i := 0; i < ev.Len(); i++ {
		got = append(got, fmt.Sprintf("%s=%d", ev.Get(i).Name(), ev.Get(i).Number()))
	}
	msgs := fd.Messages()
	for i := 0; i < msgs.Len(); i++ {
		md := msgs.Get(i)
		var fs []string
		for j := 0; j < md.Fields().Len(); j++ {
			fs = append(fs, fmt.Sprintf("%s=%d", md.Fields().Get(j).Name(), md.Fields().Get(j).Number()))
		}
		got = append(got, fmt.Sprintf("%s{%s}", md.Name(), strings.Join(fs, " ")))
	}
	want := "UNKNOWN=0 ECDSA_SECP256K1=1 ED25519=2 ECDSA_SECP256K1ETH=3 Payload{generic=1} Key{id=1 pubkey=2 scheme=3} " +
		"GetKeyRequest{id=1} GetKeyResponse{key=1} GetKeysRequest{} GetKeysResponse{keys=1} SignRequest{key_id=1 payload=2} " +
		"SignResponse{signature=1}"
	if strings.Join(got, " ") != want {
		t.Errorf("contract\n %s\nwant %s", strings.Join(got, " "), want)
	}
}

// A signing failure reaches the client typed: its own mistake, a deadline,
// a backend worth retrying elsewhere, or an internal failure.
func TestSignStatusCodes(t *testing.T) {
	for err, want := range map[error]codes.Code{
		fmt.Errorf("%w: 31 bytes", errPayload):                 codes.InvalidArgument,
		fmt.Errorf("token: %w", context.DeadlineExceeded):      codes.DeadlineExceeded,
		fmt.Errorf("token: %w", context.Canceled):              codes.Canceled,
		fmt.Errorf("kms: %w", awskms.ErrThrottled):             codes.Unavailable,
		fmt.Errorf("kms: %w", awskms.ErrUnavailable):           codes.Unavailable,
		fmt.Errorf("kms: %w", awskms.ErrBadSignature):          codes.Internal,
		fmt.Errorf("normalise: %w", secp256k1.ErrBadSignature): codes.Internal,
		fmt.Errorf("keys/pkcs11: sign: CKR_DEVICE_ERROR"):      codes.Internal,
	} {
		wantCode(t, err.Error(), signStatus("k", err), want)
	}
}
