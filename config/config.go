// Package config is the kms.yaml schema: the sections of cosmos/kms
// (chains, validators, keys, grpc) plus cluster and log, with defaults and
// validation that names the field and says how to fix it.
package config

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/transport"
)

// FileName is the configuration file inside --home.
const FileName = "kms.yaml"

// Config is a whole kms.yaml.
type Config struct {
	// Home is the directory relative paths resolve against.
	Home string `yaml:"-"`

	Cluster    Cluster     `yaml:"cluster"`
	Chains     []Chain     `yaml:"chains"`
	Validators []Validator `yaml:"validators"`
	Keys       []Key       `yaml:"keys"`
	GRPC       *GRPC       `yaml:"grpc"`
	Metrics    Metrics     `yaml:"metrics"`
	Log        Log         `yaml:"log"`
}

// Metrics configures the Prometheus and health endpoint.
type Metrics struct {
	// Listen is host:port for /metrics, /healthz and /readyz; empty turns
	// the endpoint off.
	Listen string `yaml:"listen"`
}

// Cluster is the raft membership of this node.
type Cluster struct {
	NodeID        string `yaml:"node_id"`
	DataDir       string `yaml:"data_dir"`
	RaftAddr      string `yaml:"raft_addr"`
	AdvertiseAddr string `yaml:"advertise_addr"`
	APIAddr       string `yaml:"api_addr"`

	HeartbeatTimeout   time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    time.Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout time.Duration `yaml:"leader_lease_timeout"`
	CommitTimeout      time.Duration `yaml:"commit_timeout"`
	ApplyTimeout       time.Duration `yaml:"apply_timeout"`
	SnapshotInterval   time.Duration `yaml:"snapshot_interval"`
	SnapshotThreshold  uint64        `yaml:"snapshot_threshold"`

	// MaxImportJump is how many heights a state import (or snapshot
	// restore) may raise a chain's existing watermark without --force: a
	// typo's extra digit would otherwise stop the validator from signing
	// until the chain reaches it.
	MaxImportJump int64 `yaml:"max_import_jump"`

	// Mutual TLS for raft and the cluster API: the cluster CA, and this
	// node's certificate and key issued by it (`kms-ha certs`). There is no
	// plaintext mode.
	TLSCA   string `yaml:"tls_ca"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`

	// AllowPlaintextNetwork was an opt-in of the first release, whose
	// cluster traffic was plaintext; it is refused with an explanation.
	AllowPlaintextNetwork *bool `yaml:"allow_plaintext_network"`
}

// Chain declares a chain to sign for.
type Chain struct {
	ID string `yaml:"id"`
	// StateFile is accepted for cosmos/kms compatibility; kms-ha keeps the
	// watermark in the cluster, never in a local file.
	StateFile string `yaml:"state_file"`
}

// Validator is one dial-out connection to a validator node.
type Validator struct {
	ChainID     string `yaml:"chain_id"`
	Addr        string `yaml:"addr"`
	IdentityKey string `yaml:"identity_key"`
	Reconnect   *bool  `yaml:"reconnect"`
	// AllowOpenPermissions accepts an identity_key that group or others
	// may read (see checkPrivateFile).
	AllowOpenPermissions bool `yaml:"allow_open_permissions"`
}

// ShouldReconnect is Reconnect with its default (true).
func (v Validator) ShouldReconnect() bool { return v.Reconnect == nil || *v.Reconnect }

// Key binds a consensus key to chains. Fields of backends other than the
// chosen one are ignored, as in cosmos/kms.
type Key struct {
	ChainIDs  []string `yaml:"chain_ids"`
	Backend   string   `yaml:"backend"`
	Algorithm string   `yaml:"algorithm"`

	// file
	KeyFile string `yaml:"key_file"`

	// pkcs11
	Module     string `yaml:"module"`
	TokenLabel string `yaml:"token_label"`
	Slot       *uint  `yaml:"slot"`
	KeyLabel   string `yaml:"key_label"`
	KeyID      string `yaml:"key_id"`
	Pin        string `yaml:"pin"`
	PinEnv     string `yaml:"pin_env"`
	PinFile    string `yaml:"pin_file"`

	// awskms (key_id is shared with pkcs11)
	Region   string `yaml:"region"`
	Profile  string `yaml:"profile"`
	Endpoint string `yaml:"endpoint"`

	// AllowOpenPermissions accepts a key_file or pin_file that group or
	// others may read (see checkPrivateFile).
	AllowOpenPermissions bool `yaml:"allow_open_permissions"`
}

// GRPC is cosmos/kms's SignerService block.
type GRPC struct {
	Listen  string `yaml:"listen"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// ClientCA, if set, requires clients to present a certificate from it.
	ClientCA string    `yaml:"client_ca"`
	Keys     []GRPCKey `yaml:"keys"`
	// AllowUnauthenticatedClients lets the service listen beyond loopback
	// without client_ca, where any TLS client could sign with every key.
	AllowUnauthenticatedClients bool `yaml:"allow_unauthenticated_clients"`
}

// GRPCKey is a SignerService key.
type GRPCKey struct {
	ID      string `yaml:"id"`
	KeyFile string `yaml:"key_file"`
	// AllowOpenPermissions accepts a key_file that group or others may
	// read (see checkPrivateFile).
	AllowOpenPermissions bool `yaml:"allow_open_permissions"`
}

// Log configures logging; command-line flags override it.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Backends.
const (
	BackendFile   = "file"
	BackendPKCS11 = "pkcs11"
	BackendAWSKMS = "awskms"
)

// Load reads home/kms.yaml, applies defaults, resolves relative paths
// against home and validates.
func Load(home string) (*Config, error) {
	path := filepath.Join(home, FileName)
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("config: %s not found; run `kms-ha init --home %s` first", path, home)
		}
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	c, err := Parse(data, home)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates a kms.yaml held in memory.
func Parse(data []byte, home string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	// A misspelt field would otherwise be silently ignored and a default
	// used instead: refuse it.
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	abs, err := filepath.Abs(home)
	if err != nil {
		return nil, fmt.Errorf("home %s: %w", home, err)
	}
	c.Home = abs
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c.resolvePaths()
	return &c, nil
}

// DefaultMaxImportJump: a million heights is months of blocks on any
// chain, far beyond a signer swap, and well short of a mistyped digit.
const DefaultMaxImportJump = 1_000_000

// setDefaults fills what kms.yaml left out. The raft timings are the raft
// node's own defaults (package cluster), so a kms.yaml without them and a
// cluster.Config built without them run the same.
func (c *Config) setDefaults() {
	cl := &c.Cluster
	if cl.DataDir == "" {
		cl.DataDir = "raft"
	}
	if cl.AdvertiseAddr == "" {
		cl.AdvertiseAddr = cl.RaftAddr
	}
	for _, d := range []struct {
		p *time.Duration
		v time.Duration
	}{
		{&cl.HeartbeatTimeout, cluster.DefaultHeartbeatTimeout},
		{&cl.ElectionTimeout, cluster.DefaultElectionTimeout},
		{&cl.LeaderLeaseTimeout, cluster.DefaultLeaderLeaseTimeout},
		{&cl.CommitTimeout, cluster.DefaultCommitTimeout},
		{&cl.ApplyTimeout, cluster.DefaultApplyTimeout},
		{&cl.SnapshotInterval, cluster.DefaultSnapshotInterval},
	} {
		if *d.p == 0 {
			*d.p = d.v
		}
	}
	if cl.SnapshotThreshold == 0 {
		cl.SnapshotThreshold = cluster.DefaultSnapshotThreshold
	}
	if cl.MaxImportJump == 0 {
		cl.MaxImportJump = DefaultMaxImportJump
	}
	if cl.TLSCA == "" {
		cl.TLSCA = DefaultTLSCA
	}
	if cl.TLSCert == "" {
		cl.TLSCert = DefaultTLSCert
	}
	if cl.TLSKey == "" {
		cl.TLSKey = DefaultTLSKey
	}
	for i := range c.Keys {
		if c.Keys[i].Backend == "" {
			c.Keys[i].Backend = BackendFile
		}
		if c.Keys[i].Algorithm == "" {
			c.Keys[i].Algorithm = "ed25519"
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
}

// Default locations of the cluster TLS files, relative to --home; `kms-ha
// certs` writes them there.
const (
	DefaultTLSCA   = "tls/ca.crt"
	DefaultTLSCert = "tls/node.crt"
	DefaultTLSKey  = "tls/node.key"
)

// Path resolves p against Home unless it is absolute.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Home, p)
}

func (c *Config) resolvePaths() {
	c.Cluster.DataDir = c.Path(c.Cluster.DataDir)
	c.Cluster.TLSCA = c.Path(c.Cluster.TLSCA)
	c.Cluster.TLSCert = c.Path(c.Cluster.TLSCert)
	c.Cluster.TLSKey = c.Path(c.Cluster.TLSKey)
	if c.GRPC != nil {
		c.GRPC.TLSCert = c.Path(c.GRPC.TLSCert)
		c.GRPC.TLSKey = c.Path(c.GRPC.TLSKey)
		c.GRPC.ClientCA = c.Path(c.GRPC.ClientCA)
		for i := range c.GRPC.Keys {
			c.GRPC.Keys[i].KeyFile = c.Path(c.GRPC.Keys[i].KeyFile)
		}
	}
	for i := range c.Validators {
		c.Validators[i].IdentityKey = c.Path(c.Validators[i].IdentityKey)
	}
	for i := range c.Keys {
		c.Keys[i].KeyFile = c.Path(c.Keys[i].KeyFile)
		c.Keys[i].PinFile = c.Path(c.Keys[i].PinFile)
		if c.Keys[i].Backend == BackendPKCS11 && strings.ContainsRune(c.Keys[i].Module, '/') {
			c.Keys[i].Module = c.Path(c.Keys[i].Module)
		}
	}
}

var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate checks the whole file and reports every problem at once, each
// naming its field. It reads the identity files validators name: a file
// that does not load fails here, at start, not when the node first leads.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}

	cl := c.Cluster
	switch {
	case cl.NodeID == "":
		bad("cluster.node_id", "is required: a unique name for this node, e.g. node1")
	case !nodeIDRe.MatchString(cl.NodeID):
		bad("cluster.node_id", "%q may contain only letters, digits, '.', '_' and '-' (at most 64)", cl.NodeID)
	}
	if err := checkHostPort(cl.RaftAddr); err != nil {
		bad("cluster.raft_addr", "%v; set it to the address raft listens on, e.g. 0.0.0.0:7001", err)
	}
	if err := checkHostPort(cl.AdvertiseAddr); err != nil {
		bad("cluster.advertise_addr", "%v", err)
	} else if host, _, _ := net.SplitHostPort(cl.AdvertiseAddr); isUnspecified(host) {
		bad("cluster.advertise_addr", "%q is not an address peers can dial; set advertise_addr to this node's reachable IP and port", cl.AdvertiseAddr)
	}
	if err := checkHostPort(cl.APIAddr); err != nil {
		bad("cluster.api_addr", "%v; set it to the address of the cluster gRPC API, e.g. 127.0.0.1:7101", err)
	} else if host, _, _ := net.SplitHostPort(cl.APIAddr); isUnspecified(host) {
		bad("cluster.api_addr", "%q is not an address the other nodes and the kms-ha commands can dial (it is recorded for "+
			"forwarding and must be in the node's certificate); set this node's reachable IP or name", cl.APIAddr)
	}
	if cl.AllowPlaintextNetwork != nil {
		bad("cluster.allow_plaintext_network", "is no longer supported: raft and the cluster API always run over mutual TLS. "+
			"Delete this line and give every node a certificate from the cluster CA (`kms-ha certs ca`, `kms-ha certs issue`; "+
			"see README \"Certificates\")")
	}
	if cl.HeartbeatTimeout < 5*time.Millisecond {
		bad("cluster.heartbeat_timeout", "%s is too short (at least 5ms)", cl.HeartbeatTimeout)
	}
	if cl.ElectionTimeout < cl.HeartbeatTimeout {
		bad("cluster.election_timeout", "%s must be at least heartbeat_timeout (%s)", cl.ElectionTimeout, cl.HeartbeatTimeout)
	}
	if cl.LeaderLeaseTimeout > cl.HeartbeatTimeout {
		bad("cluster.leader_lease_timeout", "%s must not exceed heartbeat_timeout (%s)", cl.LeaderLeaseTimeout, cl.HeartbeatTimeout)
	}
	if cl.MaxImportJump < 0 {
		bad("cluster.max_import_jump", "%d must be positive (heights an import may raise a watermark without --force)", cl.MaxImportJump)
	}
	if cl.ApplyTimeout <= 0 || cl.ApplyTimeout >= 5*time.Second {
		bad("cluster.apply_timeout", "%s must be above 0 and below 5s: the validator drops a connection whose answer takes 5s", cl.ApplyTimeout)
	}

	chains := map[string]bool{}
	for i, ch := range c.Chains {
		f := fmt.Sprintf("chains[%d].id", i)
		switch {
		case ch.ID == "":
			bad(f, "is required: the chain id from the chain's genesis.json")
		case chains[ch.ID]:
			bad(f, "chain %q is declared twice", ch.ID)
		}
		chains[ch.ID] = true
	}

	for i, v := range c.Validators {
		p := fmt.Sprintf("validators[%d]", i)
		if !chains[v.ChainID] {
			bad(p+".chain_id", "%q is not declared under chains", v.ChainID)
		}
		if err := c.checkValidatorEntry(v); err != nil {
			errs = append(errs, fmt.Errorf("%s%w", p, err))
		}
		c.private(bad, p, "identity_key", v.IdentityKey, v.AllowOpenPermissions)
	}

	keyOf := map[string]int{}
	for i, k := range c.Keys {
		p := fmt.Sprintf("keys[%d]", i)
		if len(k.ChainIDs) == 0 {
			bad(p+".chain_ids", "is required: the chains this key signs for")
		}
		for _, id := range k.ChainIDs {
			if !chains[id] {
				bad(p+".chain_ids", "%q is not declared under chains", id)
			}
			if j, dup := keyOf[id]; dup {
				bad(p+".chain_ids", "chain %q already has a key (keys[%d]); a chain needs exactly one key", id, j)
			}
			keyOf[id] = i
		}
		if k.Algorithm != "ed25519" {
			bad(p+".algorithm", "%q is not supported; consensus keys are ed25519", k.Algorithm)
		}
		switch k.Backend {
		case BackendFile:
			if k.KeyFile == "" {
				bad(p+".key_file", "is required for backend file: the path of a priv_validator_key.json")
			}
			c.private(bad, p, "key_file", k.KeyFile, k.AllowOpenPermissions)
		case BackendPKCS11:
			if k.Module == "" {
				bad(p+".module", "is required for backend pkcs11: the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
			}
			if (k.TokenLabel == "") == (k.Slot == nil) {
				bad(p+".token_label", "set exactly one of token_label and slot")
			}
			if k.KeyLabel == "" && k.KeyID == "" {
				bad(p+".key_label", "set key_label, key_id (hex), or both")
			}
			if k.KeyID != "" {
				if _, err := hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(k.KeyID, "0x"), "0X")); err != nil {
					bad(p+".key_id", "%q is not hex (the CKA_ID of the key, e.g. 01)", k.KeyID)
				}
			}
			n := 0
			for _, v := range []string{k.Pin, k.PinEnv, k.PinFile} {
				if v != "" {
					n++
				}
			}
			if n != 1 {
				bad(p+".pin", "set exactly one of pin, pin_env and pin_file (pin_env or pin_file keep the PIN out of kms.yaml)")
			}
			c.private(bad, p, "pin_file", k.PinFile, k.AllowOpenPermissions)
		case BackendAWSKMS:
			if k.KeyID == "" {
				bad(p+".key_id", "is required for backend awskms: the key id, ARN or alias/NAME")
			}
			if k.Endpoint != "" && !strings.HasPrefix(k.Endpoint, "https://") && !strings.HasPrefix(k.Endpoint, "http://") {
				bad(p+".endpoint", "%q must be a URL, e.g. https://kms.us-east-1.amazonaws.com", k.Endpoint)
			}
		default:
			bad(p+".backend", "%q is unknown; use file, pkcs11 or awskms", k.Backend)
		}
	}
	for id := range chains {
		if _, ok := keyOf[id]; !ok {
			bad("keys", "chain %q has no key; add a keys entry with chain_ids: [%s]", id, id)
		}
	}
	if g := c.GRPC; g != nil {
		if err := checkHostPort(g.Listen); err != nil {
			bad("grpc.listen", "%v; the SignerService address, e.g. 0.0.0.0:9090", err)
		}
		if g.TLSCert == "" || g.TLSKey == "" {
			bad("grpc.tls_cert", "tls_cert and tls_key are required: the SignerService only serves TLS")
		}
		if g.ClientCA == "" && !g.AllowUnauthenticatedClients && !isLoopback(g.Listen) {
			bad("grpc.client_ca", "is required when grpc.listen (%q) is not a loopback address: without it any client that "+
				"completes TLS can sign any message with every grpc key; set client_ca to the CA of your clients' certificates, "+
				"listen on 127.0.0.1, or set grpc.allow_unauthenticated_clients: true if the network alone admits only your clients", g.Listen)
		}
		if len(g.Keys) == 0 {
			bad("grpc.keys", "is empty: add at least one key (id, key_file) or remove the grpc block")
		}
		ids := map[string]bool{}
		for i, k := range g.Keys {
			p := fmt.Sprintf("grpc.keys[%d]", i)
			if k.ID == "" {
				bad(p+".id", "is required")
			} else if ids[k.ID] {
				bad(p+".id", "%q is used twice", k.ID)
			}
			ids[k.ID] = true
			if k.KeyFile == "" {
				bad(p+".key_file", "is required: a file holding the hex of a 32-byte secp256k1 key")
			}
			c.private(bad, p, "key_file", k.KeyFile, k.AllowOpenPermissions)
		}
	}
	if c.Metrics.Listen != "" {
		if err := checkHostPort(c.Metrics.Listen); err != nil {
			bad("metrics.listen", "%v; e.g. 127.0.0.1:26661", err)
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is unknown; use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is unknown; use text or json", c.Log.Format)
	}
	return errors.Join(errs...)
}

// checkValidatorEntry checks a validators entry with the transport's own
// parser and identity check, so that an entry that loads is one the leader
// can dial: a bad one would otherwise surface only when this node first
// leads, and never be dialled. The error starts with ".field: ".
func (c *Config) checkValidatorEntry(v Validator) error {
	a, err := transport.ParseAddr(v.Addr)
	if err != nil {
		return fmt.Errorf(".addr: %w", err)
	}
	if !a.NeedsIdentity() {
		// The node's unix listener authenticates nobody; an identity_key
		// given anyway is not read.
		return nil
	}
	const fix = "identity_key is a SecretConnection/Noise identity in node_key.json format: `kms-ha init` writes one as identity.json " +
		"(for noise:// every node of the cluster needs the same one)"
	if v.IdentityKey == "" {
		return fmt.Errorf(".identity_key: is required for %s:// addresses; %s", a.Scheme, fix)
	}
	id, err := transport.LoadIdentity(c.Path(v.IdentityKey))
	if err != nil {
		return fmt.Errorf(".identity_key: %w; %s", err, fix)
	}
	if err := transport.CheckIdentity(v.Addr, id); err != nil {
		return fmt.Errorf(".identity_key: %s: %w; %s", c.Path(v.IdentityKey), err, fix)
	}
	return nil
}

func checkHostPort(s string) error {
	if s == "" {
		return errors.New("is required")
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("%q has no valid port", s)
	}
	return nil
}

// isLoopback reports whether a listen address binds loopback only; a name
// other than localhost could resolve anywhere, so it does not count.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}
