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
	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
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
	runKeyTypeChain(t, fileKeyChain("mldsa65", priv))
}

// TestSecp256k1EthChain is TestMLDSA65Chain for a secp256k1eth validator
// key: 65-byte r||s||v signatures over the Keccak-256 of the sign bytes.
func TestSecp256k1EthChain(t *testing.T) {
	runKeyTypeChain(t, fileKeyChain("secp256k1eth", secp256k1eth.GenPrivKey()))
}

// TestPKCS11Secp256k1EthChain is TestSecp256k1EthChain with the key
// generated on a SoftHSM2 token: CKM_ECDSA draws a random nonce, so every
// signature is recorded through raft before it is released, and the chain
// goes on through the failover all the same.
func TestPKCS11Secp256k1EthChain(t *testing.T) {
	const tokenLabel, keyLabel, pinEnv = "kms-ha-e2e-secp", "validator", "KMSHA_E2E_SECP_PIN"
	pin := "hsm-pin-" + randomHex(t, 12)
	module, hsmEnv := pkcs11test.NewToken(t, tokenLabel, pin)
	pub := secp256k1eth.PubKey(pkcs11test.GenerateSecp256k1Consensus(t, module, tokenLabel, pin, keyLabel, nil))
	runKeyTypeChain(t, keyTypeChain{
		algorithm: "secp256k1eth",
		env:       append(append([]string(nil), hsmEnv...), pinEnv+"="+pin),
		keyYAML: func(harness.ChainConfig) string {
			return fmt.Sprintf("    backend: pkcs11\n    algorithm: secp256k1eth\n    module: %s\n    token_label: %s\n    key_label: %s\n    pin_env: %s\n",
				module, tokenLabel, keyLabel, pinEnv)
		},
		useKey: func(n *harness.CometNode) (harness.ValidatorKey, error) { return n.UseValidatorPubKey(pub) },
	})
}

// keyTypeChain is one key type's chain: the kms.yaml keys entry, the
// environment kms-ha needs for it, and how the chain's genesis gets it.
type keyTypeChain struct {
	algorithm string
	env       []string
	keyYAML   func(harness.ChainConfig) string
	useKey    func(*harness.CometNode) (harness.ValidatorKey, error)
}

func fileKeyChain(algorithm string, priv crypto.PrivKey) keyTypeChain {
	return keyTypeChain{
		algorithm: algorithm,
		keyYAML: func(c harness.ChainConfig) string {
			return fmt.Sprintf("    backend: file\n    algorithm: %s\n    key_file: %q\n", algorithm, c.KeyFile)
		},
		useKey: func(n *harness.CometNode) (harness.ValidatorKey, error) { return n.UseFileKeyOf(priv) },
	}
}

func runKeyTypeChain(t *testing.T, kc keyTypeChain) {
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
		Comet: harness.CometOptions{ChainID: "keytype-" + kc.algorithm},
		Setup: func(n *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
			if kc.env != nil {
				n.Proc.Env = append([]string(nil), kc.env...)
			}
			for i := range chains {
				chains[i].KeyYAML = kc.keyYAML(chains[i])
			}
			return chains
		},
	})
	val, err := kc.useKey(c.Comet)
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
	t.Logf("chain at height %d, signed with the %s key through the cluster", h, kc.algorithm)
	latest, _ := failoverAndRejoin(ctx, t, c, stall, progress, maxLag)

	if gap, after := mon.MaxGap(); gap > stall {
		t.Errorf("chain stalled for %s after height %d", gap.Round(time.Millisecond), after)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkPrecommitsLogged(t, scan, c.Comet.ChainID, latest, 1)
	rep, err := c.Comet.CheckCommits(ctx, val, 1, latest-1, scan.Signed)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	if want := int(rep.To - rep.From + 1); rep.Present != want {
		t.Errorf("validator precommit verified in %d of %d commits", rep.Present, want)
	}
	t.Logf("chain %s: the %s validator's precommit is present and verifies in %d of %d commits (heights %d..%d), each in the audit log",
		c.Comet.ChainID, kc.algorithm, rep.Present, rep.To-rep.From+1, rep.From, rep.To)
	checkNoConsensusFailure(t, c.Comet)
}
