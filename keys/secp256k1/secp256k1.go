// Package secp256k1 is the SignerService's file key for secp256k1: a
// private key read from a file of hex and held in memory, which signs
// digests with ECDSA (RFC 6979 nonces, low-S); and the ECDSA helpers every
// secp256k1 backend shares: normalising a token's or KMS's signature to
// low-S with its recovery id, and decoding DER signatures and public keys.
//
// It is not a consensus key (CometBFT validators sign with Ed25519) and so
// does not implement keys.Signer.
package secp256k1

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
)

const (
	// PrivKeySize is the length of a raw private key scalar.
	PrivKeySize = 32
	// PubKeySize is the length of a SEC1 compressed public key.
	PubKeySize = 33
)

// Key is an in-memory secp256k1 private key. It is safe for concurrent use.
// Its String and GoString methods never reveal the private key.
type Key struct {
	priv *dsecp.PrivateKey
	pub  [PubKeySize]byte
}

// Load reads path, a file holding the hex of a 32-byte private key
// (surrounding whitespace and a leading "0x" are ignored). Errors name the
// file and the problem but never include key material.
func Load(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys/secp256k1: read key file: %w", err)
	}
	defer clear(data)
	raw, err := decodeHex(data)
	if err != nil {
		return nil, fmt.Errorf("keys/secp256k1: key file %s: %w", path, err)
	}
	defer clear(raw)
	k, err := FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("keys/secp256k1: key file %s: %w", path, err)
	}
	return k, nil
}

// FromBytes builds a key from a raw 32-byte big-endian scalar, which must be
// in [1, N-1] where N is the order of the group. b is not retained.
func FromBytes(b []byte) (*Key, error) {
	if len(b) != PrivKeySize {
		return nil, fmt.Errorf("private key is %d bytes, want %d (%d hex characters)",
			len(b), PrivKeySize, 2*PrivKeySize)
	}
	var buf [PrivKeySize]byte
	copy(buf[:], b)
	defer clear(buf[:])
	var scalar dsecp.ModNScalar
	overflow := scalar.SetBytes(&buf)
	if overflow != 0 {
		scalar.Zero()
		return nil, errors.New("private key is not a valid secp256k1 scalar: it is not below the group order")
	}
	if scalar.IsZero() {
		return nil, errors.New("private key is not a valid secp256k1 scalar: it is zero")
	}
	k := &Key{priv: dsecp.NewPrivateKey(&scalar)}
	copy(k.pub[:], k.priv.PubKey().SerializeCompressed())
	return k, nil
}

// decodeHex decodes trimmed hex without echoing any of it in errors (the
// standard library's error quotes the offending character).
func decodeHex(data []byte) ([]byte, error) {
	s := bytes.TrimSpace(data)
	if len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		s = s[2:]
	}
	if len(s) == 0 {
		return nil, errors.New("file is empty; want the hex of a 32-byte secp256k1 private key")
	}
	for i, c := range s {
		if fromHexChar(c) < 0 {
			return nil, fmt.Errorf("not hex: invalid character at offset %d; want the hex of a 32-byte secp256k1 private key", i)
		}
	}
	if len(s) != 2*PrivKeySize {
		return nil, fmt.Errorf("holds %d hex characters, want %d (a 32-byte secp256k1 private key)", len(s), 2*PrivKeySize)
	}
	out := make([]byte, len(s)/2)
	for i := range out {
		out[i] = byte(fromHexChar(s[2*i])<<4 | fromHexChar(s[2*i+1]))
	}
	return out, nil
}

func fromHexChar(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// PubKeyCompressed returns the 33-byte SEC1 compressed public key.
func (k *Key) PubKeyCompressed() []byte {
	out := make([]byte, PubKeySize)
	copy(out, k.pub[:])
	return out
}

// String identifies the key by its public key only.
func (k *Key) String() string {
	if k == nil {
		return "secp256k1.Key(nil)"
	}
	return fmt.Sprintf("secp256k1.Key(pub=%x)", k.pub[:])
}

// GoString keeps %#v from printing the private key.
func (k *Key) GoString() string { return k.String() }

// Zero overwrites the private key in memory. The key must not be used
// afterwards.
func (k *Key) Zero() {
	if k != nil && k.priv != nil {
		k.priv.Zero()
	}
}
