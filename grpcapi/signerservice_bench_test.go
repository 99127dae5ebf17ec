//go:build cgo

package grpcapi

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/kms-ha/kms-ha/grpcapi/signerservicepb"
)

// BenchmarkSignerServiceSign measures one Sign of the released contract
// over gRPC with TLS on loopback, per backend and scheme: a file key in
// memory, a SoftHSM2 token, and the local KMS endpoint through the real AWS
// SDK (an HTTP round trip on loopback: a real KMS adds the network's).
func BenchmarkSignerServiceSign(b *testing.B) {
	keys := append(fileVectorKeys(b, b.TempDir()), pkcs11Keys(b, "grpcapi-bench")...)
	keys = append(keys, awskmsKeys(b)[:3]...)
	c, _ := releasedFixture(b, keys...)
	digest := sha256.Sum256([]byte("bench"))
	for _, k := range []struct{ name, id string }{
		{"file/secp256k1eth", "eth"}, {"file/ed25519", "ed"},
		{"pkcs11/secp256k1eth", "hsm-eth"}, {"pkcs11/ed25519", "hsm-ed"},
		{"awskms/secp256k1eth", "kms-eth"}, {"awskms/secp256k1", "kms-secp"}, {"awskms/ed25519", "kms-ed"},
	} {
		b.Run(k.name, func(b *testing.B) {
			req := &signerservicepb.SignRequest{KeyId: k.id, Payload: generic(digest[:])}
			for b.Loop() {
				if _, err := c.Sign(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
