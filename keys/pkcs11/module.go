//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// module is a loaded PKCS#11 library. C_Initialize may run only once per
// process, so Keys on the same library share one.
type module struct {
	path  string
	ctx   *pkcs11.Ctx
	refs  int
	owned bool // we initialised it, so we finalise it
}

var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

func loadModule(path string) (*module, error) {
	key := path
	if strings.ContainsRune(path, filepath.Separator) {
		key = filepath.Clean(path)
		if _, err := os.Stat(key); err != nil {
			return nil, fmt.Errorf("keys/pkcs11: module: %w", err)
		}
	}
	modules.Lock()
	defer modules.Unlock()
	if m := modules.m[key]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(key)
	if ctx == nil {
		return nil, fmt.Errorf("keys/pkcs11: module %s cannot be loaded: not a PKCS#11 library, or one of its dependencies is missing", path)
	}
	m := &module{path: key, ctx: ctx, refs: 1, owned: true}
	if err := ctx.Initialize(); err != nil {
		// Another user in this process (a test helper, another library)
		// initialised it; share it and leave finalising to them.
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			ctx.Destroy()
			return nil, fmt.Errorf("keys/pkcs11: module %s: C_Initialize: %w", path, err)
		}
		m.owned = false
	}
	modules.m[key] = m
	return m, nil
}

func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.m, m.path)
	if m.owned {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
}
