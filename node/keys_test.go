package node

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	"github.com/cometbft/cometbft/privval"

	"github.com/kms-ha/kms-ha/config"
)

// A key file of one type under an entry of another algorithm stops the
// node at start, naming both and the fix; the right algorithm opens it.
func TestOpenKeyChecksTheAlgorithm(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "priv_validator_key.json")
	privval.NewFilePV(secp256k1eth.GenPrivKey(), path, filepath.Join(dir, "state.json")).Key.Save()
	quiet := slog.New(slog.DiscardHandler)
	_, err := OpenKey(context.Background(), config.Key{Backend: config.BackendFile, Algorithm: "ed25519", KeyFile: path}, quiet)
	if err == nil || !strings.Contains(err.Error(), "the key is secp256k1eth but keys[].algorithm is ed25519: set algorithm: secp256k1eth") {
		t.Fatalf("got %v", err)
	}
	k, err := OpenKey(context.Background(), config.Key{Backend: config.BackendFile, Algorithm: "secp256k1eth", KeyFile: path}, quiet)
	if err != nil || k.PubKey().Type() != secp256k1eth.KeyType {
		t.Fatalf("secp256k1eth: %v", err)
	}
}
