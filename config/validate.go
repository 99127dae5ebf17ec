package config

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/internal/fielderr"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
	"github.com/kms-ha/kms-ha/transport"
)

// Validate checks the whole file and reports every problem at once, each
// naming its field. It reads the identity files validators name: a file
// that does not load fails here, at start, not when the node first leads.
//
// There is one validator per section. A rule that a backend or transport
// relies on is that package's own (pkcs11.Config.Validate,
// awskms.Config.Validate, grpcapi.SignerServiceConfig.Validate,
// transport.ParseAddr); the section validator calls it and names the
// field as kms.yaml spells it. What is left here are the rules of the
// file itself: references between sections, file permissions, addresses.
func (c *Config) Validate() error {
	var p problems
	c.validateCluster(&p)
	chains := c.validateChains(&p)
	c.validateValidators(&p, chains)
	c.validateKeys(&p, chains)
	c.validateGRPC(&p)
	c.validateMetrics(&p)
	c.validateLog(&p)
	return errors.Join(p...)
}

// problems collects every problem of a file, each prefixed by its field.
type problems []error

func (p *problems) bad(field, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// from reports what a package's own validator found, naming each field
// under section (e.g. "keys[2]"); skip lists fields the section validator
// checks itself.
func (p *problems) from(section string, err error, skip ...string) {
	fields, rest := fielderr.Split(err)
	for _, f := range fields {
		if !slices.Contains(skip, f.Field) {
			p.bad(section+"."+f.Field, "%s", f.Msg)
		}
	}
	for _, e := range rest {
		p.bad(section, "%v", e)
	}
}

var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (c *Config) validateCluster(p *problems) {
	cl := c.Cluster
	switch {
	case cl.NodeID == "":
		p.bad("cluster.node_id", "is required: a unique name for this node, e.g. node1")
	case !nodeIDRe.MatchString(cl.NodeID):
		p.bad("cluster.node_id", "%q may contain only letters, digits, '.', '_' and '-' (at most 64)", cl.NodeID)
	}
	if err := checkHostPort(cl.RaftAddr); err != nil {
		p.bad("cluster.raft_addr", "%v; set it to the address raft listens on, e.g. 0.0.0.0:7001", err)
	}
	if err := checkHostPort(cl.AdvertiseAddr); err != nil {
		p.bad("cluster.advertise_addr", "%v", err)
	} else if host, _, _ := net.SplitHostPort(cl.AdvertiseAddr); isUnspecified(host) {
		p.bad("cluster.advertise_addr", "%q is not an address peers can dial; set advertise_addr to this node's reachable IP and port", cl.AdvertiseAddr)
	}
	if err := checkHostPort(cl.APIAddr); err != nil {
		p.bad("cluster.api_addr", "%v; set it to the address of the cluster gRPC API, e.g. 127.0.0.1:7101", err)
	} else if host, _, _ := net.SplitHostPort(cl.APIAddr); isUnspecified(host) {
		p.bad("cluster.api_addr", "%q is not an address the other nodes and the kms-ha commands can dial (it is recorded for "+
			"forwarding and must be in the node's certificate); set this node's reachable IP or name", cl.APIAddr)
	}
	if cl.AllowPlaintextNetwork != nil {
		p.bad("cluster.allow_plaintext_network", "is no longer supported: raft and the cluster API always run over mutual TLS. "+
			"Delete this line and give every node a certificate from the cluster CA (`kms-ha certs ca`, `kms-ha certs issue`; "+
			"see README \"Certificates\")")
	}
	if cl.HeartbeatTimeout < 5*time.Millisecond {
		p.bad("cluster.heartbeat_timeout", "%s is too short (at least 5ms)", cl.HeartbeatTimeout)
	}
	if cl.ElectionTimeout < cl.HeartbeatTimeout {
		p.bad("cluster.election_timeout", "%s must be at least heartbeat_timeout (%s)", cl.ElectionTimeout, cl.HeartbeatTimeout)
	}
	if cl.LeaderLeaseTimeout > cl.HeartbeatTimeout {
		p.bad("cluster.leader_lease_timeout", "%s must not exceed heartbeat_timeout (%s)", cl.LeaderLeaseTimeout, cl.HeartbeatTimeout)
	}
	if cl.MaxImportJump < 0 {
		p.bad("cluster.max_import_jump", "%d must be positive (heights an import may raise a watermark without --force)", cl.MaxImportJump)
	}
	if d := cl.HandoverAfter(); d != 0 && d < MinValidatorHandoverAfter {
		p.bad("cluster.validator_handover_after", "%s is too short: at least %s, or 0 to turn the handover off (a healthy idle validator "+
			"sends nothing for up to 3.3 s between its pings, and must not look unreachable)", d, MinValidatorHandoverAfter)
	}
	if cl.LogStore != cluster.LogStoreWAL && cl.LogStore != cluster.LogStoreBolt {
		p.bad("cluster.log_store", "%q is not a log store: %q (the default) or %q (raft.db, as before the WAL; a data dir "+
			"already on the WAL cannot go back, see docs/production.md)", cl.LogStore, cluster.LogStoreWAL, cluster.LogStoreBolt)
	}
	if cl.ApplyTimeout <= 0 || cl.ApplyTimeout >= 5*time.Second {
		p.bad("cluster.apply_timeout", "%s must be above 0 and below 5s: the validator drops a connection whose answer takes 5s", cl.ApplyTimeout)
	}
}

// validateChains returns the declared chain ids, which the validators and
// keys sections refer to.
func (c *Config) validateChains(p *problems) map[string]bool {
	chains := map[string]bool{}
	for i, ch := range c.Chains {
		f := fmt.Sprintf("chains[%d].id", i)
		switch {
		case ch.ID == "":
			p.bad(f, "is required: the chain id from the chain's genesis.json")
		case chains[ch.ID]:
			p.bad(f, "chain %q is declared twice", ch.ID)
		}
		chains[ch.ID] = true
	}
	return chains
}

func (c *Config) validateValidators(p *problems, chains map[string]bool) {
	for i, v := range c.Validators {
		f := fmt.Sprintf("validators[%d]", i)
		if !chains[v.ChainID] {
			p.bad(f+".chain_id", "%q is not declared under chains", v.ChainID)
		}
		if err := c.checkValidatorEntry(v); err != nil {
			*p = append(*p, fmt.Errorf("%s%w", f, err))
		}
		if _, err := transport.ParseAddr(v.Addr); err == nil {
			if err := transport.CheckProtocol(v.Addr, v.Protocol); err != nil {
				p.bad(f+".protocol", "%v", err)
			}
		}
		c.private(p.bad, f, "identity_key", v.IdentityKey, v.AllowOpenPermissions)
	}
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

// validateKeys checks that every chain has exactly one key and each key
// entry what its backend needs; the pkcs11 and awskms rules are the
// backends' own.
func (c *Config) validateKeys(p *problems, chains map[string]bool) {
	keyOf := map[string]int{}
	for i, k := range c.Keys {
		f := fmt.Sprintf("keys[%d]", i)
		if len(k.ChainIDs) == 0 {
			p.bad(f+".chain_ids", "is required: the chains this key signs for")
		}
		for _, id := range k.ChainIDs {
			if !chains[id] {
				p.bad(f+".chain_ids", "%q is not declared under chains", id)
			}
			if j, dup := keyOf[id]; dup {
				p.bad(f+".chain_ids", "chain %q already has a key (keys[%d]); a chain needs exactly one key", id, j)
			}
			keyOf[id] = i
		}
		if _, ok := keys.CometType(k.Algorithm); !ok {
			p.bad(f+".algorithm", "%q is not a consensus key algorithm; use one of %s", k.Algorithm, strings.Join(keys.Algorithms, ", "))
		}
		switch k.Backend {
		case BackendFile:
			if k.KeyFile == "" {
				p.bad(f+".key_file", "is required for backend file: the path of a priv_validator_key.json")
			}
			c.private(p.bad, f, "key_file", k.KeyFile, k.AllowOpenPermissions)
		case BackendPKCS11:
			p.from(f, k.PKCS11().Validate())
			c.private(p.bad, f, "pin_file", k.PinFile, k.AllowOpenPermissions)
		case BackendAWSKMS:
			p.from(f, k.AWSKMS().Validate())
		default:
			p.bad(f+".backend", "%q is unknown; use file, pkcs11 or awskms", k.Backend)
		}
	}
	c.checkKeyProtocols(p, keyOf)
	for id := range chains {
		if _, ok := keyOf[id]; !ok {
			p.bad("keys", "chain %q has no key; add a keys entry with chain_ids: [%s]", id, id)
		}
	}
}

// checkKeyProtocols refuses a key that a validator's privval line cannot
// carry: the public key of v0.34, v0.37 and v1.0 has no field for
// secp256k1eth or mldsa65, so the node would fail to read it (those chains
// cannot have such validators anyway).
func (c *Config) checkKeyProtocols(p *problems, keyOf map[string]int) {
	for i, v := range c.Validators {
		j, ok := keyOf[v.ChainID]
		if !ok {
			continue
		}
		proto, err := transport.ParseProtocol(v.Protocol)
		if err != nil {
			continue
		}
		algo := c.Keys[j].Algorithm
		if !transport.CarriesKey(proto, algo) {
			p.bad(fmt.Sprintf("validators[%d].protocol", i), "privval protocol %s cannot carry a %s key (keys[%d].algorithm): "+
				"only CometBFT v0.40 (protocol v0.38, the default) accepts %s validator keys; use a v0.40 node, or an ed25519 or secp256k1 key",
				proto, algo, j, algo)
		}
	}
}

// PKCS11 is the pkcs11 backend's configuration of a key entry, without a
// logger.
func (k Key) PKCS11() pkcs11.Config {
	return pkcs11.Config{Module: k.Module, TokenLabel: k.TokenLabel, Slot: k.Slot, KeyLabel: k.KeyLabel, KeyID: k.KeyID,
		Pin: k.Pin, PinEnv: k.PinEnv, PinFile: k.PinFile, Algorithm: k.Algorithm}
}

// AWSKMS is the awskms backend's configuration of a key entry, without a
// logger.
func (k Key) AWSKMS() awskms.Config {
	return awskms.Config{KeyID: k.KeyID, Region: k.Region, Profile: k.Profile, Endpoint: k.Endpoint, Algorithm: k.Algorithm}
}

// SignerService is the SignerService's configuration of the grpc block.
func (g GRPC) SignerService() grpcapi.SignerServiceConfig {
	cfg := grpcapi.SignerServiceConfig{Listen: g.Listen, API: g.API, TLSCert: g.TLSCert, TLSKey: g.TLSKey, ClientCA: g.ClientCA,
		AllowUnauthenticatedClients: g.AllowUnauthenticatedClients}
	for _, k := range g.Keys {
		cfg.Keys = append(cfg.Keys, grpcapi.SignerKey{ID: k.ID, Backend: k.Backend, Algorithm: k.Algorithm, KeyFile: k.KeyFile,
			PKCS11: pkcs11.Config{Module: k.Module, TokenLabel: k.TokenLabel, Slot: k.Slot, KeyLabel: k.KeyLabel, KeyID: k.KeyID,
				Pin: k.Pin, PinEnv: k.PinEnv, PinFile: k.PinFile},
			AWSKMS: awskms.Config{KeyID: k.KeyID, Region: k.Region, Profile: k.Profile, Endpoint: k.Endpoint}})
	}
	return cfg
}

// validateGRPC checks the SignerService block with the service's own
// validator; listen is checked here, as every kms.yaml address is, and the
// key and PIN files' permissions as every secret file's.
func (c *Config) validateGRPC(p *problems) {
	g := c.GRPC
	if g == nil {
		return
	}
	if err := checkHostPort(g.Listen); err != nil {
		p.bad("grpc.listen", "%v; the SignerService address, e.g. 0.0.0.0:9090", err)
	}
	p.from("grpc", g.SignerService().Validate(), "listen")
	for i, k := range g.Keys {
		f := fmt.Sprintf("grpc.keys[%d]", i)
		switch k.Backend {
		case BackendFile:
			c.private(p.bad, f, "key_file", k.KeyFile, k.AllowOpenPermissions)
		case BackendPKCS11:
			c.private(p.bad, f, "pin_file", k.PinFile, k.AllowOpenPermissions)
		}
	}
}

func (c *Config) validateMetrics(p *problems) {
	if c.Metrics.Listen == "" {
		return
	}
	if err := checkHostPort(c.Metrics.Listen); err != nil {
		p.bad("metrics.listen", "%v; e.g. 127.0.0.1:26661", err)
	}
}

func (c *Config) validateLog(p *problems) {
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		p.bad("log.level", "%q is unknown; use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		p.bad("log.format", "%q is unknown; use text or json", c.Log.Format)
	}
}

// checkHostPort is the rule for every address in kms.yaml: HOST:PORT with
// a port a listener can be told to bind.
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

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}
