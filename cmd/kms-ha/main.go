// Command kms-ha is a highly available remote signer for CometBFT
// validators: a Raft cluster that commits each height/round/step before
// signing it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"
	"github.com/urfave/cli/v2"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/node"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// IdentityFile is the SecretConnection identity written by init.
const IdentityFile = "identity.json"

func usageError(c *cli.Context, err error, _ bool) error {
	return cli.Exit(fmt.Sprintf("kms-ha: %v (see %s --help)", err, c.Command.HelpName), 2)
}

var homeFlag = &cli.StringFlag{Name: "home", Usage: "directory holding kms.yaml, identity.json and raft data"}

func main() {
	app := &cli.App{
		Name:         "kms-ha",
		Usage:        "highly available remote signer for CometBFT validators",
		Version:      versionString(),
		OnUsageError: usageError,
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "kms-ha: unknown command %q (see kms-ha --help)\n", name)
			os.Exit(2)
		},
		HideHelpCommand: true,
		Commands: []*cli.Command{
			initCmd(), certsCmd(), bootstrapCmd(), startCmd(), joinCmd(), statusCmd(), stateCmd(),
			transferCmd(), removeCmd(), leaveCmd(), snapshotCmd(), recoverCmd(), peerIDCmd(), versionCmd(), configCmd(),
			healthcheckCmd(),
		},
		ExitErrHandler: func(c *cli.Context, err error) {
			if err == nil {
				return
			}
			var ec cli.ExitCoder
			if errors.As(err, &ec) {
				if msg := ec.Error(); msg != "" {
					fmt.Fprintln(os.Stderr, msg)
				}
				os.Exit(ec.ExitCode())
			}
			fmt.Fprintf(os.Stderr, "kms-ha: %v\n", err)
			os.Exit(1)
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = usageError
		for _, sc := range c.Subcommands {
			sc.OnUsageError = usageError
		}
	}
	if err := app.Run(os.Args); err != nil {
		// ExitErrHandler exits; this covers errors raised before it runs
		// (e.g. a missing required flag).
		fmt.Fprintf(os.Stderr, "kms-ha: %v\n", err)
		os.Exit(2)
	}
}

func versionCmd() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			fmt.Println(versionString())
			return nil
		},
	}
}

func initCmd() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "write a commented kms.yaml and a fresh identity.json into --home",
		Flags: []cli.Flag{
			homeFlag,
			&cli.StringFlag{Name: "node-id", Usage: "unique name of this node in the cluster"},
			&cli.StringFlag{Name: "raft-addr", Value: "127.0.0.1:7001", Usage: "raft listen address HOST:PORT"},
			&cli.StringFlag{Name: "api-addr", Value: "127.0.0.1:7101", Usage: "cluster API listen address HOST:PORT"},
		},
		Action: func(c *cli.Context) error {
			if err := need(c, "home", "node-id"); err != nil {
				return err
			}
			home := c.String("home")
			cfgPath := filepath.Join(home, config.FileName)
			idPath := filepath.Join(home, IdentityFile)
			for _, p := range []string{cfgPath, idPath} {
				if _, err := os.Stat(p); err == nil {
					return cli.Exit(fmt.Sprintf("kms-ha init: %s already exists; refusing to overwrite it", p), 1)
				}
			}
			params := config.TemplateParams{NodeID: c.String("node-id"), RaftAddr: c.String("raft-addr"), APIAddr: c.String("api-addr")}
			tmpl := config.Template(params)
			// The template must load: a node id or address the validator
			// rejects is reported now, not at first start.
			if _, err := config.Parse(tmpl, home); err != nil {
				return cli.Exit(fmt.Sprintf("kms-ha init: %v", strings.ReplaceAll(err.Error(), "\n", "\n  ")), 2)
			}
			if err := os.MkdirAll(home, 0o700); err != nil {
				return fmt.Errorf("init: create %s: %w", home, err)
			}
			if err := writeNew(cfgPath, tmpl); err != nil {
				return err
			}
			nk := &p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}
			if err := nk.SaveAs(idPath); err != nil {
				return fmt.Errorf("init: write %s: %w", idPath, err)
			}
			fmt.Printf("wrote %s\nwrote %s (SecretConnection identity, node id %s)\n", cfgPath, idPath, nk.ID())
			fmt.Printf("next: give the node a certificate from the cluster CA (kms-ha certs issue ... --out %s), edit %s "+
				"(chains, validators, keys), then `kms-ha bootstrap --home %s` on the first node only\n",
				filepath.Join(home, "tls"), cfgPath, home)
			return nil
		},
	}
}

func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// need checks required flags itself: urfave/cli would print the whole help
// page for a missing one, and an operator wants one line.
func need(c *cli.Context, names ...string) error {
	for _, n := range names {
		if !c.IsSet(n) || c.String(n) == "" {
			return cli.Exit(fmt.Sprintf("kms-ha %s: --%s is required (see kms-ha %s --help)", c.Command.Name, n, c.Command.Name), 2)
		}
	}
	return nil
}

func loadConfig(c *cli.Context) (*config.Config, error) {
	if err := need(c, "home"); err != nil {
		return nil, err
	}
	cfg, err := config.Load(c.String("home"))
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("kms-ha: %v", strings.ReplaceAll(err.Error(), "\n", "\n  ")), 2)
	}
	return cfg, nil
}

func bootstrapCmd() *cli.Command {
	return &cli.Command{
		Name:  "bootstrap",
		Usage: "write the first raft configuration (run once, on one node, before its first start)",
		Flags: []cli.Flag{
			homeFlag,
			&cli.StringFlag{Name: "peers", Usage: "initial voters as ID=HOST:PORT,... (raft addresses, this node included); default: this node alone"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			servers, err := parsePeers(c.String("peers"))
			if err != nil {
				return cli.Exit(fmt.Sprintf("kms-ha bootstrap: --peers: %v", err), 2)
			}
			err = node.Bootstrap(cfg, servers, quietLogger())
			if errors.Is(err, node.ErrPeerRunning) {
				return cli.Exit(fmt.Sprintf("kms-ha bootstrap: %v, so this cluster exists; bootstrap only creates a new cluster. "+
					"To add this node (or re-add it after losing its data) use `kms-ha join`", err), 1)
			}
			if errors.Is(err, cluster.ErrAlreadyBootstrapped) {
				return cli.Exit(fmt.Sprintf("kms-ha bootstrap: %s already holds raft state; this node is bootstrapped or joined already. "+
					"Start it with `kms-ha start`; to add nodes use `kms-ha join`.", cfg.Cluster.DataDir), 1)
			}
			if err != nil {
				return err
			}
			if len(servers) == 0 {
				fmt.Printf("bootstrapped a one-node cluster: %s at %s\n", cfg.Cluster.NodeID, cfg.Cluster.AdvertiseAddr)
			} else {
				fmt.Printf("bootstrapped a cluster of %d voters\n", len(servers))
			}
			fmt.Printf("next: kms-ha start --home %s\n", c.String("home"))
			return nil
		},
	}
}

func parsePeers(s string) ([]cluster.Server, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []cluster.Server
	for _, p := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("%q is not ID=HOST:PORT", p)
		}
		out = append(out, cluster.Server{ID: id, Address: addr})
	}
	return out, nil
}

func startCmd() *cli.Command {
	return &cli.Command{
		Name:  "start",
		Usage: "run the node until SIGINT or SIGTERM",
		Flags: []cli.Flag{
			homeFlag,
			&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error (overrides kms.yaml)"},
			&cli.StringFlag{Name: "log-format", Usage: "text or json (overrides kms.yaml)"},
			&cli.StringSliceFlag{Name: "allow-fresh-state", Usage: "CHAIN_ID that may start signing from an empty watermark " +
				"(only for a validator key that has never signed); repeat per chain"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			level, format := cfg.Log.Level, cfg.Log.Format
			if v := c.String("log-level"); v != "" {
				level = v
			}
			if v := c.String("log-format"); v != "" {
				format = v
			}
			log, err := newLogger(os.Stderr, level, format)
			if err != nil {
				return cli.Exit(fmt.Sprintf("kms-ha start: %v", err), 2)
			}
			slog.SetDefault(log)
			// Signals are caught before the node starts, so a SIGTERM during
			// startup still goes through the orderly stop; after the first
			// signal the default action returns, so a second one kills a
			// stop that hangs.
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go func() { <-ctx.Done(); stop() }()
			n, err := node.New(cfg, node.Options{AllowFreshState: c.StringSlice("allow-fresh-state"), Version: versionString()}, log.With("node_id", cfg.Cluster.NodeID))
			if err != nil {
				return err
			}
			return n.Run(ctx)
		},
	}
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use text or json", format)
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

var clusterFlag = &cli.StringFlag{Name: "cluster", Usage: "API address HOST:PORT of any running member"}

func joinCmd() *cli.Command {
	return &cli.Command{
		Name:  "join",
		Usage: "ask a running member to add the node at --home as a voter (forwarded to the leader)",
		Flags: []cli.Flag{
			homeFlag, clusterFlag,
			&cli.DurationFlag{Name: "timeout", Value: 15 * time.Second, Usage: "give up after this long"},
		},
		Action: func(c *cli.Context) error {
			if err := need(c, "cluster"); err != nil {
				return err
			}
			if err := checkClusterAddr(c); err != nil {
				return err
			}
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.Duration("timeout"))
			defer cancel()
			res, err := node.Join(ctx, cfg, c.String("cluster"), quietLogger())
			if err != nil {
				return cli.Exit(fmt.Sprintf("kms-ha join: %v", err), 1)
			}
			switch res.Outcome {
			case node.JoinedVoter:
				fmt.Printf("%s is a voter of the cluster (leader %s)\n", cfg.Cluster.NodeID, res.Leader)
			case node.JoinedNotRunning:
				fmt.Printf("%s is admitted (leader %s); start it with `kms-ha start --home %s`: it becomes a voter once it has caught up\n",
					cfg.Cluster.NodeID, res.Leader, c.String("home"))
			}
			return nil
		},
	}
}

// statusJSON is the stable shape of `status --json`.
type statusJSON struct {
	NodeID        string `json:"node_id"`
	State         string `json:"state"`
	LeaderID      string `json:"leader_id"`
	LeaderAPIAddr string `json:"leader_api_addr"`
	Term          uint64 `json:"term"`
	CommitIndex   uint64 `json:"commit_index"`
	AppliedIndex  uint64 `json:"applied_index"`
	LastContact   string `json:"last_contact"`
	LastContactMs int64  `json:"last_contact_ms"`
	Linearizable  bool   `json:"linearizable"`
	// HealthKnown: the answer is the leader's, and the members' health
	// fields are its knowledge; otherwise HealthNote says where to ask.
	HealthKnown    bool           `json:"health_known"`
	HealthNote     string         `json:"health_note,omitempty"`
	FaultTolerance *int32         `json:"fault_tolerance"`
	Members        []memberJSON   `json:"members"`
	Chains         []watermarkOut `json:"chains"`
	Keys           []keyOut       `json:"keys"`
}

type memberJSON struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	Role     string `json:"role"`
	Suffrage string `json:"suffrage"`
	Level    int32  `json:"level"`
	// Health is "healthy", "unreachable" or "unknown" (a follower's
	// answer); the pointers are null when the answering node cannot know.
	Health        string  `json:"health"`
	LastContactMs *int64  `json:"last_contact_ms"`
	AppliedIndex  *uint64 `json:"applied_index"`
	AppliedLag    *uint64 `json:"applied_lag"`
}

type watermarkOut struct {
	ChainID string `json:"chain_id"`
	Height  int64  `json:"height"`
	Round   int32  `json:"round"`
	Step    int32  `json:"step"`
}

type keyOut struct {
	ChainID string `json:"chain_id"`
	KeyType string `json:"key_type"`
	PubKey  string `json:"pub_key"`
}

func fetchStatus(c *cli.Context, linearizable bool) (*clusterpb.StatusResponse, error) {
	d, addr, err := apiClient(c)
	if err != nil {
		return nil, err
	}
	var r *clusterpb.StatusResponse
	err = d.Call(addr, 5*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
		var err error
		r, err = cl.Status(ctx, &clusterpb.StatusRequest{Linearizable: linearizable})
		return err
	})
	if err != nil {
		return nil, fail(c, err)
	}
	return r, nil
}

func statusCmd() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show members, leader, raft indexes, every chain's watermark and key, as the node at --cluster (or --home) sees them",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "linearizable", Usage: "answer only after the leader confirmed it leads (fails without a quorum)"},
		}, apiFlags...),
		Action: func(c *cli.Context) error {
			r, err := fetchStatus(c, c.Bool("linearizable"))
			if err != nil {
				return err
			}
			out := statusJSON{
				NodeID: r.GetNodeId(), State: r.GetState(), LeaderID: r.GetLeaderId(), LeaderAPIAddr: r.GetLeaderApiAddr(),
				Term: r.GetTerm(), CommitIndex: r.GetCommitIndex(), AppliedIndex: r.GetAppliedIndex(), LastContact: r.GetLastContact(),
				LastContactMs: r.GetLastContactMs(), Linearizable: r.GetLinearizable(),
				Members: []memberJSON{}, Chains: []watermarkOut{}, Keys: []keyOut{},
			}
			setHealthJSON(&out, r)
			for _, w := range r.GetChains() {
				out.Chains = append(out.Chains, watermarkOut{w.GetChainId(), w.GetHeight(), w.GetRound(), w.GetStep()})
			}
			for _, k := range r.GetKeys() {
				out.Keys = append(out.Keys, keyOut{k.GetChainId(), k.GetKeyType(), fmt.Sprintf("%X", k.GetPubKey())})
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			printStatus(os.Stdout, out)
			if out.State != grpcapi.StateAwaitingJoin {
				printMissingWatermarks(os.Stdout, configuredChains(c), out.Chains, c.String("home"))
			}
			return nil
		},
	}
}

func printStatus(w io.Writer, s statusJSON) {
	if s.State == grpcapi.StateAwaitingJoin {
		fmt.Fprintf(w, "node %s: %s\n", s.NodeID, node.AwaitingJoinHint(""))
		return
	}
	leader := s.LeaderID
	if leader == "" {
		leader = "(none known)"
	}
	read := "local read"
	if s.Linearizable {
		read = "linearizable read"
	}
	fmt.Fprintf(w, "node %s (%s), leader %s, term %d, commit %d, applied %d, last contact %dms (%s)\n",
		s.NodeID, strings.ToLower(s.State), leader, s.Term, s.CommitIndex, s.AppliedIndex, s.LastContactMs, read)
	if !slices.ContainsFunc(s.Members, func(m memberJSON) bool { return m.ID == s.NodeID }) && len(s.Members) > 0 {
		fmt.Fprintf(w, "node %s is NOT a member of this cluster (it was removed, or its admission has not reached it): "+
			"it does not vote or sign. Stop it; to bring it back, move its data_dir away and run kms-ha join\n", s.NodeID)
	}
	fmt.Fprintln(w)
	printMembers(w, s)
	fmt.Fprintln(w)
	if len(s.Chains) == 0 {
		fmt.Fprintln(w, "no chain has a watermark yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	keys := map[string]string{}
	for _, k := range s.Keys {
		keys[k.ChainID] = k.KeyType + " " + shortKey(k.PubKey)
	}
	fmt.Fprintln(tw, "CHAIN\tHEIGHT\tROUND\tSTEP\tKEY")
	for _, c := range s.Chains {
		step := fsm.StepName(int8(c.Step))
		if c.Step == 0 {
			step = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", c.ChainID, c.Height, c.Round, step, cmp(keys[c.ChainID], "(not recorded)"))
	}
	tw.Flush()
}

// shortKey abbreviates a hex public key longer than a secp256k1 one (an
// ML-DSA-65 key is 1952 bytes) for the status table; --json has it whole.
func shortKey(hexKey string) string {
	if len(hexKey) <= 66 {
		return hexKey
	}
	return fmt.Sprintf("%s...%s (%d bytes; --json shows it whole)", hexKey[:16], hexKey[len(hexKey)-8:], len(hexKey)/2)
}
