// Command compose-init is the one-shot init service of deploy/compose: it
// writes the homes of the three kms-ha nodes and of the CometBFT validator
// into the compose project's volumes, with the same commands an operator
// runs by hand (README "Running a cluster"):
//
//	cometbft init                       the validator's home, genesis and key
//	kms-ha certs ca / certs issue       one cluster CA, a certificate per node
//	kms-ha init                         each node's kms.yaml and identity.json
//	kms-ha bootstrap                    node1 only: a one-node cluster that
//	                                    node2 and node3 join once started
//
// The images have no shell, hence a program. It runs once: a second run
// (`docker-compose up` again without `down`) finds its marker and exits 0.
// The consensus key moves from the validator's home to the signers' homes:
// from here on only the kms-ha cluster can sign for it.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	root := flag.String("root", "/compose", "directory holding the volumes: node1..3, cometbft, ca")
	prefix := flag.String("net", "172.28.15", "first three octets of the compose network: node i is PREFIX.1i, the validator PREFIX.20")
	chainID := flag.String("chain-id", "compose-chain", "chain id written into genesis.json and kms.yaml")
	flag.Parse()
	if err := run(*root, *prefix, *chainID); err != nil {
		fmt.Fprintln(os.Stderr, "compose-init:", err)
		os.Exit(1)
	}
}

const nodes = 3

func run(root, prefix, chainID string) error {
	marker := filepath.Join(root, "ca", ".initialized")
	if _, err := os.Stat(marker); err == nil {
		fmt.Println("compose-init: already initialised (docker-compose down -v, or make compose-down, starts over)")
		return nil
	}
	comet := filepath.Join(root, "cometbft")
	if err := cmd("cometbft", "init", "--home", comet); err != nil {
		return err
	}
	if err := setChainID(filepath.Join(comet, "config", "genesis.json"), chainID); err != nil {
		return err
	}
	keyPath := filepath.Join(comet, "config", "priv_validator_key.json")
	key, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}

	ca := filepath.Join(root, "ca", "ca")
	if err := cmd("kms-ha", "certs", "ca", "--out", ca, "--name", "kms-ha compose"); err != nil {
		return err
	}
	validator := fmt.Sprintf("tcp://%s.20:26659", prefix)
	for i := 1; i <= nodes; i++ {
		id := fmt.Sprintf("node%d", i)
		ip := fmt.Sprintf("%s.1%d", prefix, i)
		home := filepath.Join(root, id)
		if err := cmd("kms-ha", "init", "--home", home, "--node-id", id,
			"--raft-addr", ip+":7001", "--api-addr", ip+":7101"); err != nil {
			return err
		}
		if err := cmd("kms-ha", "certs", "issue", "--ca", ca, "--node-id", id, "--host", ip,
			"--out", filepath.Join(home, "tls")); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(home, "priv_validator_key.json"), key, 0o600); err != nil {
			return err
		}
		if err := editKMSYAML(filepath.Join(home, "kms.yaml"), chainID, validator); err != nil {
			return err
		}
	}
	if err := cmd("kms-ha", "bootstrap", "--home", filepath.Join(root, "node1")); err != nil {
		return err
	}
	// The validator signs through kms-ha only. (cometbft start writes a
	// throwaway key file of its own again; nothing uses it.)
	if err := os.Remove(keyPath); err != nil {
		return err
	}
	if err := os.WriteFile(marker, []byte(chainID+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Printf("compose-init: chain %s, validator %s, nodes %s.11-13 (node1 bootstrapped; node2 and node3 join when they start)\n",
		chainID, validator, prefix)
	return nil
}

func cmd(name string, args ...string) error {
	fmt.Println("+", name, strings.Join(args, " "))
	c := exec.Command(name, args...)
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, args[0], err)
	}
	return nil
}

// setChainID replaces the random chain id `cometbft init` wrote, so that
// kms.yaml and the docs can name the chain.
func setChainID(path, chainID string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var g map[string]any
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&g); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	g["chain_id"] = chainID
	out, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(out, '\n'), 0o600)
}

// editKMSYAML fills in the sections `kms-ha init` leaves empty, keeping
// its comments. Paths are relative to the home, which the node containers
// mount elsewhere than this one.
func editKMSYAML(path, chainID, validator string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(data)
	repl := []struct{ old, new string }{
		{"\nchains: []\n", fmt.Sprintf("\nchains:\n  - id: %s\n", chainID)},
		{"\nvalidators: []\n", fmt.Sprintf("\nvalidators:\n  - chain_id: %s\n    addr: %s\n    identity_key: identity.json\n", chainID, validator)},
		{"\nkeys: []\n", fmt.Sprintf("\nkeys:\n  - chain_ids: [%s]\n    backend: file\n    key_file: priv_validator_key.json\n", chainID)},
	}
	for _, r := range repl {
		if !strings.Contains(s, r.old) {
			return fmt.Errorf("%s: no %q line to fill in", path, strings.TrimSpace(r.old))
		}
		s = strings.Replace(s, r.old, r.new, 1)
	}
	// Reachable from the other containers for Prometheus; the image's
	// HEALTHCHECK asks 127.0.0.1:26661/readyz.
	s += "\nmetrics:\n  listen: 0.0.0.0:26661\n"
	return os.WriteFile(path, []byte(s), 0o600)
}
