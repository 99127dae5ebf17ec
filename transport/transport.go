package transport

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/libs/protoio"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	gogoproto "github.com/cosmos/gogoproto/proto"

	"github.com/kms-ha/kms-ha/internal/backoff"
	"github.com/kms-ha/kms-ha/internal/voteext"
)

// Handler answers one privval request for a chain. It never returns an error:
// refusals are encoded in the response (RemoteSignerError). It must be safe for
// concurrent use.
type Handler interface {
	Handle(ctx context.Context, chainID string, req privvalproto.Message) privvalproto.Message
}

// Validator is one validator node to serve.
type Validator struct {
	ChainID string
	// Addr is "tcp://host:port" (SecretConnection),
	// "noise://<validator-peer-id>@IP:PORT" (libp2p Noise, peer IDs pinned on
	// both sides) or "unix:///path/to.sock" (no encryption, as the node's
	// unix listener has none).
	Addr string
	// Identity authenticates us: ed25519 for tcp://; ed25519 or secp256k1
	// for noise://, where it is also our libp2p peer ID; unused for unix://.
	Identity  crypto.PrivKey
	Reconnect bool
	// Protocol is the privval wire format of the node's CometBFT line;
	// empty means DefaultProtocol (v0.38, which also serves v0.39 and
	// v0.40).
	Protocol Protocol
}

// Options tunes Run. Zero values select the defaults.
type Options struct {
	DialTimeout  time.Duration // default 2s; also bounds the handshake
	BackoffMin   time.Duration // default 200ms
	BackoffMax   time.Duration // default 1s
	ReadTimeout  time.Duration // default 10s
	WriteTimeout time.Duration // default 5s
	MaxFrameSize int           // default 1<<20 + 64<<10
	Logger       *slog.Logger  // default slog.Default()
	// Allowed, if set, is consulted right before every dial; when it returns
	// false the loop does not dial and waits one backoff step. The node uses
	// it so that only the leader dials.
	Allowed func() bool
	// OnState, if set, is called with "connecting", "connected",
	// "disconnected" for metrics/logs. Every "connecting" is followed by
	// either "connected" or, when the dial or handshake fails,
	// "disconnected"; every "connected" is followed by "disconnected".
	OnState func(v Validator, state string)
}

// Connection states reported through Options.OnState.
const (
	StateConnecting   = "connecting"
	StateConnected    = "connected"
	StateDisconnected = "disconnected"
)

const (
	defaultDialTimeout  = 2 * time.Second
	defaultBackoffMin   = 200 * time.Millisecond
	defaultBackoffMax   = time.Second
	defaultReadTimeout  = 10 * time.Second
	defaultWriteTimeout = 5 * time.Second
	// A v0.40 node sends up to ~1 MiB (vote extension) plus signatures and
	// framing; 64 KiB of slack keeps us above what the node itself accepts.
	defaultMaxFrameSize = 1<<20 + 64<<10
)

// connectFailureLogEvery throttles warn-level logs for plain connect failures
// (node down): one at the start of a streak, then one every so often, so an
// offline node does not produce a warning every second.
const connectFailureLogEvery = 30

func (o Options) withDefaults() Options {
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = defaultBackoffMin
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = defaultBackoffMax
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = o.BackoffMin
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = defaultReadTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = defaultWriteTimeout
	}
	if o.MaxFrameSize <= 0 {
		o.MaxFrameSize = defaultMaxFrameSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// ErrNoReconnect wraps the error Run returns when a validator with
// Reconnect false lost its connection (or never got one): cosmos/kms's
// "reconnect: false", which the caller reports rather than retries.
var ErrNoReconnect = errors.New("not redialling (reconnect: false)")

// Run serves one validator until ctx is done (or, with Reconnect false, until
// the first connection ends). It closes the live connection promptly when ctx
// is cancelled. It returns nil on ctx cancellation; otherwise it returns an
// error for an invalid Validator, or, with Reconnect false, the error that
// ended the single dial attempt or connection, wrapping ErrNoReconnect.
func Run(ctx context.Context, v Validator, h Handler, opts Options) error {
	o := opts.withDefaults()
	log := o.Logger.With("chain", v.ChainID, "addr", v.Addr, "protocol", cmp.Or(v.Protocol, DefaultProtocol))
	tgt, protocol, err := prepare(v, h, log)
	if err != nil {
		return err
	}
	sch := schemes[tgt.Scheme]
	setState := func(s string) {
		if o.OnState != nil {
			o.OnState(v, s)
		}
	}
	b := backoff.New(o.BackoffMin, o.BackoffMax)
	failures := 0
	notAllowedLogged := false

	for {
		if ctx.Err() != nil {
			return nil
		}
		if o.Allowed != nil && !o.Allowed() {
			if !notAllowedLogged {
				log.Debug("transport: dialling not allowed, waiting")
				notAllowedLogged = true
			}
			// Not advancing the schedule: once allowed (e.g. just became
			// leader) we want to dial within one short step, not after a
			// backoff inflated by the time spent waiting.
			if !backoff.Sleep(ctx, b.Initial()) {
				return nil
			}
			continue
		}
		notAllowedLogged = false

		setState(StateConnecting)
		conn, err := sch.dial(ctx, tgt, v.Identity, o.DialTimeout)
		if err != nil {
			setState(StateDisconnected)
			if ctx.Err() != nil {
				return nil
			}
			failures++
			logDialFailure(log, err, failures)
			if !v.Reconnect {
				return fmt.Errorf("transport: %w: %w", ErrNoReconnect, err)
			}
			if !b.Wait(ctx) {
				return nil
			}
			continue
		}

		setState(StateConnected)
		log.Info("transport: connected", "after_failures", failures)
		served, err := serveConn(ctx, conn, v.ChainID, protocol, h, o)
		setState(StateDisconnected)
		if ctx.Err() != nil {
			log.Info("transport: disconnected", "reason", "context done", "served", served)
			return nil
		}
		logDisconnect(log, err, served)
		if !v.Reconnect {
			return fmt.Errorf("transport: connection to %s ended; %w: %w", v.Addr, ErrNoReconnect, err)
		}
		// A connection that never completed a request is as bad as a failed
		// dial: e.g. a peer that accepts and closes at once must not make us
		// redial at full speed.
		if served > 0 {
			failures = 0
			b.Reset()
		} else {
			failures++
		}
		if !b.Wait(ctx) {
			return nil
		}
	}
}

// prepare checks what Run was given, once: a misconfiguration fails fast
// instead of redialling forever.
func prepare(v Validator, h Handler, log *slog.Logger) (target, Protocol, error) {
	if h == nil {
		return target{}, "", errors.New("transport: nil Handler")
	}
	tgt, err := parseTarget(v.Addr)
	if err != nil {
		return target{}, "", err
	}
	if err := schemes[tgt.Scheme].checkIdentity(v.Identity); err != nil {
		return target{}, "", err
	}
	p, err := ParseProtocol(string(v.Protocol))
	if err != nil {
		return target{}, "", err
	}
	if err := checkSchemeProtocol(tgt.Scheme, p); err != nil {
		return target{}, "", err
	}
	if tgt.Scheme == "noise" {
		// The operator of the validator needs this ID for its allow-list;
		// printing it here saves a round trip to `kms-ha peer-id`.
		id, err := PeerID(v.Identity)
		if err != nil {
			return target{}, "", err
		}
		log.Info("transport: noise identity", "peer_id", id, "validator_peer_id", tgt.peer.String())
	}
	return tgt, p, nil
}

// logDialFailure logs handshake failures (a foreign or misconfigured peer)
// every time, and plain connect failures (node down) only now and then.
func logDialFailure(log *slog.Logger, err error, failures int) {
	var he *handshakeError
	switch {
	case errors.As(err, &he):
		log.Warn("transport: handshake failed", "err", err, "failures", failures)
	case failures == 1 || failures%connectFailureLogEvery == 0:
		log.Warn("transport: connect failed", "err", err, "failures", failures)
	default:
		log.Debug("transport: connect failed", "err", err, "failures", failures)
	}
}

func logDisconnect(log *slog.Logger, err error, served int) {
	switch {
	case errors.Is(err, errMalformed):
		log.Warn("transport: dropping connection", "err", err, "served", served)
	case served == 0:
		// Most often the node refusing us after all (e.g. a noise
		// allow-list that noticed too late for dialNoise to see it).
		log.Warn("transport: connection closed before any request", "err", err)
	default:
		log.Info("transport: disconnected", "err", err, "served", served)
	}
}

// serveConn runs the request/response loop on conn, in the wire format of
// protocol p, until it fails or ctx is done, and always closes conn. It
// returns the number of requests answered.
func serveConn(ctx context.Context, conn net.Conn, chainID string, p Protocol, h Handler, o Options) (served int, err error) {
	// Closing from ctx is the only way to interrupt a Read that is blocked
	// waiting for the node's next request.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer func() {
		stop()
		_ = conn.Close()
	}()

	c := newCodec(p, conn, o.MaxFrameSize)
	w := protoio.NewDelimitedWriter(conn)

	for {
		if err := conn.SetReadDeadline(time.Now().Add(o.ReadTimeout)); err != nil {
			return served, fmt.Errorf("transport: set read deadline: %w", err)
		}
		in, err := c.read()
		if err != nil {
			return served, err
		}
		resp, err := answer(ctx, c, in, chainID, h, o.Logger)
		if err != nil {
			return served, err
		}
		if err := conn.SetWriteDeadline(time.Now().Add(o.WriteTimeout)); err != nil {
			return served, fmt.Errorf("transport: set write deadline: %w", err)
		}
		if _, err := w.WriteMsg(resp); err != nil {
			return served, fmt.Errorf("transport: write response: %w", err)
		}
		served++
	}
}

// answer returns the wire answer to one request: the transport's own
// (in.reply) or the Handler's, encoded by the line's codec. An error means
// no answer may be sent and the connection must drop.
func answer(ctx context.Context, c codec, in inbound, chainID string, h Handler, log *slog.Logger) (gogoproto.Message, error) {
	if in.reply != nil {
		log.Warn("transport: refused a request kms-ha does not serve; the connection stays up",
			"chain", chainID, "request", in.replyTo)
		return in.reply, nil
	}
	hctx := ctx
	if in.skipExtension {
		hctx = voteext.Skip(ctx)
	}
	resp := h.Handle(hctx, chainID, in.msg)
	if ctx.Err() != nil {
		// Leadership may be gone: do not hand out a response, even one the
		// handler produced just before cancellation.
		return nil, ctx.Err()
	}
	if resp.Sum == nil {
		// The handler chose not to answer (e.g. it lost leadership while
		// the request waited): dropping the connection makes the node
		// retry, where an error reply would fail its sign call.
		return nil, fmt.Errorf("transport: %w: no answer for %T", errMalformed, in.msg.Sum)
	}
	return c.encode(resp)
}
