//go:build cgo

package pkcs11

import (
	"bytes"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/miekg/pkcs11"
)

func tokenAttrs(cfg Config) []any {
	if cfg.Slot != nil {
		return []any{"module", cfg.Module, "slot", *cfg.Slot}
	}
	return []any{"module", cfg.Module, "token_label", cfg.TokenLabel}
}

func tokenDesc(cfg Config) string {
	if cfg.TokenLabel != "" {
		return fmt.Sprintf("token %q", cfg.TokenLabel)
	}
	if cfg.Slot != nil {
		return fmt.Sprintf("slot %d", *cfg.Slot)
	}
	return "token"
}

// resolveSlot finds the token on first use, and again by label on
// recovery: re-plugged tokens and restarted HSMs may come back in another
// slot. A configured slot is checked once, for a clear error at Open.
func (k *Key) resolveSlot(refresh bool) (uint, error) {
	k.mu.Lock()
	slot, known := k.slot, k.slotKnown
	k.mu.Unlock()
	if known && (!refresh || k.tokenLabel == "") {
		return slot, nil
	}
	tokens, err := k.listTokens()
	if err != nil {
		return 0, err
	}
	var found []uint
	for _, t := range tokens {
		if (k.tokenLabel == "" && t.slot == *k.fixedSlot) || (k.tokenLabel != "" && t.label == k.tokenLabel) {
			found = append(found, t.slot)
		}
	}
	switch {
	case len(found) == 1:
	case k.tokenLabel == "":
		return 0, fmt.Errorf("no initialised token in this slot (slot); %s", present(tokens))
	case len(found) == 0:
		return 0, fmt.Errorf("no token has this label (token_label); %s", present(tokens))
	default:
		return 0, fmt.Errorf("%d tokens have this label (slots %v); use slot instead of token_label", len(found), found)
	}
	k.mu.Lock()
	k.slot, k.slotKnown = found[0], true
	k.mu.Unlock()
	return found[0], nil
}

type tokenAt struct {
	slot  uint
	label string
}

func (k *Key) listTokens() ([]tokenAt, error) {
	c := k.mod.ctx
	slots, err := c.GetSlotList(true)
	if err != nil {
		return nil, fmt.Errorf("list slots: %w", err)
	}
	var tokens []tokenAt
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		tokens = append(tokens, tokenAt{slot: s, label: ti.Label})
	}
	return tokens, nil
}

func present(tokens []tokenAt) string {
	if len(tokens) == 0 {
		return "the module shows no initialised token"
	}
	parts := make([]string, len(tokens))
	for i, t := range tokens {
		parts[i] = fmt.Sprintf("%q (slot %d)", t.label, t.slot)
	}
	return "tokens present: " + strings.Join(parts, ", ")
}

func (k *Key) keyDesc() string {
	var parts []string
	if k.keyLabel != "" {
		parts = append(parts, fmt.Sprintf("key_label %q", k.keyLabel))
	}
	if len(k.keyID) > 0 {
		parts = append(parts, fmt.Sprintf("key_id %q", hex.EncodeToString(k.keyID)))
	}
	return strings.Join(parts, " and ")
}

func template(class uint, label string, id []byte) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if label != "" {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	if len(id) > 0 {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	return t
}

func findObjects(c *pkcs11.Ctx, h pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := c.FindObjectsInit(h, tmpl); err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	// Two is enough to tell "exactly one" from "ambiguous".
	objs, _, err := c.FindObjects(h, 2)
	if ferr := c.FindObjectsFinal(h); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	return objs, nil
}

func (k *Key) findPrivateKey(c *pkcs11.Ctx, h pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) {
	objs, err := findObjects(c, h, template(pkcs11.CKO_PRIVATE_KEY, k.keyLabel, k.keyID))
	if err != nil {
		return 0, err
	}
	switch len(objs) {
	case 1:
		return objs[0], nil
	case 0:
		if k.keyLabel != "" && len(k.keyID) > 0 {
			byLabel, _ := findObjects(c, h, template(pkcs11.CKO_PRIVATE_KEY, k.keyLabel, nil))
			byID, _ := findObjects(c, h, template(pkcs11.CKO_PRIVATE_KEY, "", k.keyID))
			if len(byLabel) > 0 && len(byID) > 0 {
				return 0, fmt.Errorf("key_label %q and key_id %q name different private keys; they must name the same key",
					k.keyLabel, hex.EncodeToString(k.keyID))
			}
		}
		return 0, fmt.Errorf("no private key with %s on the token (or the PIN's user cannot see it)", k.keyDesc())
	default:
		return 0, fmt.Errorf("several private keys match %s; set key_id (or both) to choose one", k.keyDesc())
	}
}

func (k *Key) checkKeyType(c *pkcs11.Ctx, s *session) error {
	attrs, err := c.GetAttributeValue(s.h, s.key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return fmt.Errorf("read the key type of %s: %w", k.keyDesc(), err)
	}
	if t, ok := ulong(attrs[0].Value); !ok || t != uint64(k.algo.keyType) {
		want := "an Ed25519 key (CKK_EC_EDWARDS"
		if k.algo.keyType == pkcs11.CKK_EC {
			want = "a secp256k1 key (CKK_EC"
		}
		return fmt.Errorf("%s is not %s 0x%X; CKA_KEY_TYPE is 0x%X), as algorithm %s needs",
			k.keyDesc(), want, k.algo.keyType, attrs[0].Value, k.algo.name)
	}
	return nil
}

// readPublicKey reads CKA_EC_POINT from the public key object that goes
// with the private key (same label/id). A few HSMs store no public object
// but expose the point on the private key, so that is the fallback.
func (k *Key) readPublicKey(c *pkcs11.Ctx, s *session) (crypto.PubKey, error) {
	objs, err := findObjects(c, s.h, template(pkcs11.CKO_PUBLIC_KEY, k.keyLabel, k.keyID))
	if err != nil {
		return nil, err
	}
	var obj pkcs11.ObjectHandle
	switch len(objs) {
	case 1:
		obj = objs[0]
	case 0:
		obj = s.key
	default:
		return nil, fmt.Errorf("several public keys match %s; set key_id (or both) to choose one", k.keyDesc())
	}
	want := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)}
	if k.algo.keyType == pkcs11.CKK_EC {
		// Only a secp256k1 key's curve needs checking; an Ed25519 token
		// may not expose the parameters at all.
		want = append(want, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil))
	}
	attrs, err := c.GetAttributeValue(s.h, obj, want)
	if err != nil {
		if len(objs) == 0 {
			return nil, fmt.Errorf("no public key object with %s on the token, and the private key does not expose CKA_EC_POINT (%v); store the public key on the token", k.keyDesc(), err)
		}
		return nil, fmt.Errorf("read CKA_EC_POINT of %s: %w", k.keyDesc(), err)
	}
	var params []byte
	if len(attrs) > 1 {
		params = attrs[1].Value
	}
	pub, err := k.algo.parsePub(params, attrs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", k.keyDesc(), err)
	}
	return pub, nil
}

// parseECPoint accepts CKA_EC_POINT both as the DER OCTET STRING that
// PKCS#11 3.0 specifies (SoftHSM: 04 20 || point) and as the raw 32 bytes
// some tokens return.
func parseECPoint(v []byte) (ed25519.PubKey, error) {
	if len(v) == ed25519.PubKeySize {
		return ed25519.PubKey(bytes.Clone(v)), nil
	}
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err == nil && len(rest) == 0 && len(raw) == ed25519.PubKeySize {
		return ed25519.PubKey(raw), nil
	}
	return nil, fmt.Errorf("CKA_EC_POINT (%d bytes) is not a 32-byte Ed25519 public key, raw or DER-wrapped", len(v))
}

// ulong decodes a CK_ULONG attribute, whose size and byte order are the
// platform's.
func ulong(b []byte) (uint64, bool) {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b), true
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), true
	}
	return 0, false
}
