package config

import (
	"bytes"
	"text/template"
)

// TemplateParams fill the kms.yaml written by `kms-ha init`.
type TemplateParams struct {
	NodeID   string
	RaftAddr string
	APIAddr  string
}

var tmpl = template.Must(template.New("kms.yaml").Parse(`# kms-ha configuration. Relative paths resolve against --home.
# The sections chains, validators and keys are those of cosmos/kms; cluster is kms-ha's.

cluster:
  # Unique name of this node in the cluster.
  node_id: {{.NodeID}}
  # Raft state (log, snapshots). Never copy it between nodes.
  data_dir: raft
  # Where raft listens, and the address the other nodes dial (must be reachable
  # from them; required when raft_addr is 0.0.0.0).
  raft_addr: {{.RaftAddr}}
  # advertise_addr: {{.RaftAddr}}
  # The cluster gRPC API (status, join, remove, state import). The kms-ha
  # commands talk to it.
  api_addr: {{.APIAddr}}
  # Raft and the API run over mutual TLS with one cluster CA; there is no
  # plaintext mode. Create them with:
  #   kms-ha certs ca --out CA_DIR            (once, keep CA_DIR offline)
  #   kms-ha certs issue --ca CA_DIR --node-id {{.NodeID}} --host HOST_OR_IP --out HOME/tls
  # tls_ca: tls/ca.crt
  # tls_cert: tls/node.crt
  # tls_key: tls/node.key
  # Raft timing, LAN defaults. For nodes in different regions raise all three
  # (e.g. heartbeat 1500ms, election 1500ms, lease 750ms).
  # heartbeat_timeout: 500ms
  # election_timeout: 500ms
  # leader_lease_timeout: 250ms
  # A signature waits at most this long for its watermark to commit; keep it
  # well under the validator's 5 s timeout.
  # apply_timeout: 2s
  # A leader that hears from none of its validators this long hands
  # leadership to another node, which may reach them; 0s turns it off.
  # validator_handover_after: 5s
  # The raft log store: wal (the default; a raft.db from an earlier version
  # is migrated at start) or bolt (raft.db). See docs/production.md before
  # switching a node back.
  # log_store: wal

# One entry per chain to sign for (the chain id from genesis.json).
chains: []
#  - id: cosmoshub-4

# One entry per validator node to dial: its priv_validator_laddr.
# Only the raft leader dials; every node needs the same list.
validators: []
#  - chain_id: cosmoshub-4
#    addr: tcp://10.0.0.1:26659
#    identity_key: identity.json
#    # The node's CometBFT line: v0.34, v0.37, v0.38 (the default; also
#    # v0.39 and v0.40) or v1 (v1.0).
#    protocol: v0.38

# Exactly one key per chain. Every node must hold the same key. Key files,
# pin_file and identity.json must be chmod 600 (allow_open_permissions: true
# on the entry accepts a group- or world-readable file).
keys: []
#  - chain_ids: [cosmoshub-4]
#    backend: file
#    key_file: /secrets/priv_validator_key.json

# Prometheus metrics, /healthz and /readyz (off unless set).
# metrics:
#   listen: 127.0.0.1:26661

# The SignerService of cosmos/kms v0.1.0, served by every node
# (docs/signerservice.md). api: preview serves the pre-release contract.
# grpc:
#   listen: 0.0.0.0:9090
#   # TLS; leave both out for plaintext, which only a loopback listen may do.
#   tls_cert: grpc.crt
#   tls_key: grpc.key
#   # Require client certificates from this CA. Without it any TLS client could
#   # sign any message with every key below, so it is required unless listen is
#   # loopback or allow_unauthenticated_clients: true says the network admits
#   # only your clients.
#   client_ca: clients-ca.crt
#   keys:
#     - id: attestor-1
#       backend: file              # file, pkcs11 or awskms
#       algorithm: secp256k1eth    # file: secp256k1eth, ed25519
#       key_file: attestor_secp256k1.hex
#     - id: attestor-2
#       backend: awskms
#       algorithm: secp256k1       # awskms: ed25519, secp256k1, secp256k1eth
#       key_id: alias/attestor
#       region: us-east-1

# log:
#   level: info     # debug, info, warn, error
#   format: text    # text or json
`))

// Template renders the commented kms.yaml for a new node.
func Template(p TemplateParams) []byte {
	var b bytes.Buffer
	if err := tmpl.Execute(&b, p); err != nil {
		panic(err) // the template is static; a failure is a programming error
	}
	return b.Bytes()
}
