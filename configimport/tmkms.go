package configimport

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// tmkmsConfig is the part of tmkms.toml the import reads (tmkms's
// src/config.rs: [[chain]], [[validator]], [providers]).
type tmkmsConfig struct {
	Chain []struct {
		ID        string `toml:"id"`
		StateFile string `toml:"state_file"`
		StateHook any    `toml:"state_hook"`
	} `toml:"chain"`
	Validator []struct {
		Addr            string `toml:"addr"`
		ChainID         string `toml:"chain_id"`
		Reconnect       *bool  `toml:"reconnect"`
		Timeout         any    `toml:"timeout"`
		SecretKey       string `toml:"secret_key"`
		MaxHeight       any    `toml:"max_height"`
		ProtocolVersion string `toml:"protocol_version"`
	} `toml:"validator"`
	Providers map[string][]map[string]any `toml:"providers"`
}

// TMKMS translates a tmkms.toml. source names the file in the output.
func TMKMS(data []byte, source string, opts Options) (*Result, error) {
	var top map[string]any
	if err := toml.Unmarshal(data, &top); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("configimport: %s is not a tmkms.toml: not TOML at line %d column %d: %w", source, row, col, err)
		}
		return nil, fmt.Errorf("configimport: %s is not a tmkms.toml: not TOML: %w", source, err)
	}
	var c tmkmsConfig
	if err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c); err != nil {
		return nil, fmt.Errorf("configimport: %s is not a tmkms.toml: %w", source, err)
	}
	if len(c.Chain) == 0 && len(c.Validator) == 0 && len(c.Providers) == 0 {
		return nil, fmt.Errorf("configimport: %s has no [[chain]], [[validator]] or [[providers.*]]: not a tmkms.toml", source)
	}
	r := &Result{From: "tmkms", Source: source}
	for _, k := range sortedKeys(top) {
		switch k {
		case "chain", "validator", "providers":
		case "tx_signer":
			r.refuse(k, "tmkms's transaction signer has no kms-ha counterpart: kms-ha signs consensus messages "+
				"(and cosmos/kms's SignerService), never transactions; keep a separate signer for it")
		default:
			r.refuse(k, "not a tmkms.toml section this import knows; nothing of it was translated")
		}
	}
	tmkmsChains(r, &c)
	tmkmsProviders(r, &c, opts)
	tmkmsValidators(r, &c, opts)
	for i, ch := range c.Chain {
		if !r.hasKey(ch.ID) && !r.refusedChain(ch.ID) {
			r.refuse(fmt.Sprintf("chain[%d]", i), "chain %s has no consensus key under [[providers.*]]; "+
				"add a keys entry for it by hand", ch.ID)
		}
	}
	return r, nil
}

func tmkmsChains(r *Result, c *tmkmsConfig) {
	for i, ch := range c.Chain {
		where := fmt.Sprintf("chain[%d]", i)
		if ch.ID == "" {
			r.refuse(where, "has no id")
			continue
		}
		r.File.Chains = append(r.File.Chains, Chain{ID: ch.ID})
		if ch.StateFile != "" {
			r.Next = append(r.Next, fmt.Sprintf("kms-ha state import --home ~/.kms-ha --chain %s --format tmkms %s", ch.ID, ch.StateFile))
		} else {
			r.note(where+".state_file", "not set: import the state tmkms kept for %s with `kms-ha state import --format tmkms` "+
				"before the validator connects", ch.ID)
		}
		if ch.StateHook != nil {
			r.note(where+".state_hook", "kms-ha runs no hook at start: the watermark lives in the cluster; import the "+
				"state file once instead")
		}
	}
}

func tmkmsValidators(r *Result, c *tmkmsConfig, opts Options) {
	for i, v := range c.Validator {
		where := fmt.Sprintf("validator[%d]", i)
		if !r.hasChain(v.ChainID) {
			r.refuse(where, "chain_id %q is not a [[chain]] id of this file", v.ChainID)
			continue
		}
		out := Validator{ChainID: v.ChainID, Addr: v.Addr}
		if !strings.HasPrefix(strings.ToLower(v.Addr), "unix://") {
			out.IdentityKey = opts.identityKey()
		}
		if v.Reconnect != nil && !*v.Reconnect {
			f := false
			out.Reconnect = &f
		}
		r.File.Validators = append(r.File.Validators, out)
		if v.SecretKey != "" {
			r.note(where+".secret_key", "%s is tmkms's SecretConnection identity (a base64 seed); kms-ha's identity_key "+
				"is a node_key.json, so %s (from kms-ha init) takes its place. A CometBFT validator does not pin its "+
				"signer's key, so nothing changes on the validator", v.SecretKey, out.IdentityKey)
		}
		if v.Timeout != nil {
			r.note(where+".timeout", "%v s: kms-ha's socket deadlines are its own and not configurable", v.Timeout)
		}
		if v.MaxHeight != nil {
			r.note(where+".max_height", "%v: kms-ha has no height at which it stops signing; halt the chain at that "+
				"height with the node's halt-height, or stop kms-ha", v.MaxHeight)
		}
		if v.ProtocolVersion != "" {
			r.note(where+".protocol_version", "%s: kms-ha has no such field; it speaks the protobuf privval "+
				"protocol (see the README, Transports, for the CometBFT versions)", v.ProtocolVersion)
		}
	}
}

// tmkmsProviders translates softsign consensus keys and refuses the rest.
func tmkmsProviders(r *Result, c *tmkmsConfig, opts Options) {
	for _, name := range sortedKeys(c.Providers) {
		for i, p := range c.Providers[name] {
			where := fmt.Sprintf("providers.%s[%d]", name, i)
			if name == "softsign" {
				softsign(r, where, p, opts)
				continue
			}
			chains := providerChains(p)
			r.refuseChains(where, chains, providerReason(name))
		}
	}
}

func softsign(r *Result, where string, p map[string]any, opts Options) {
	chains := strings.Split(stringsOf(p["chain_ids"]), ",")
	if chains[0] == "" {
		chains = nil
	}
	if kt, _ := p["key_type"].(string); kt == "account" {
		r.refuseChains(where, chains, "an account key (secp256k1) signs transactions for tmkms's tx_signer; kms-ha's "+
			"keys are consensus keys")
		return
	}
	path, _ := p["path"].(string)
	if path == "" {
		r.refuseChains(where, chains, "has no path (a nitro-enclave softsign key, encrypted_key_b64, cannot be used "+
			"outside its enclave); supply the key as a priv_validator_key.json")
		return
	}
	for _, ch := range chains {
		if !r.hasChain(ch) {
			r.refuse(where, "chain_ids names %q, which is not a [[chain]] id of this file", ch)
			return
		}
	}
	if len(chains) == 0 {
		r.refuse(where, "has no chain_ids")
		return
	}
	if !filepath.IsAbs(path) {
		r.note(where+".path", "%s is relative: kms-ha resolves it against --home, not tmkms's working directory; "+
			"make it absolute or copy the key there", path)
	}
	// Both key_format values load as key_file: "json" is a
	// priv_validator_key.json, "base64" (the default) the base64 of the
	// 32-byte seed.
	r.addKey(opts, where, Key{ChainIDs: chains, Backend: "file", KeyFile: path})
}

func providerReason(name string) string {
	switch name {
	case "yubihsm":
		return "the key lives inside a YubiHSM 2, reached through yubihsm-connector, which kms-ha does not speak; " +
			"use the priv_validator_key.json it was imported from (backend: file, or on a PKCS#11 token with " +
			"backend: pkcs11), or rotate to a new consensus key (docs/migration.md)"
	case "ledgertm":
		return "the key lives on a Ledger device, which kms-ha cannot drive (and a single device cannot serve " +
			"several nodes); rotate to a new consensus key held by every kms-ha node (docs/migration.md)"
	case "hashicorp":
		return "the key lives in HashiCorp Vault's transit engine, which kms-ha does not use; use the " +
			"priv_validator_key.json that `tmkms hashicorp upload` took, or rotate to a new consensus key (docs/migration.md)"
	case "fortanixdsm":
		return "the key lives in Fortanix DSM, which kms-ha does not use; use the original priv_validator_key.json " +
			"if you hold it, or rotate to a new consensus key (docs/migration.md)"
	default:
		return "a key provider this import does not know"
	}
}

// refuseChains refuses a provider entry, naming the chains it served.
func (r *Result) refuseChains(where string, chains []string, reason string) {
	if len(chains) > 0 {
		where += " (" + strings.Join(chains, ", ") + ")"
	}
	r.Refused = append(r.Refused, Item{where, reason})
}

// refusedChain reports whether a refused item already names chain.
func (r *Result) refusedChain(chain string) bool {
	for _, it := range r.Refused {
		if i := strings.Index(it.Where, " ("); i >= 0 {
			for _, c := range strings.Split(strings.TrimSuffix(it.Where[i+2:], ")"), ", ") {
				if c == chain {
					return true
				}
			}
		}
	}
	return false
}

// providerChains finds the chains of a provider entry: chain_ids at the
// top (softsign, ledgertm) or under keys (yubihsm, fortanixdsm:
// chain_ids; hashicorp: chain_id).
func providerChains(p map[string]any) []string {
	var out []string
	add := func(s string) {
		for _, c := range strings.Split(s, ",") {
			if c != "" {
				out = append(out, c)
			}
		}
	}
	add(stringsOf(p["chain_ids"]))
	if keys, ok := p["keys"].([]any); ok {
		for _, k := range keys {
			if m, ok := k.(map[string]any); ok {
				add(stringsOf(m["chain_ids"]))
				add(stringsOf(m["chain_id"]))
			}
		}
	}
	return out
}

// stringsOf joins a TOML string or array of strings with commas.
func stringsOf(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case []any:
		var s []string
		for _, e := range t {
			if str, ok := e.(string); ok {
				s = append(s, str)
			}
		}
		return strings.Join(s, ",")
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
