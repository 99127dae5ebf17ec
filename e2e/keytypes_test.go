//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestMLDSA65Chain: a real cometbft v0.40.0 one-validator chain whose
// genesis validator key is ML-DSA-65 (consensus params accept only
// ml_dsa_65), signed through a 3-node kms-ha cluster from a file key
// (keys[].algorithm: mldsa65), through a SIGKILL of the signing leader;
// every commit carries the validator's precommit, verified under its key.
func TestMLDSA65Chain(t *testing.T) {
	priv, err := mldsa65.GenPrivKey()
	if err != nil {
		t.Fatal(err)
	}
	runKeyTypeChain(t, "mldsa65", priv)
}

// TestSecp256k1EthChain is TestMLDSA65Chain for a secp256k1eth validator
// key: 65-byte r||s||v signatures over the Keccak-256 of the sign bytes.
func TestSecp256k1EthChain(t *testing.T) {
	runKeyTypeChain(t, "secp256k1eth", secp256k1eth.GenPrivKey())
}

func runKeyTypeChain(t *testing.T, algorithm string, priv crypto.PrivKey) {
	t.Helper()
	const (
		stall    = 20 * time.Second
		progress = 5
		maxLag   = 5
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{
		Nodes: 3,
		Comet: harness.CometOptions{ChainID: "keytype-" + algorithm},
		Setup: func(_ *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
			for i := range chains {
				chains[i].KeyYAML = fmt.Sprintf("    backend: file\n    algorithm: %s\n    key_file: %q\n", algorithm, chains[i].KeyFile)
			}
			return chains
		},
	})
	val, err := c.Comet.UseFileKeyOf(priv)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("genesis of %s names a %s validator (address %X, %d-byte public key); pub_key_types [%s]",
		c.Comet.ChainID, val.PubKey.Type(), val.Address, len(val.PubKey.Bytes()), val.PubKey.Type())
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()
	h, err := c.Comet.WaitHeight(ctx, 5, stall)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chain at height %d, signed with the %s key through the cluster", h, algorithm)
	latest, _ := failoverAndRejoin(ctx, t, c, stall, progress, maxLag)
	checkLineEnd(ctx, t, c, mon, latest, stall)
}
