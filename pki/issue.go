// Package pki is the cluster's own certificate authority: it creates the
// CA, issues node certificates, and turns them into the mutual-TLS configs
// that raft and the Cluster API use. One CA per cluster: a node holding a
// certificate from it may join and replicate, nobody else may.
//
// Keys are ECDSA P-256: every TLS 1.3 stack (Go, grpc, openssl, HSMs if
// operators ever move the CA there) supports it for both server and client
// authentication, which Ed25519 certificates still are not everywhere.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// File names inside a CA directory and a node's certificate directory.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
	// An operator's certificate directory.
	OperatorCertFile = "operator.crt"
	OperatorKeyFile  = "operator.key"
)

// URIScheme and uriHost form the URI SAN kms-ha://node/<id> that carries a
// node's id, so a peer learns who it talks to from the verified certificate
// rather than from an address that can change.
const (
	URIScheme = "kms-ha"
	uriHost   = "node"
)

const (
	defaultCAValidity   = 10 * 365 * 24 * time.Hour
	defaultNodeValidity = 2 * 365 * 24 * time.Hour
	defaultCAName       = "kms-ha cluster CA"
	// Certificates start an hour in the past so that a node whose clock
	// is a little behind the CA host's still accepts a fresh certificate.
	backdate = time.Hour
)

// Commands named in error messages, so an operator who hits one knows the
// fix without reading the docs.
const (
	hintCreateCA = "create the cluster CA with `kms-ha certs ca --out <ca dir>`"
	hintIssue    = "issue it on the CA host with `kms-ha certs issue --ca <ca dir> --node-id <id> --host <address> --out <dir>` (it also copies ca.crt there) and copy the three files to this node"
)

// The same rule as cluster.node_id in kms.yaml (package config): the id
// becomes a URI path segment and a raft server id, so keep it plain.
var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CAOptions tunes CreateCA; the zero value is the recommended setup.
type CAOptions struct {
	// Validity of the CA certificate; default 10 years.
	Validity time.Duration
	// CommonName of the CA; default "kms-ha cluster CA". Worth setting
	// when one operator runs several clusters, so their CAs are told apart.
	CommonName string
}

// IssueOptions describes one node certificate.
type IssueOptions struct {
	// NodeID is the node's cluster.node_id; it becomes the certificate's
	// common name and its kms-ha://node/<id> URI SAN.
	NodeID string
	// Hosts are the DNS names and IP addresses the other nodes and the
	// operator's tools reach this node by (its raft advertise address and
	// API address hosts). Peers verify the address they dial against
	// these, so list every one. At least one.
	Hosts []string
	// OutDir receives node.crt and node.key.
	OutDir string
	// Validity of the certificate; default 2 years, never beyond the CA's
	// own expiry (a chain is only as valid as its shortest-lived link).
	Validity time.Duration
}

// CreateCA writes a new cluster CA to dir/ca.crt and dir/ca.key. It never
// overwrites: a second CA in the same place would silently lock every
// existing node out of the cluster.
func CreateCA(dir string, opts CAOptions) error {
	return createCA(dir, opts, time.Now())
}

func createCA(dir string, opts CAOptions, now time.Time) error {
	if dir == "" {
		return errors.New("pki: create CA: no directory given")
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return fmt.Errorf("pki: create CA in %s: %w", dir, err)
	}
	validity := opts.Validity
	if validity == 0 {
		validity = defaultCAValidity
	}
	if validity < 0 {
		return fmt.Errorf("pki: create CA: validity %s is negative", validity)
	}
	name := opts.CommonName
	if name == "" {
		name = defaultCAName
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: create CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fmt.Errorf("pki: create CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Node certificates only: a stolen node key must not be able to
		// mint further certificates that the cluster would accept.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("pki: create CA: sign certificate: %w", err)
	}
	if err := writePair(dir, certPath, der, keyPath, key); err != nil {
		return fmt.Errorf("pki: create CA in %s: %w", dir, err)
	}
	return nil
}

// Issue signs a certificate for one node with the CA in caDir and writes it
// to opts.OutDir. The certificate serves both TLS roles, because every raft
// peer both accepts and dials connections.
func Issue(caDir string, opts IssueOptions) error {
	return issue(caDir, opts, time.Now())
}

func issue(caDir string, opts IssueOptions, now time.Time) error {
	id := opts.NodeID
	if !nodeIDRe.MatchString(id) {
		return fmt.Errorf("pki: issue %q: node id may contain only letters, digits, '.', '_' and '-' (at most 64), starting with a letter or digit", id)
	}
	dnsNames, ips, err := parseHosts(opts.Hosts)
	if err != nil {
		return fmt.Errorf("pki: issue %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		URIs:        []*url.URL{nodeURI(id)},
	}
	return sign(caDir, tmpl, opts.Validity, opts.OutDir, NodeCertFile, NodeKeyFile, now)
}

// OperatorOptions describes one operator certificate.
type OperatorOptions struct {
	// Name tells operators apart in logs (a person, a host, a tool).
	Name string
	// ReadOnly certificates may only read (monitoring).
	ReadOnly bool
	// OutDir receives operator.crt and operator.key.
	OutDir   string
	Validity time.Duration
}

// IssueOperator signs a client-only certificate for an operator's
// workstation or automation. It cannot serve (no server usage) and names
// no node, so it never speaks raft; see Role for what it may call.
func IssueOperator(caDir string, opts OperatorOptions) error {
	return issueOperator(caDir, opts, time.Now())
}

func issueOperator(caDir string, opts OperatorOptions, now time.Time) error {
	if !nodeIDRe.MatchString(opts.Name) {
		return fmt.Errorf("pki: issue operator %q: the name may contain only letters, digits, '.', '_' and '-' (at most 64), starting with a letter or digit", opts.Name)
	}
	id := Identity{Role: RoleOperator, Name: opts.Name}
	if opts.ReadOnly {
		id.Role = RoleReader
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id.String()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.URI()},
	}
	return sign(caDir, tmpl, opts.Validity, opts.OutDir, OperatorCertFile, OperatorKeyFile, now)
}

// sign completes tmpl (serial, validity, key usage), signs it with the CA
// in caDir and writes the pair to outDir.
func sign(caDir string, tmpl *x509.Certificate, validity time.Duration, outDir, certFile, keyFile string, now time.Time) error {
	who := tmpl.Subject.CommonName
	if outDir == "" {
		return fmt.Errorf("pki: issue %s: no output directory given", who)
	}
	certPath, keyPath := filepath.Join(outDir, certFile), filepath.Join(outDir, keyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return fmt.Errorf("pki: issue %s in %s: %w", who, outDir, err)
	}
	ca, caKey, err := loadCA(caDir, now)
	if err != nil {
		return fmt.Errorf("pki: issue %s: %w", who, err)
	}
	if validity == 0 {
		validity = defaultNodeValidity
	}
	if validity < 0 {
		return fmt.Errorf("pki: issue %s: validity %s is negative", who, validity)
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: issue %s: generate key: %w", who, err)
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return fmt.Errorf("pki: issue %s: %w", who, err)
	}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-backdate), notAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("pki: issue %s: sign certificate: %w", who, err)
	}
	if err := writePair(outDir, certPath, der, keyPath, key); err != nil {
		return fmt.Errorf("pki: issue %s in %s: %w", who, outDir, err)
	}
	return nil
}

func nodeURI(id string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: uriHost, Path: "/" + id}
}

// parseHosts splits hosts into DNS names and IPs. It rejects what looks
// like an address with a port or a URL, since such a SAN would never match
// and the mistake would only surface as a handshake failure much later.
func parseHosts(hosts []string) ([]string, []net.IP, error) {
	var dnsNames []string
	var ips []net.IP
	seen := map[string]bool{}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if strings.Contains(h, "/") {
			return nil, nil, fmt.Errorf("host %q: give a DNS name or an IP address, not a URL", h)
		}
		bare := strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if ip := net.ParseIP(bare); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		if _, _, err := net.SplitHostPort(h); err == nil {
			return nil, nil, fmt.Errorf("host %q includes a port; give the host alone", h)
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if !validDNSName(name) {
			return nil, nil, fmt.Errorf("host %q is neither an IP address nor a valid DNS name", h)
		}
		if !seen[name] {
			seen[name] = true
			dnsNames = append(dnsNames, name)
		}
	}
	if len(dnsNames)+len(ips) == 0 {
		return nil, nil, errors.New("no hosts given: list the DNS names and IP addresses the other nodes reach this node by")
	}
	return dnsNames, ips, nil
}

func validDNSName(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// randomSerial returns a positive 128-bit serial: unique without a counter
// to keep, which matters because several operators may issue from copies
// of the CA directory.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func loadCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certs, err := readCerts(certPath, "CA certificate", hintCreateCA)
	if err != nil {
		return nil, nil, err
	}
	ca := certs[0]
	if !ca.IsCA || !ca.BasicConstraintsValid {
		return nil, nil, fmt.Errorf("pki: %s is not a CA certificate", certPath)
	}
	if now.After(ca.NotAfter) {
		return nil, nil, fmt.Errorf("pki: CA certificate %s expired on %s; a new CA means new certificates for every node", certPath, ca.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := readKey(keyPath, "CA key", "it is written next to ca.crt by `kms-ha certs ca`; run issue on the host that holds it")
	if err != nil {
		return nil, nil, err
	}
	if err := keyMatches(ca, key); err != nil {
		return nil, nil, fmt.Errorf("pki: CA key %s does not belong to CA certificate %s: %w", keyPath, certPath, err)
	}
	return ca, key, nil
}

func refuseExisting(paths ...string) error {
	for _, p := range paths {
		_, err := os.Lstat(p)
		if err == nil {
			return fmt.Errorf("%s already exists; refusing to overwrite it (use a new directory)", p)
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	return nil
}

// writePair writes the key first and the certificate second, each created
// exclusively, and removes what it wrote if the other fails: a directory
// holds a whole pair or nothing of ours.
func writePair(dir, certPath string, certDER []byte, keyPath string, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	// O_EXCL closes the gap between refuseExisting and here: two
	// concurrent runs cannot both write the same file.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite it (use a new directory)", path)
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
