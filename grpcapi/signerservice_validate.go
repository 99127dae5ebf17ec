package grpcapi

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/kms-ha/kms-ha/internal/fielderr"
)

// Validate checks the configuration without touching the files or the
// key backends. It reports every problem at once; each is a
// *fielderr.Error naming the field of kms.yaml's grpc block, so that config
// reports it as grpc.<field>. One function per concern.
func (c SignerServiceConfig) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fielderr.New("signer service", field, format, args...))
	}
	c.validateListen(bad)
	c.validateAPI(bad)
	c.validateTransport(bad)
	if len(c.Keys) == 0 {
		bad("keys", "is empty: add at least one key (id, backend, algorithm and the backend's fields) or remove the grpc block")
	}
	seen := make(map[string]bool, len(c.Keys))
	for i, k := range c.Keys {
		p := fmt.Sprintf("keys[%d]", i)
		if k.ID == "" {
			bad(p+".id", "is required")
		} else if seen[k.ID] {
			bad(p+".id", "%q is used twice", k.ID)
		}
		seen[k.ID] = true
		errs = append(errs, prefixed(p, validateSignerKey(k, c.API))...)
	}
	return errors.Join(errs...)
}

type badFunc func(field, format string, args ...any)

func (c SignerServiceConfig) validateListen(bad badFunc) {
	switch _, _, err := net.SplitHostPort(c.Listen); {
	case c.Listen == "":
		bad("listen", "is required; the SignerService address, e.g. 0.0.0.0:9090")
	case err != nil:
		bad("listen", "%q is not HOST:PORT; the SignerService address, e.g. 0.0.0.0:9090", c.Listen)
	}
}

func (c SignerServiceConfig) validateAPI(bad badFunc) {
	switch c.API {
	case APIReleased, APIPreview:
	default:
		bad("api", "%q is unknown; use %s (cosmos/kms v0.1.0's contract, the default) or %s (the pre-release contract: "+
			"RecoverableMessage in, r, s, v out)", c.API, APIReleased, APIPreview)
	}
}

// validateTransport: TLS, or plaintext on loopback only; and who may call.
func (c SignerServiceConfig) validateTransport(bad badFunc) {
	host, _, err := net.SplitHostPort(c.Listen)
	loopback := err == nil && isLoopbackHost(host)
	plaintext := c.TLSCert == "" && c.TLSKey == ""
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		bad("tls_cert", "tls_cert and tls_key go together: set both for TLS, or neither for plaintext on a loopback listen address")
	case plaintext && !loopback:
		bad("tls_cert", "tls_cert and tls_key are required when grpc.listen (%q) is not a loopback address: plaintext would carry "+
			"every payload and signature readable and alterable on the network; set both, or listen on 127.0.0.1", c.Listen)
	case plaintext && c.ClientCA != "":
		bad("client_ca", "needs TLS: client certificates are checked in the TLS handshake; set tls_cert and tls_key too")
	}
	if c.ClientCA == "" && !c.AllowUnauthenticatedClients && !loopback {
		bad("client_ca", "is required when grpc.listen (%q) is not a loopback address: without it any client that "+
			"completes TLS can sign any message with every grpc key; set client_ca to the CA of your clients' certificates, "+
			"listen on 127.0.0.1, or set grpc.allow_unauthenticated_clients: true if the network alone admits only your clients", c.Listen)
	}
}

// isLoopbackHost: a name other than localhost could resolve anywhere, so it
// does not count.
func isLoopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// validateSignerKey checks one key's backend, algorithm (for the contract
// served) and the backend's own fields, named relative to the entry.
func validateSignerKey(k SignerKey, api string) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fielderr.New("signer service", field, format, args...))
	}
	algs, ok := signerAlgorithms[k.Backend]
	if !ok {
		bad("backend", "%q is unknown; use file, pkcs11 or awskms", k.Backend)
		return errs
	}
	switch {
	case k.Algorithm == "":
		bad("algorithm", "is required; backend %s offers %s", k.Backend, strings.Join(algs, ", "))
	case !slices.Contains(algs, k.Algorithm):
		bad("algorithm", "%q is not offered by backend %s (cosmos/kms v0.1.0's combinations); use %s",
			k.Algorithm, k.Backend, strings.Join(algs, ", "))
	case api == APIPreview && k.Algorithm == AlgoEd25519:
		bad("algorithm", "ed25519 cannot be served by grpc.api: preview, whose Sign answers recoverable secp256k1 "+
			"signatures only; use a secp256k1eth key, or grpc.api: released")
	}
	switch k.Backend {
	case BackendFile:
		if k.KeyFile == "" {
			bad("key_file", "is required for backend file: a file holding the hex of a 32-byte secp256k1 key (secp256k1eth), "+
				"or a priv_validator_key.json (ed25519)")
		}
	case BackendPKCS11:
		errs = append(errs, k.PKCS11.Validate())
	case BackendAWSKMS:
		errs = append(errs, k.AWSKMS.Validate())
	}
	return errs
}

// prefixed renames the fields of a key's problems to keys[i].<field>.
func prefixed(p string, errs []error) []error {
	fields, rest := fielderr.Split(errors.Join(errs...))
	out := make([]error, 0, len(fields)+len(rest))
	for _, f := range fields {
		out = append(out, fielderr.New("signer service", p+"."+f.Field, "%s", f.Msg))
	}
	for _, e := range rest {
		out = append(out, fmt.Errorf("signer service: %s: %w", p, e))
	}
	return out
}
