package pkcs11test

import (
	"encoding/asn1"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/miekg/pkcs11"
)

// secp256k1OID is the DER of OID 1.3.132.0.10 (secp256k1, SEC 2), the
// CKA_EC_PARAMS of a secp256k1 key.
var secp256k1OID = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}

// GenerateSecp256k1Consensus generates a secp256k1 EC key pair on the token
// (CKM_EC_KEY_PAIR_GEN with the curve's parameters; the private half
// sensitive and not extractable) and returns its 33-byte compressed public
// key. keyLabel or keyID may be empty to leave that attribute out.
func GenerateSecp256k1Consensus(t testing.TB, module, tokenLabel, pin, keyLabel string, keyID []byte) []byte {
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
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, secp256k1OID),
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
		t.Fatalf("pkcs11test: C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, secp256k1): %v", err)
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
	p, err := secp256k1.ParsePubKey(point)
	if err != nil {
		t.Fatalf("pkcs11test: CKA_EC_POINT %x is not a secp256k1 point: %v", attrs[0].Value, err)
	}
	return p.SerializeCompressed()
}
