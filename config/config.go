// Package config is the kms.yaml schema: the sections of cosmos/kms
// (chains, validators, keys, grpc) plus cluster, metrics and log; their
// defaults (the raft timings are package cluster's own); and validation,
// one function per section (validate.go), that names the field and says
// how to fix it. The rules of a key backend, the SignerService and the
// transports' addresses are those packages' own validators, which config
// calls. It reads only the files kms.yaml names (identity keys, and the
// mode of secret files).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/grpcapi"
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

	// ValidatorHandoverAfter is how long a leader that hears from none of
	// its validators waits before handing leadership to another voter,
	// which may still reach them; 0 turns the handover off. A pointer so
	// that an explicit 0 differs from a missing line (the default).
	ValidatorHandoverAfter *time.Duration `yaml:"validator_handover_after"`

	// LogStore is the raft log store: "wal" (raft-wal, the default) or
	// "bolt" (raft.db, the store of earlier versions). A raft.db is
	// migrated into the WAL in place at start.
	LogStore string `yaml:"log_store"`

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
	// Protocol is the node's privval line: v0.34, v0.37, v0.38 (the
	// default; also v0.39 and v0.40) or v1 (transport.ParseProtocol).
	Protocol string `yaml:"protocol"`
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
	Listen string `yaml:"listen"`
	// API is the contract served: released (cosmos/kms v0.1.0, the
	// default) or preview (the pre-release one).
	API string `yaml:"api"`
	// TLSCert and TLSKey both empty serve plaintext, on loopback only.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// ClientCA, if set, requires clients to present a certificate from it.
	ClientCA string    `yaml:"client_ca"`
	Keys     []GRPCKey `yaml:"keys"`
	// AllowUnauthenticatedClients lets the service listen beyond loopback
	// without client_ca, where any TLS client could sign with every key.
	AllowUnauthenticatedClients bool `yaml:"allow_unauthenticated_clients"`
}

// GRPCKey is a SignerService key, as in cosmos/kms v0.1.0: an id, a
// backend and an algorithm, and the backend's fields (named as in Key).
type GRPCKey struct {
	ID        string `yaml:"id"`
	Backend   string `yaml:"backend"`
	Algorithm string `yaml:"algorithm"`

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

// DefaultValidatorHandoverAfter sits above CometBFT's ping interval (its
// 5 s read timeout × 2/3 = 3.3 s): a healthy but idle validator, between
// heights of a chain with a long timeout_commit, is silent for up to that
// long, and must not look unreachable.
const DefaultValidatorHandoverAfter = 5 * time.Second

// MinValidatorHandoverAfter is the shortest wait validate accepts, for the
// same reason.
const MinValidatorHandoverAfter = 4 * time.Second

// HandoverAfter is ValidatorHandoverAfter with its default applied; 0
// means off.
func (cl Cluster) HandoverAfter() time.Duration {
	if cl.ValidatorHandoverAfter == nil {
		return DefaultValidatorHandoverAfter
	}
	return *cl.ValidatorHandoverAfter
}

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
	if cl.LogStore == "" {
		cl.LogStore = cluster.LogStoreWAL
	}
	if cl.ValidatorHandoverAfter == nil {
		d := DefaultValidatorHandoverAfter
		cl.ValidatorHandoverAfter = &d
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
	c.setGRPCDefaults()
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
}

// setGRPCDefaults: the released contract, and each key's backend (file)
// and that backend's default algorithm (grpcapi.DefaultSignerAlgorithm).
func (c *Config) setGRPCDefaults() {
	if c.GRPC == nil {
		return
	}
	if c.GRPC.API == "" {
		c.GRPC.API = grpcapi.APIReleased
	}
	for i := range c.GRPC.Keys {
		k := &c.GRPC.Keys[i]
		if k.Backend == "" {
			k.Backend = BackendFile
		}
		if k.Algorithm == "" {
			k.Algorithm = grpcapi.DefaultSignerAlgorithm(k.Backend)
		}
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
			k := &c.GRPC.Keys[i]
			k.KeyFile = c.Path(k.KeyFile)
			k.PinFile = c.Path(k.PinFile)
			if k.Backend == BackendPKCS11 && strings.ContainsRune(k.Module, '/') {
				k.Module = c.Path(k.Module)
			}
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

// ChainFields names, for each configured chain id, the fields of kms.yaml
// that spell it (e.g. "validators[0].chain_id, chains[0].id, keys[0].chain_ids
// in /home/kms.yaml"): a message about a chain id that does not match the
// validator's genesis says where to change it.
func (c *Config) ChainFields() map[string]string {
	fields := map[string][]string{}
	for i, v := range c.Validators {
		fields[v.ChainID] = append(fields[v.ChainID], fmt.Sprintf("validators[%d].chain_id", i))
	}
	for i, ch := range c.Chains {
		fields[ch.ID] = append(fields[ch.ID], fmt.Sprintf("chains[%d].id", i))
	}
	for i, k := range c.Keys {
		for _, id := range k.ChainIDs {
			fields[id] = append(fields[id], fmt.Sprintf("keys[%d].chain_ids", i))
		}
	}
	out := make(map[string]string, len(fields))
	for id, f := range fields {
		out[id] = strings.Join(f, ", ") + " in " + filepath.Join(c.Home, FileName)
	}
	return out
}
