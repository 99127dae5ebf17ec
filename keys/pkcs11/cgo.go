//go:build cgo

package pkcs11

// Available reports whether this binary can use PKCS#11 tokens: it was
// built with cgo, which loading a token's library (dlopen) needs.
const Available = true
