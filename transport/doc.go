// Package transport dials out to validator privval listeners
// (priv_validator_laddr) and serves their requests through a Handler.
//
// Three address schemes match the node's three listeners: tcp:// runs
// CometBFT's SecretConnection, noise:// runs libp2p Noise_XX with the
// validator's peer ID pinned in the address (the node pins ours in turn), and
// unix:// speaks plain frames over a local socket. Above the handshake all
// three carry the same varint length-prefixed privval protobuf frames.
//
// The privval.SignerServer / SignerDialerEndpoint machinery in CometBFT is
// deliberately not used: it spins on a dead connection after a node restart
// and DialTCPFn leaks the TCP connection when the SecretConnection handshake
// fails, which fills the node's accept queue and stalls the chain. This
// package owns the whole connection life cycle instead: every failed dial or
// handshake closes its socket, handshakes are bounded by a deadline, and
// redials back off quickly enough to fit the 3 s a starting node waits for
// its signer.
//
// Above the frames, each validator entry names the privval wire format of
// its node's CometBFT line (protocol.go): v0.34 and v0.37 read the v0.38
// frames and mark every request "sign no vote extension"
// (internal/voteext); v0.38 (also v0.39 and v0.40) is the format the
// Handler speaks; v1 (cometbft.privval.v1, the api module's types) is
// converted to and from it (wire_v1.go), answers PubKey with
// pub_key_type/pub_key_bytes, passes skip_extension_signing on, and
// refuses SignBytes itself: the transport holds no key.
//
// Where things are: addr.go is the one parser of validators[].addr and the
// scheme table; tcp.go, noise.go and unix.go hold each scheme's parse,
// identity check and dial, and dial.go what they share; frame.go reads
// privval frames; protocol.go, wire.go and wire_v1.go are the protocols
// and their codecs; transport.go is the per-validator loop (Run), its
// options and its redial backoff (internal/backoff).
package transport
