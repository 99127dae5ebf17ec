// Package configimport translates the configuration of the signer kms-ha
// replaces, tmkms's tmkms.toml or horcrux's config.yaml, into the kms.yaml
// sections kms-ha shares with cosmos/kms (chains, validators, keys, and
// metrics). It does no I/O: the caller reads the file and prints the
// result.
//
// What has no kms-ha counterpart is never guessed at. An item the signer
// needs and the import cannot produce (a key inside an HSM, a horcrux key
// shard) is Refused; a setting kms-ha does differently (timeouts, the
// tmkms identity key) is a Note. Both name the item in the source file and
// say why, and what to do instead.
package configimport

import (
	"bytes"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is the translated part of a kms.yaml. The field names and meanings
// are config's; these types only leave out what the import never sets, so
// the output carries no empty fields.
type File struct {
	Chains     []Chain     `yaml:"chains"`
	Validators []Validator `yaml:"validators,omitempty"`
	Keys       []Key       `yaml:"keys,omitempty"`
	Metrics    *Metrics    `yaml:"metrics,omitempty"`
}

// Chain is a chains entry.
type Chain struct {
	ID string `yaml:"id"`
}

// Validator is a validators entry.
type Validator struct {
	ChainID     string `yaml:"chain_id"`
	Addr        string `yaml:"addr"`
	IdentityKey string `yaml:"identity_key,omitempty"`
	// Reconnect is set only to false: true is the default.
	Reconnect *bool `yaml:"reconnect,omitempty"`
}

// Key is a keys entry of the file backend.
type Key struct {
	ChainIDs []string `yaml:"chain_ids,flow"`
	Backend  string   `yaml:"backend"`
	KeyFile  string   `yaml:"key_file"`
}

// Metrics is the metrics section.
type Metrics struct {
	Listen string `yaml:"listen"`
}

// Item is one entry or setting of the source file the import did not
// carry over as it was, and why.
type Item struct {
	// Where names it as the source file does, e.g. providers.yubihsm[0]
	// or validator[1].timeout.
	Where  string
	Reason string
}

func (i Item) String() string { return i.Where + ": " + i.Reason }

// Result is a translation.
type Result struct {
	// From is the program the source file belongs to ("tmkms", "horcrux")
	// and Source the file's name, for the output's header.
	From, Source string
	File         File
	// Refused are items the output lacks: it does not load until the
	// operator supplies them.
	Refused []Item
	// Notes are settings left out because kms-ha does that differently.
	Notes []Item
	// Next are the commands that import each chain's signing state, to
	// run once the old signer is stopped for good.
	Next []string
}

// Options are the choices the source file does not make.
type Options struct {
	// IdentityKey is the identity_key of every tcp:// and noise://
	// validator entry; default "identity.json", the one `kms-ha init`
	// writes.
	IdentityKey string
	// CheckKey, if set, is called with each key_file the output names and
	// returns why that file is not a usable key (nil: usable, or not on
	// this host). A non-nil answer refuses the key.
	CheckKey func(path string) error
}

func (o Options) identityKey() string {
	if o.IdentityKey == "" {
		return "identity.json"
	}
	return o.IdentityKey
}

func (r *Result) refuse(where, format string, args ...any) {
	r.Refused = append(r.Refused, Item{where, fmt.Sprintf(format, args...)})
}

func (r *Result) note(where, format string, args ...any) {
	r.Notes = append(r.Notes, Item{where, fmt.Sprintf(format, args...)})
}

// addKey appends a file key after asking opts.CheckKey about it.
func (r *Result) addKey(opts Options, where string, k Key) {
	if opts.CheckKey != nil {
		if err := opts.CheckKey(k.KeyFile); err != nil {
			r.refuseChains(where, k.ChainIDs, fmt.Sprintf("%s cannot be used as key_file: %v", k.KeyFile, err))
			return
		}
	}
	r.File.Keys = append(r.File.Keys, k)
}

// hasKey reports whether a translated key serves chain.
func (r *Result) hasKey(chain string) bool {
	for _, k := range r.File.Keys {
		for _, c := range k.ChainIDs {
			if c == chain {
				return true
			}
		}
	}
	return false
}

func (r *Result) hasChain(id string) bool {
	for _, c := range r.File.Chains {
		if c.ID == id {
			return true
		}
	}
	return false
}

// YAML is the result as a kms.yaml fragment: a comment header that lists
// what was refused and left out and the state import commands, then the
// sections.
func (r *Result) YAML() ([]byte, error) {
	var out bytes.Buffer
	fmt.Fprintf(&out, "# kms.yaml sections translated from %s (kms-ha config import --from %s).\n", r.Source, r.From)
	out.WriteString("# Add this node's cluster block (kms-ha init writes one) before starting it.\n")
	writeItems(&out, "NOT TRANSLATED: supply these by hand; until then this file does not load:", r.Refused)
	writeItems(&out, "Left out (kms-ha does these differently):", r.Notes)
	if len(r.Next) > 0 {
		fmt.Fprintf(&out, "#\n# Once %s is stopped for good, and before the validator connects to kms-ha:\n", r.From)
		for _, c := range r.Next {
			out.WriteString("#   " + c + "\n")
		}
		out.WriteString("# and check that each watermark is at or above the chain's last height\n" +
			"# this validator signed (docs/migration.md, \"Check the watermark\").\n")
	}
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(r.File); err != nil {
		return nil, fmt.Errorf("configimport: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("configimport: encode: %w", err)
	}
	return out.Bytes(), nil
}

func writeItems(out *bytes.Buffer, title string, items []Item) {
	if len(items) == 0 {
		return
	}
	out.WriteString("#\n# " + title + "\n")
	for _, it := range merged(items) {
		for i, line := range wrap(it.String(), 88) {
			prefix := "#   - "
			if i > 0 {
				prefix = "#     "
			}
			out.WriteString(prefix + line + "\n")
		}
	}
}

// merged lists items with the same reason once, naming every place (the
// same secret_key on every validator entry, say).
func merged(items []Item) []Item {
	var out []Item
	at := map[string]int{}
	for _, it := range items {
		if i, ok := at[it.Reason]; ok {
			out[i].Where += ", " + it.Where
			continue
		}
		at[it.Reason] = len(out)
		out = append(out, it)
	}
	return out
}

// wrap breaks s into lines of at most width characters at spaces (a word
// longer than width gets a line of its own).
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) > width:
			lines = append(lines, line)
			line = w
		default:
			line += " " + w
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
