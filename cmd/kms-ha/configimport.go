package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kms-ha/kms-ha/configimport"
	"github.com/kms-ha/kms-ha/keys/file"
)

// maxImportFile bounds the file config import reads: a tmkms.toml or a
// horcrux config.yaml is a few kilobytes.
const maxImportFile = 1 << 20

func configCmd() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "translate another signer's configuration into kms.yaml",
		Subcommands: []*cli.Command{{
			Name: "import",
			Usage: "print the kms.yaml sections (chains, validators, keys) of a tmkms.toml or a horcrux config.yaml; " +
				"exits 1 when an item could not be translated (listed, with the reason)",
			ArgsUsage: "FILE",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "from", Usage: "tmkms (tmkms.toml) or horcrux (its config.yaml)"},
				&cli.StringFlag{Name: "chain-id", Usage: "horcrux: the chain its chainNodes run (its config does not say)"},
				&cli.StringFlag{Name: "key-file", Usage: "horcrux: the whole consensus key, a priv_validator_key.json " +
					"(required in threshold mode: a shard is not a key)"},
				&cli.StringFlag{Name: "identity-key", Value: IdentityFile, Usage: "identity_key of every tcp:// validator entry"},
				&cli.StringFlag{Name: "out", Usage: "write to this new file instead of stdout (never overwrites)"},
			},
			Action: configImport,
		}},
	}
}

func configImport(c *cli.Context) error {
	const name = "kms-ha config import"
	if c.NArg() != 1 {
		return cli.Exit(name+": give the FILE to translate (see kms-ha config import --help)", 2)
	}
	src := c.Args().First()
	data, err := readSmall(src)
	if err != nil {
		return cli.Exit(fmt.Sprintf("%s: %v", name, err), 2)
	}
	opts := configimport.Options{IdentityKey: c.String("identity-key"), CheckKey: checkKeyFile}
	var r *configimport.Result
	switch from := c.String("from"); from {
	case "tmkms":
		if c.IsSet("chain-id") || c.IsSet("key-file") {
			return cli.Exit(name+": --chain-id and --key-file are for --from horcrux; tmkms.toml names its chains and keys", 2)
		}
		r, err = configimport.TMKMS(data, filepath.Base(src), opts)
	case "horcrux":
		if err := need(c, "chain-id"); err != nil {
			return err
		}
		r, err = importHorcrux(c, data, src, opts)
	default:
		return cli.Exit(fmt.Sprintf("%s: --from must be tmkms or horcrux, not %q", name, from), 2)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("%s: %v", name, err), 2)
	}
	out, err := r.YAML()
	if err != nil {
		return cli.Exit(fmt.Sprintf("%s: %v", name, err), 1)
	}
	if err := writeImport(c.String("out"), out); err != nil {
		return cli.Exit(fmt.Sprintf("%s: %v", name, err), 1)
	}
	return importSummary(c.App.ErrWriter, r, c.String("out"))
}

// importHorcrux: horcrux's home is the directory of its config.yaml, and
// a relative --key-file is made absolute (kms.yaml would resolve it
// against kms-ha's --home).
func importHorcrux(c *cli.Context, data []byte, src string, opts configimport.Options) (*configimport.Result, error) {
	abs, err := filepath.Abs(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	key := c.String("key-file")
	if key != "" {
		if key, err = filepath.Abs(key); err != nil {
			return nil, fmt.Errorf("--key-file: %w", err)
		}
	}
	r, err := configimport.Horcrux(data, filepath.Base(src), configimport.HorcruxOptions{Options: opts,
		ChainID: c.String("chain-id"), KeyFile: key, Home: filepath.Dir(abs)})
	if err != nil {
		return nil, fmt.Errorf("horcrux: %w", err)
	}
	return r, nil
}

// importSummary tells the operator, on stderr, where the output went and
// what it lacks; anything refused makes the exit status 1.
func importSummary(w io.Writer, r *configimport.Result, out string) error {
	if w == nil {
		w = os.Stderr
	}
	if out != "" {
		fmt.Fprintf(w, "wrote %s: %d chains, %d validators, %d keys from %s; %d settings left out (listed at its top)\n",
			out, len(r.File.Chains), len(r.File.Validators), len(r.File.Keys), r.Source, len(r.Notes))
	}
	if len(r.Refused) == 0 {
		return nil
	}
	lines := make([]string, 0, len(r.Refused)+1)
	lines = append(lines, fmt.Sprintf("kms-ha config import: %d items of %s not translated; supply them by hand:", len(r.Refused), r.Source))
	for _, it := range r.Refused {
		lines = append(lines, "  "+it.String())
	}
	return cli.Exit(strings.Join(lines, "\n"), 1)
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxImportFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxImportFile {
		return nil, fmt.Errorf("%s is over %d bytes: not a signer's configuration file", path, maxImportFile)
	}
	return data, nil
}

// writeImport prints to stdout, or creates out (never overwriting it).
func writeImport(out string, data []byte) error {
	if out == "" {
		_, err := os.Stdout.Write(data)
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite it", out)
		}
		return fmt.Errorf("create %s: %w", out, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// checkKeyFile refuses a key file present on this host that the file
// backend cannot load (a horcrux shard, a tmkms expanded key); a file that
// is not here (the import runs on another host) is left to kms-ha start.
func checkKeyFile(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	k, err := file.Open(path)
	if err != nil {
		return errors.Unwrap(err)
	}
	return k.Close()
}
