package secp256k1

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// groupOrder is N, the order of the secp256k1 group, in hex.
const groupOrder = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"

func writeKeyFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key.hex")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomKeyHex(t *testing.T) string {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// recoverPub recovers the compressed public key from (r, s, v) over
// SHA-256(msg), independently of SignRecoverable's encoding.
func recoverPub(t *testing.T, msg []byte, r, s [32]byte, v byte) []byte {
	t.Helper()
	if v > 1 {
		t.Fatalf("v = %d, want 0 or 1", v)
	}
	compact := make([]byte, 0, 65)
	compact = append(compact, 27+4+v)
	compact = append(compact, r[:]...)
	compact = append(compact, s[:]...)
	digest := sha256.Sum256(msg)
	pub, compressed, err := ecdsa.RecoverCompact(compact, digest[:])
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	if !compressed {
		t.Fatal("recovered key not flagged compressed")
	}
	return pub.SerializeCompressed()
}

func TestLoadAcceptsHexForms(t *testing.T) {
	h := randomKeyHex(t)
	want, err := Load(writeKeyFile(t, h))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"trailing newline":  h + "\n",
		"surrounding space": "  \t" + h + " \r\n\n",
		"upper case":        strings.ToUpper(h),
		"0x prefix":         "0x" + h + "\n",
	} {
		k, err := Load(writeKeyFile(t, content))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(k.PubKeyCompressed(), want.PubKeyCompressed()) {
			t.Errorf("%s: different public key", name)
		}
	}
}

func TestPubKeyCompressed(t *testing.T) {
	// The private key 1 has the generator G as public key.
	k, err := Load(writeKeyFile(t, strings.Repeat("0", 63)+"1"))
	if err != nil {
		t.Fatal(err)
	}
	const g = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
	pub := k.PubKeyCompressed()
	if len(pub) != PubKeySize || hex.EncodeToString(pub) != g {
		t.Fatalf("pubkey = %x, want %s", pub, g)
	}
	// The returned slice is a copy.
	pub[0] ^= 0xff
	if hex.EncodeToString(k.PubKeyCompressed()) != g {
		t.Fatal("PubKeyCompressed exposes internal state")
	}
}

func TestLoadRejectsBadFiles(t *testing.T) {
	secret := randomKeyHex(t)
	nPlus1 := groupOrder[:63] + "2"
	cases := []struct {
		name, content, want string
	}{
		{"empty", "\n", "empty"},
		{"too short", secret[:62], "62 hex characters, want 64"},
		{"too long", secret + "abcd", "68 hex characters, want 64"},
		{"odd length", secret[:63], "63 hex characters"},
		{"not hex", secret[:40] + "zz" + secret[42:], "not hex"},
		{"json", `{"priv_key":"` + secret + `"}`, "not hex"},
		{"zero", strings.Repeat("0", 64), "zero"},
		{"group order", groupOrder, "not below the group order"},
		{"above group order", nPlus1, "not below the group order"},
		{"all ones", strings.Repeat("f", 64), "not below the group order"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeKeyFile(t, c.content)
			k, err := Load(path)
			if err == nil {
				t.Fatalf("loaded %v, want an error", k)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) {
				t.Errorf("error %q does not mention %q", msg, c.want)
			}
			if !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the file", msg)
			}
			// Never any part of the key material (a 16-character window
			// of the secret, of either case, is enough to tell).
			for i := 0; i+16 <= len(secret); i++ {
				w := secret[i : i+16]
				if strings.Contains(msg, w) || strings.Contains(msg, strings.ToUpper(w)) {
					t.Fatalf("error %q leaks key material", msg)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.hex"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("err = %v, want a not-exist error", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestFromBytesLength(t *testing.T) {
	if _, err := FromBytes(make([]byte, 31)); err == nil {
		t.Fatal("31 bytes accepted")
	}
	if _, err := FromBytes(make([]byte, 33)); err == nil {
		t.Fatal("33 bytes accepted")
	}
}

// Vectors cross-checked against OpenSSL's deterministic (RFC 6979) ECDSA
// with SHA-256 on secp256k1, normalised to low-S.
func TestSignDigestVectors(t *testing.T) {
	vectors := []struct {
		priv, msg, r, s string
	}{
		{
			strings.Repeat("0", 63) + "1", "Satoshi Nakamoto",
			"934b1ea10a4b3c1757e2b0c017d0b6143ce3c9a7e6a4a49860d7a6ab210ee3d8",
			"2442ce9d2b916064108014783e923ec36b49743e2ffa1c4496f01a512aafd9e5",
		},
		{
			strings.Repeat("0", 63) + "1", "All those moments will be lost in time, like tears in rain. Time to die...",
			"8600dbd41e348fe5c9465ab92d23e3db8b98b873beecd930736488696438cb6b",
			"547fe64427496db33bf66019dacbf0039c04199abb0122918601db38a72cfc21",
		},
		{
			groupOrder[:63] + "0", "Satoshi Nakamoto",
			"fd567d121db66e382991534ada77a6bd3106f0a1098c231e47993447cd6af2d0",
			"6b39cd0eb1bc8603e159ef5c20a5c8ad685a45b06ce9bebed3f153d10d93bed5",
		},
	}
	for i, vec := range vectors {
		k, err := Load(writeKeyFile(t, vec.priv))
		if err != nil {
			t.Fatal(err)
		}
		r, s, v := signRecoverable(t, k, []byte(vec.msg))
		if hex.EncodeToString(r[:]) != vec.r || hex.EncodeToString(s[:]) != vec.s {
			t.Errorf("vector %d: got r=%x s=%x\nwant r=%s s=%s", i, r, s, vec.r, vec.s)
		}
		if got := recoverPub(t, []byte(vec.msg), r, s, v); !bytes.Equal(got, k.PubKeyCompressed()) {
			t.Errorf("vector %d: v=%d recovers %x, want %x", i, v, got, k.PubKeyCompressed())
		}
	}
}

func TestSignDigestProperties(t *testing.T) {
	k, err := Load(writeKeyFile(t, randomKeyHex(t)))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[byte]bool{}
	for i := 0; i < 64; i++ {
		msg := []byte(fmt.Sprintf("message %d", i))
		r, s, v := signRecoverable(t, k, msg)
		seen[v] = true

		if got := recoverPub(t, msg, r, s, v); !bytes.Equal(got, k.PubKeyCompressed()) {
			t.Fatalf("msg %d: recovered %x, want %x", i, got, k.PubKeyCompressed())
		}

		var rs, ss dsecp.ModNScalar
		if rs.SetBytes(&r) != 0 || ss.SetBytes(&s) != 0 || rs.IsZero() || ss.IsZero() {
			t.Fatalf("msg %d: r or s out of range", i)
		}
		if ss.IsOverHalfOrder() {
			t.Fatalf("msg %d: s is not low-S", i)
		}
		pub, err := dsecp.ParsePubKey(k.PubKeyCompressed())
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256(msg)
		if !ecdsa.NewSignature(&rs, &ss).Verify(digest[:], pub) {
			t.Fatalf("msg %d: signature does not verify", i)
		}

		r2, s2, v2 := signRecoverable(t, k, msg)
		if r2 != r || s2 != s || v2 != v {
			t.Fatalf("msg %d: signing twice gave different signatures", i)
		}
	}
	if !seen[0] || !seen[1] {
		t.Errorf("recovery ids seen: %v; over 64 messages both 0 and 1 are expected", seen)
	}
}

func TestKeyNeverPrintsPrivateKey(t *testing.T) {
	h := randomKeyHex(t)
	k, err := Load(writeKeyFile(t, h))
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, k)
		if strings.Contains(strings.ToLower(out), h) {
			t.Fatalf("%s prints the private key: %s", verb, out)
		}
		if !strings.Contains(out, hex.EncodeToString(k.PubKeyCompressed())) {
			t.Errorf("%s = %q, want the public key", verb, out)
		}
	}
}

// signRecoverable is what the SignerService does with a file key: sign
// SHA-256(msg) and normalise, finding v.
func signRecoverable(t *testing.T, k *Key, msg []byte) (r, s [32]byte, v byte) {
	t.Helper()
	digest := sha256.Sum256(msg)
	raw, err := k.SignDigest(context.Background(), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	low, v, err := Normalize(k.PubKey(), digest[:], raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(low, raw) {
		t.Fatalf("a file key's RFC 6979 signature was not low-S already")
	}
	copy(r[:], low[:32])
	copy(s[:], low[32:])
	return r, s, v
}
