package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// Files names what a node loads: the cluster CA certificate (a PEM bundle
// may hold several CAs, to roll the CA over without a flag day) and this
// node's certificate and key.
type Files struct {
	CA, Cert, Key string
}

// Option tunes ServerConfig and ClientConfig.
type Option func(*options)

type options struct {
	log *slog.Logger
	now func() time.Time
}

// WithLogger sets where certificate reloads and failed reloads are
// reported; default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{log: slog.Default(), now: time.Now}
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// ServerConfig is the TLS config for a node's listeners (raft, Cluster
// API): TLS 1.3 only, and the peer must present a certificate from the
// cluster CA. The node certificate is re-read from disk when its files
// change, so a rotated certificate takes effect on the next handshake.
func ServerConfig(f Files, opts ...Option) (*tls.Config, error) {
	o := buildOptions(opts)
	pool, err := loadCAPool(f.CA)
	if err != nil {
		return nil, err
	}
	r, err := newReloader(f, pool, x509.ExtKeyUsageServerAuth, o)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.get(), nil
		},
	}, nil
}

// ClientConfig is the TLS config for dialing another node. serverName is
// the host (DNS name or IP, no port) the server's certificate must carry;
// callers that dial many peers (the raft stream layer) set it per dial on
// a clone.
func ClientConfig(f Files, serverName string, opts ...Option) (*tls.Config, error) {
	o := buildOptions(opts)
	pool, err := loadCAPool(f.CA)
	if err != nil {
		return nil, err
	}
	r, err := newReloader(f, pool, x509.ExtKeyUsageClientAuth, o)
	if err != nil {
		return nil, err
	}
	if host, _, err := net.SplitHostPort(serverName); err == nil {
		serverName = host
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: strings.TrimSuffix(strings.TrimPrefix(serverName, "["), "]"),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.get(), nil
		},
	}, nil
}

// reloader hands out the node's certificate and re-reads it when the
// files' size or modification time change. A pair that fails to load
// (typically a rotation caught halfway, new cert with the old key) is
// reported once and the previous pair stays in use: it was valid when
// loaded, and failing every handshake instead would take the node out of
// the cluster for an operator's typo.
type reloader struct {
	files Files
	pool  *x509.CertPool
	usage x509.ExtKeyUsage
	o     options

	mu    sync.Mutex
	stamp stamp // of the last load attempted, successful or not
	cert  *tls.Certificate
}

type stamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
	missing           bool
}

func stampOf(f Files) stamp {
	ci, err1 := os.Stat(f.Cert)
	ki, err2 := os.Stat(f.Key)
	if err1 != nil || err2 != nil {
		return stamp{missing: true}
	}
	return stamp{certMod: ci.ModTime(), keyMod: ki.ModTime(), certSize: ci.Size(), keySize: ki.Size()}
}

func newReloader(f Files, pool *x509.CertPool, usage x509.ExtKeyUsage, o options) (*reloader, error) {
	// Stamp before reading: a change that lands during the read is then
	// seen as a change and read again at the next handshake.
	st := stampOf(f)
	c, err := loadKeyPair(f, pool, usage, o.now())
	if err != nil {
		return nil, err
	}
	return &reloader{files: f, pool: pool, usage: usage, o: o, stamp: st, cert: c}, nil
}

func (r *reloader) get() *tls.Certificate {
	st := stampOf(r.files)
	r.mu.Lock()
	defer r.mu.Unlock()
	if st == r.stamp {
		return r.cert
	}
	r.stamp = st
	if st.missing {
		r.o.log.Warn("pki: node certificate or key missing; keeping the one loaded before", "cert", r.files.Cert, "key", r.files.Key)
		return r.cert
	}
	c, err := loadKeyPair(r.files, r.pool, r.usage, r.o.now())
	if err != nil {
		r.o.log.Warn("pki: new node certificate not loaded; keeping the one loaded before", "err", err,
			"serial", r.cert.Leaf.SerialNumber.Text(16), "not_after", r.cert.Leaf.NotAfter)
		return r.cert
	}
	r.o.log.Info("pki: node certificate reloaded", "cert", r.files.Cert,
		"serial", c.Leaf.SerialNumber.Text(16), "not_after", c.Leaf.NotAfter)
	r.cert = c
	return c
}

func loadCAPool(path string) (*x509.CertPool, error) {
	certs, err := readCerts(path, "CA certificate", hintCreateCA+" and copy ca.crt (never ca.key) to every node")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("pki: %s holds %q, which is not a CA certificate (a node certificate in place of ca.crt?)", path, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

// loadKeyPair loads and checks a node's pair up front, so that a bad file
// is reported at start with its path rather than as a handshake failure on
// some other node.
func loadKeyPair(f Files, pool *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) (*tls.Certificate, error) {
	certs, err := readCerts(f.Cert, "node certificate", hintIssue)
	if err != nil {
		return nil, err
	}
	key, err := readKey(f.Key, "node key", hintIssue)
	if err != nil {
		return nil, err
	}
	leaf := certs[0]
	if err := keyMatches(leaf, key); err != nil {
		return nil, fmt.Errorf("pki: node key %s does not belong to node certificate %s (copy node.crt and node.key from the same issue run): %w", f.Key, f.Cert, err)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("pki: node certificate %s expired on %s; %s (running nodes pick up a new one without restart)", f.Cert, leaf.NotAfter.UTC().Format(time.RFC3339), hintIssue)
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("pki: node certificate %s is not valid before %s; check this host's clock", f.Cert, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		var unknown x509.UnknownAuthorityError
		var invalid x509.CertificateInvalidError
		switch {
		case errors.As(err, &unknown):
			return nil, fmt.Errorf("pki: node certificate %s is not signed by the cluster CA in %s; issue it with that CA: %w", f.Cert, f.CA, err)
		case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
			return nil, fmt.Errorf("pki: node certificate %s does not allow %s; %s: %w", f.Cert, usageName(usage), hintIssue, err)
		default:
			return nil, fmt.Errorf("pki: node certificate %s does not verify against the cluster CA in %s: %w", f.Cert, f.CA, err)
		}
	}
	ders := make([][]byte, len(certs))
	for i, c := range certs {
		ders[i] = c.Raw
	}
	return &tls.Certificate{Certificate: ders, PrivateKey: key, Leaf: leaf}, nil
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "TLS server authentication"
	}
	return "TLS client authentication"
}

func readFile(path, what, hint string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("pki: no %s file configured; %s", what, hint)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pki: %s %s not found; %s: %w", what, path, hint, err)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: read %s %s: %w", what, path, err)
	}
	return b, nil
}

// readCerts returns every certificate in a PEM file, the first being the
// one the file is about (leaf or CA) and the rest its chain or bundle.
func readCerts(path, what, hint string) ([]*x509.Certificate, error) {
	b, err := readFile(path, what, hint)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: %s %s: parse certificate: %w", what, path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("pki: %s %s holds no PEM certificate (a key file in its place?)", what, path)
	}
	return certs, nil
}

// readKey accepts PKCS#8 (what CreateCA and Issue write) and the older
// SEC1 and PKCS#1 forms, so certificates from an operator's own CA work.
func readKey(path, what, hint string) (crypto.Signer, error) {
	b, err := readFile(path, what, hint)
	if err != nil {
		return nil, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("pki: %s %s holds no PEM private key (a certificate in its place?)", what, path)
		}
		var key any
		switch blk.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("pki: %s %s is encrypted; kms-ha needs it unencrypted (protect it with file permissions 0600)", what, path)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pki: %s %s: parse key: %w", what, path, err)
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("pki: %s %s: unsupported key type %T", what, path, key)
		}
	}
}

func keyMatches(c *x509.Certificate, key crypto.Signer) error {
	pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return errors.New("public keys differ")
	}
	return nil
}

// Expiry returns the earliest NotAfter of the certificates in the PEM file
// at path (for a CA bundle, the first CA to expire), so monitoring can warn
// before a handshake starts failing.
func Expiry(path string) (time.Time, error) {
	certs, err := readCerts(path, "certificate", "check the path in kms.yaml")
	if err != nil {
		return time.Time{}, err
	}
	first := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(first) {
			first = c.NotAfter
		}
	}
	return first, nil
}
