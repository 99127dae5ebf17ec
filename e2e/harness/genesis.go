package harness

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	"github.com/cometbft/cometbft/privval"
	"github.com/cometbft/cometbft/types"
)

// ValidatorAddress is CometBFT's address of an Ed25519 validator key: the
// first 20 bytes of SHA-256 of the 32-byte public key. Computed here rather
// than with PubKey.Address so that the test states the rule it relies on.
func ValidatorAddress(pub []byte) crypto.Address {
	sum := sha256.Sum256(pub)
	return crypto.Address(sum[:20])
}

// UseValidatorKey makes pub, a key that lives outside this node (in an HSM
// or a KMS, say), the chain's only validator: it rewrites the validator of
// genesis.json (pub_key value and address), and replaces the node's
// priv_validator_key.json with a decoy key of its own, so that nothing on
// the node's disk can sign for the validator. KeyFile is cleared, since the
// node no longer has the validator's key file; the decoy's public half is
// returned so a test can show it is not the validator. Call it after New,
// before Start.
func (n *CometNode) UseValidatorKey(pub crypto.PubKey) (validator, decoy ValidatorKey, err error) {
	ed, ok := pub.(ed25519.PubKey)
	if !ok || len(ed) != ed25519.PubKeySize {
		return validator, decoy, fmt.Errorf("UseValidatorKey: %T is not a %d-byte Ed25519 public key", pub, ed25519.PubKeySize)
	}
	validator = ValidatorKey{Address: ValidatorAddress(ed), PubKey: ed}
	if !bytes.Equal(validator.Address, ed.Address()) {
		return validator, decoy, fmt.Errorf("UseValidatorKey: address %X differs from CometBFT's %X", validator.Address, ed.Address())
	}
	genPath := filepath.Join(n.Home, "config", "genesis.json")
	if err := setGenesisValidator(genPath, validator); err != nil {
		return validator, decoy, err
	}
	keyFile := filepath.Join(n.Home, "config", "priv_validator_key.json")
	stateFile := filepath.Join(n.Home, "data", "priv_validator_state.json")
	if decoy, err = WriteFileKey(keyFile, stateFile); err != nil {
		return validator, decoy, err
	}
	if bytes.Equal(decoy.Address, validator.Address) {
		return validator, decoy, fmt.Errorf("UseValidatorKey: the decoy key is the validator key")
	}
	n.KeyFile = ""
	return validator, decoy, nil
}

// WriteFileKey writes a new random Ed25519 key in CometBFT's
// priv_validator_key.json format to keyFile (and an empty sign state to
// stateFile, which may be "" for a scratch file next to keyFile) and
// returns its public half.
func WriteFileKey(keyFile, stateFile string) (ValidatorKey, error) {
	if stateFile == "" {
		stateFile = strings.TrimSuffix(keyFile, ".json") + "_state.json"
	}
	for _, p := range []string{keyFile, stateFile} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return ValidatorKey{}, err
		}
	}
	// FilePV.Save panics on a write error; nothing here should fail, but a
	// test deserves an error rather than a crash.
	var err error
	pv := privval.GenFilePV(keyFile, stateFile)
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("write %s: %v", keyFile, r)
			}
		}()
		pv.Save()
	}()
	if err != nil {
		return ValidatorKey{}, err
	}
	return LoadValidatorKey(keyFile)
}

// setGenesisValidator replaces the address and public key of the single
// validator that `cometbft init` wrote. Like setGenesisChainID it edits the
// text, so every other field keeps cometbft's encoding; the result is then
// parsed with CometBFT's own genesis loader, which checks that the address
// belongs to the key.
func setGenesisValidator(path string, v ValidatorKey) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	doc, err := types.GenesisDocFromJSON(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Validators) != 1 {
		return fmt.Errorf("%s: %d validators, want the single one of `cometbft init`", path, len(doc.Validators))
	}
	old := doc.Validators[0]
	replace := func(data []byte, from, to string) ([]byte, error) {
		if c := bytes.Count(data, []byte(from)); c != 1 {
			return nil, fmt.Errorf("%s: %q occurs %d times, want once", path, from, c)
		}
		return bytes.Replace(data, []byte(from), []byte(to), 1), nil
	}
	out, err := replace(data,
		fmt.Sprintf("%q", old.Address.String()),
		fmt.Sprintf("\"%X\"", []byte(v.Address)))
	if err != nil {
		return err
	}
	if out, err = replace(out,
		fmt.Sprintf("%q", base64.StdEncoding.EncodeToString(old.PubKey.Bytes())),
		fmt.Sprintf("%q", base64.StdEncoding.EncodeToString(v.PubKey.Bytes()))); err != nil {
		return err
	}
	check, err := types.GenesisDocFromJSON(out)
	if err != nil {
		return fmt.Errorf("%s after naming validator %X: %w", path, v.Address, err)
	}
	if got := check.Validators[0]; !bytes.Equal(got.Address, v.Address) || !got.PubKey.Equals(v.PubKey) {
		return fmt.Errorf("%s: validator is %X after the rewrite, want %X", path, got.Address, v.Address)
	}
	return os.WriteFile(path, out, 0o644)
}

// UseFileKeyOf replaces the chain's validator key with priv, of any type
// CometBFT v0.40 accepts (ed25519, secp256k1, secp256k1eth, ml_dsa_65):
// it writes priv as the node's priv_validator_key.json (KeyFile, the file
// kms-ha is given), names it the genesis validator, and sets
// consensus_params.validator.pub_key_types to its type, so that the chain
// accepts only that kind of validator key. Call it after New, before
// Start.
func (n *CometNode) UseFileKeyOf(priv crypto.PrivKey) (ValidatorKey, error) {
	stateFile := filepath.Join(n.Home, "data", "priv_validator_state.json")
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("write %s: %v", n.KeyFile, r)
			}
		}()
		privval.NewFilePV(priv, n.KeyFile, stateFile).Save()
	}()
	if err != nil {
		return ValidatorKey{}, err
	}
	v, err := LoadValidatorKey(n.KeyFile)
	if err != nil {
		return v, err
	}
	return v, n.nameValidator(v)
}

// UseValidatorPubKey makes pub, a key of any type CometBFT v0.40 accepts
// that lives outside this node (in an HSM, say), the chain's only
// validator, as UseFileKeyOf does for a key file, and replaces the node's
// priv_validator_key.json with a decoy Ed25519 key, so that nothing on the
// node's disk can sign for the validator. KeyFile is cleared. Call it after
// New, before Start.
func (n *CometNode) UseValidatorPubKey(pub crypto.PubKey) (ValidatorKey, error) {
	v := ValidatorKey{Address: pub.Address(), PubKey: pub}
	if err := n.nameValidator(v); err != nil {
		return v, err
	}
	keyFile := filepath.Join(n.Home, "config", "priv_validator_key.json")
	stateFile := filepath.Join(n.Home, "data", "priv_validator_state.json")
	if _, err := WriteFileKey(keyFile, stateFile); err != nil {
		return v, err
	}
	n.KeyFile = ""
	return v, nil
}

// nameValidator makes v the single genesis validator and the only key type
// consensus_params.validator.pub_key_types allows, and checks the result
// with CometBFT's genesis loader.
func (n *CometNode) nameValidator(v ValidatorKey) error {
	pubJSON, err := cmtjson.Marshal(v.PubKey)
	if err != nil {
		return err
	}
	err = editGenesis(n.GenesisPath(), func(g map[string]any) error {
		vals, ok := g["validators"].([]any)
		if !ok || len(vals) != 1 {
			return fmt.Errorf("want the single validator of `cometbft init`, got %v", g["validators"])
		}
		val := vals[0].(map[string]any)
		val["address"] = fmt.Sprintf("%X", []byte(v.Address))
		val["pub_key"] = json.RawMessage(pubJSON)
		cp, ok := g["consensus_params"].(map[string]any)
		if !ok {
			return errors.New("no consensus_params")
		}
		vp, ok := cp["validator"].(map[string]any)
		if !ok {
			return errors.New("no consensus_params.validator")
		}
		vp["pub_key_types"] = []string{v.PubKey.Type()}
		return nil
	})
	if err != nil {
		return err
	}
	doc, err := types.GenesisDocFromFile(n.GenesisPath())
	if err != nil {
		return fmt.Errorf("genesis after naming a %s validator: %w", v.PubKey.Type(), err)
	}
	if got := doc.Validators[0]; !got.PubKey.Equals(v.PubKey) || !bytes.Equal(got.Address, v.Address) {
		return fmt.Errorf("genesis validator is %X after the rewrite, want %X", got.Address, v.Address)
	}
	return nil
}
