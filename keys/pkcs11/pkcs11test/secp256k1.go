//go:build cgo

package pkcs11test

import (
	"encoding/asn1"
	"testing"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/miekg/pkcs11"
)

// secp256k1Params is the DER of the named curve secp256k1 (1.3.132.0.10).
var secp256k1Params = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}

// GenerateSecp256k1 generates a secp256k1 EC key pair (CKK_EC,
// CKM_EC_KEY_PAIR_GEN) on the token, the private half sensitive and not
// extractable, and returns its public key. keyLabel or keyID may be empty
// to leave that attribute out.
func GenerateSecp256k1(t testing.TB, module, tokenLabel, pin, keyLabel string, keyID []byte) *dsecp.PublicKey {
	t.Helper()
	point := generateEC(t, module, tokenLabel, pin, keyLabel, keyID, secp256k1Params)
	p, err := dsecp.ParsePubKey(point)
	if err != nil {
		t.Fatalf("pkcs11test: CKA_EC_POINT %x is not a secp256k1 point: %v", point, err)
	}
	return p
}

// p256Params is the DER of the named curve P-256 (1.2.840.10045.3.1.7).
var p256Params = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// GenerateP256 generates an EC key pair on curve P-256, for tests that a
// key on another curve is refused.
func GenerateP256(t testing.TB, module, tokenLabel, pin, keyLabel string, keyID []byte) {
	t.Helper()
	generateEC(t, module, tokenLabel, pin, keyLabel, keyID, p256Params)
}

// generateEC generates a CKK_EC key pair on the curve params names and
// returns its point, unwrapped from its DER OCTET STRING.
func generateEC(t testing.TB, module, tokenLabel, pin, keyLabel string, keyID, params []byte) []byte {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	ctx := ctxFor(t, module)
	s := userSession(t, ctx, slotOf(t, ctx, tokenLabel), pin)
	defer func() { _ = ctx.CloseSession(s) }()

	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
	}
	if keyLabel != "" {
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel))
	}
	if len(keyID) > 0 {
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_ID, keyID))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_ID, keyID))
	}
	pub, _, err := ctx.GenerateKeyPair(s,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
	if err != nil {
		t.Fatalf("pkcs11test: C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, curve %x): %v", params, err)
	}
	attrs, err := ctx.GetAttributeValue(s, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		t.Fatalf("pkcs11test: read CKA_EC_POINT: %v", err)
	}
	point := attrs[0].Value
	var raw []byte
	if rest, err := asn1.Unmarshal(point, &raw); err == nil && len(rest) == 0 {
		point = raw
	}
	return point
}
