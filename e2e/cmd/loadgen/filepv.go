package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/privval"
)

// filePVCommand is the baseline signer, run as a child process so that its
// CPU and memory are measured as kms-ha's are: per chain, CometBFT's own
// FilePV (which writes and fsyncs priv_validator_state.json before every
// signature) behind CometBFT's own remote-signer loop, dialling the
// validator as kms-ha does. One process, one disk, no replication: the
// single-node remote signer design.
const filePVCommand = "filepv-signer"

// filePVKeys writes a fresh FilePV (key and state file) for a chain in
// dir and returns the key file, which kms-ha's file backend reads too.
func filePVKeys(dir, chainID string) (string, error) {
	d := filepath.Join(dir, chainID)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", err
	}
	key := filepath.Join(d, "priv_validator_key.json")
	privval.GenFilePV(key, filepath.Join(d, "priv_validator_state.json")).Save()
	return key, nil
}

// runFilePVSigner serves "chain=host:port" pairs from keys made by
// filePVKeys under -dir until SIGTERM or SIGKILL.
func runFilePVSigner(args []string) error {
	fs := flag.NewFlagSet(filePVCommand, flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the chains' FilePV files (from filePVKeys)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() == 0 {
		return fmt.Errorf("usage: loadgen %s -dir DIR chain=host:port ...", filePVCommand)
	}
	for _, a := range fs.Args() {
		chainID, addr, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want chain=host:port", a)
		}
		d := filepath.Join(*dir, chainID)
		pv := privval.LoadFilePV(filepath.Join(d, "priv_validator_key.json"), filepath.Join(d, "priv_validator_state.json"))
		ep := privval.NewSignerDialerEndpoint(cmtlog.NewNopLogger(),
			privval.DialTCPFn(addr, 5*time.Second, ed25519.GenPrivKey()),
			privval.SignerDialerEndpointConnRetries(600),
			privval.SignerDialerEndpointRetryWaitInterval(100*time.Millisecond))
		if err := privval.NewSignerServer(ep, chainID, pv).Start(); err != nil {
			return fmt.Errorf("start the signer of %s: %w", chainID, err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
