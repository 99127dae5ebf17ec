package grpcapi

import (
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	cmtsecp "github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/privval"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// A SignerService key that is also a consensus key of the node is refused
// at start, whatever file it is read from: the service signs any payload
// with no watermark, so it could sign two conflicting votes.
func TestSignerServiceRefusesAConsensusKey(t *testing.T) {
	f := newSignerFixture(t)
	f.cfg.API = APIReleased
	f.cfg.Keys = fileVectorKeys(t, f.dir)
	edPub := mustHex(t, vecEdPub)
	priv := dsecp.PrivKeyFromBytes(mustHex(t, vecSecpPriv))
	secpPub := priv.PubKey().SerializeCompressed()
	for name, consensus := range map[string][]byte{"ed25519": edPub, "secp256k1eth": secpPub} {
		t.Run(name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg := f.cfg
			cfg.Listen = ln.Addr().String()
			ln.Close()
			cfg.ConsensusKeys = [][]byte{{1, 2, 3}, consensus}
			l, err := StartSignerService(cfg, slog.New(slog.DiscardHandler))
			if !errors.Is(err, ErrConsensusKey) {
				if l != nil {
					l.Stop()
				}
				t.Fatalf("start with a consensus key among the SignerService keys: err = %v, want ErrConsensusKey", err)
			}
			// Nothing listens: a client cannot reach a half-started service.
			if c, err := net.Dial("tcp", cfg.Listen); err == nil {
				c.Close()
				t.Fatalf("%s still accepts connections after the refusal", cfg.Listen)
			}
		})
	}
	// Other consensus keys do not stop the service.
	cfg := f.cfg
	cfg.ConsensusKeys = [][]byte{make([]byte, 32), make([]byte, 33)}
	l, err := StartSignerService(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("start with unrelated consensus keys: %v", err)
	}
	l.Stop()
}

// An ed25519 entry that reads a key file of another type is refused at
// start, not served under the wrong scheme.
func TestSignerServiceEd25519EntryRefusesAnotherKeyType(t *testing.T) {
	f := newSignerFixture(t)
	f.cfg.API = APIReleased
	dir := t.TempDir()
	keyPath, statePath := filepath.Join(dir, "key.json"), filepath.Join(dir, "state.json")
	privval.NewFilePV(cmtsecp.GenPrivKey(), keyPath, statePath).Save()
	f.cfg.Keys = []SignerKey{{ID: "ed", Backend: BackendFile, Algorithm: AlgoEd25519, KeyFile: keyPath}}
	l, err := StartSignerService(f.cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		l.Stop()
		t.Fatal("an ed25519 entry served a secp256k1 key file")
	}
	if !strings.Contains(err.Error(), "the key is secp256k1") {
		t.Fatalf("error does not name the key's type: %v", err)
	}
}
