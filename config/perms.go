package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
)

// checkPrivateFile refuses a secret file (a consensus key, a PIN, a
// SecretConnection identity, a SignerService key) that any other account
// on the host may read or replace, as ssh refuses an open private key: a
// key another account can copy is a key that can double-sign from anywhere.
// A missing file passes here; the backend that reads it says what is
// missing, where it also says how to create it.
func checkPrivateFile(path string) error {
	if runtime.GOOS == "windows" {
		// Mode bits say nothing about access on Windows (ACLs do).
		return nil
	}
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is open to group or others (mode %04o): any account on this host could copy it; "+
			"run `chmod 600 %s`", path, perm, path)
	}
	return nil
}

// private reports a secret file that checkPrivateFile refuses under the
// field prefix.name, unless the entry's prefix.allow_open_permissions says
// that something else keeps other accounts out (e.g. a group that holds
// only the kms-ha service account).
func (c *Config) private(bad func(field, format string, args ...any), prefix, name, path string, allowOpen bool) {
	if path == "" || allowOpen {
		return
	}
	if err := checkPrivateFile(c.Path(path)); err != nil {
		bad(prefix+"."+name, "%v, or set %s.allow_open_permissions: true if another control keeps other accounts out", err, prefix)
	}
}
