package main

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kms-ha/kms-ha/config"
)

// checkClusterAddr refuses a --cluster without a port: gRPC would dial
// port 443 and report a timeout or a handshake failure.
func checkClusterAddr(c *cli.Context) error {
	addr := c.String("cluster")
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host != "" {
		if _, perr := strconv.ParseUint(port, 10, 16); perr == nil {
			return nil
		}
	}
	if err != nil {
		host = strings.Trim(strings.TrimSuffix(addr, ":"), "[]")
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return cli.Exit(fmt.Sprintf("%s: --cluster %q is not HOST:PORT: give a member's cluster API address "+
		"(cluster.api_addr in its kms.yaml, default port 7101), e.g. %s", c.Command.HelpName, addr, net.JoinHostPort(host, "7101")), 2)
}

// The two ways a chain gets its first watermark, as the hints say them.
const (
	fixImport = "import one with `kms-ha state import --chain %s FILE` (the validator's priv_validator_state.json, " +
		"or a tmkms/horcrux state file)"
	fixFresh = "start a node with --allow-fresh-state %s (only for a key that has never signed)"
)

// configuredChains returns the chain ids of --home's kms.yaml, or nil
// without --home or when it does not load (the caller then says what it
// knows without them).
func configuredChains(c *cli.Context) []string {
	if c.String("home") == "" {
		return nil
	}
	cfg, err := config.Load(c.String("home"))
	if err != nil {
		return nil
	}
	ids := make([]string, 0, len(cfg.Chains))
	for _, ch := range cfg.Chains {
		ids = append(ids, ch.ID)
	}
	return ids
}

// printMissingWatermarks names each configured chain that has no
// watermark, with both fixes: the signer refuses every request of such a
// chain. Without the configuration (no --home) and with no watermark at
// all, it gives the fixes for a chain it cannot name.
func printMissingWatermarks(w io.Writer, configured []string, have []watermarkOut, home string) {
	var missing []string
	for _, id := range configured {
		if !slices.ContainsFunc(have, func(wm watermarkOut) bool { return wm.ChainID == id }) {
			missing = append(missing, id)
		}
	}
	for _, id := range missing {
		fmt.Fprintf(w, "chain %s (in %s) has no watermark: the signer refuses its requests until you "+fixImport+", or "+fixFresh+"\n",
			id, filepath.Join(home, config.FileName), id, id)
	}
	if configured == nil && len(have) == 0 {
		fmt.Fprintf(w, "the signer refuses a chain's requests until it has a watermark: "+fixImport+", or "+fixFresh+
			" (with --home, the chains kms.yaml configures are named)\n", "CHAIN", "CHAIN")
	}
}

// noWatermarkFor explains a --chain that has no watermark, naming the
// chains that have one (a typo in a chain id shows at once).
func noWatermarkFor(chain string, have []watermarkOut) string {
	ids := make([]string, 0, len(have))
	for _, w := range have {
		ids = append(ids, w.ChainID)
	}
	held := "no chain has one yet"
	if len(ids) > 0 {
		held = "chains with one: " + strings.Join(ids, ", ")
	}
	return fmt.Sprintf("the cluster holds no watermark for chain %s (%s); "+fixImport+", or "+fixFresh, chain, held, chain, chain)
}
