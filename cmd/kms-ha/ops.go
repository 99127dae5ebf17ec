package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cometbft/cometbft/p2p"
	"github.com/urfave/cli/v2"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/node"
	"github.com/kms-ha/kms-ha/pki"
	"github.com/kms-ha/kms-ha/stateimport"
	"github.com/kms-ha/kms-ha/transport"
)

// Flags of every command that calls the cluster API: the node's --home
// supplies the TLS files (and, without --cluster, the address); the --tls-*
// flags serve an operator's workstation that holds a certificate of its own.
var (
	tlsCAFlag   = &cli.StringFlag{Name: "tls-ca", Usage: "cluster CA certificate (default: from --home's kms.yaml)"}
	tlsCertFlag = &cli.StringFlag{Name: "tls-cert", Usage: "client certificate issued by the cluster CA (default: from --home)"}
	tlsKeyFlag  = &cli.StringFlag{Name: "tls-key", Usage: "key of --tls-cert (default: from --home)"}
	apiFlags    = []cli.Flag{homeFlag, clusterFlag, tlsCAFlag, tlsCertFlag, tlsKeyFlag}
	forceFlag   = &cli.BoolFlag{Name: "force", Usage: "raise a watermark by more than the cluster's max_import_jump heights at once"}
)

// apiClient resolves the API address and the client TLS of a command.
func apiClient(c *cli.Context) (grpcapi.Dialer, string, error) {
	addr := c.String("cluster")
	files := pki.Files{CA: c.String("tls-ca"), Cert: c.String("tls-cert"), Key: c.String("tls-key")}
	if c.String("home") != "" {
		cfg, err := config.Load(c.String("home"))
		if err != nil {
			return grpcapi.Dialer{}, "", cli.Exit(fmt.Sprintf("%s: %v", c.Command.HelpName, strings.ReplaceAll(err.Error(), "\n", "\n  ")), 2)
		}
		if addr == "" {
			addr = cfg.Cluster.APIAddr
		}
		d := node.TLSFiles(cfg)
		files.CA = cmp(files.CA, d.CA)
		files.Cert = cmp(files.Cert, d.Cert)
		files.Key = cmp(files.Key, d.Key)
	}
	if addr == "" {
		return grpcapi.Dialer{}, "", cli.Exit(fmt.Sprintf("%s: --cluster HOST:PORT is required (or --home of a node, to use its own API address)", c.Command.HelpName), 2)
	}
	if err := checkClusterAddr(c); err != nil {
		return grpcapi.Dialer{}, "", err
	}
	if files.CA == "" || files.Cert == "" || files.Key == "" {
		return grpcapi.Dialer{}, "", cli.Exit(fmt.Sprintf("%s: the cluster API needs a client certificate: give --home of a node, "+
			"or --tls-ca, --tls-cert and --tls-key", c.Command.HelpName), 2)
	}
	tc, err := pki.ClientConfig(files, "")
	if err != nil {
		return grpcapi.Dialer{}, "", cli.Exit(fmt.Sprintf("%s: %v", c.Command.HelpName, err), 2)
	}
	return grpcapi.Dialer{TLS: tc}, addr, nil
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func fail(c *cli.Context, err error) error {
	return cli.Exit(fmt.Sprintf("%s: %v", c.Command.HelpName, err), 1)
}

func certsCmd() *cli.Command {
	return &cli.Command{
		Name:  "certs",
		Usage: "create the cluster CA and node certificates for mutual TLS",
		Subcommands: []*cli.Command{
			{
				Name:  "ca",
				Usage: "create a cluster CA (ca.crt, ca.key) in a new directory; keep ca.key off the nodes",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Usage: "directory to create the CA in"},
					&cli.StringFlag{Name: "name", Usage: "common name of the CA (tells clusters apart)"},
				},
				Action: func(c *cli.Context) error {
					if err := need(c, "out"); err != nil {
						return err
					}
					if err := pki.CreateCA(c.String("out"), pki.CAOptions{CommonName: c.String("name")}); err != nil {
						return fail(c, err)
					}
					fmt.Printf("wrote %s and %s\nnext: kms-ha certs issue --ca %s --node-id ID --host HOST_OR_IP --out NODE_HOME/tls\n",
						filepath.Join(c.String("out"), pki.CACertFile), filepath.Join(c.String("out"), pki.CAKeyFile), c.String("out"))
					return nil
				},
			},
			{
				Name: "issue",
				Usage: "issue a node certificate (--node-id: server and client, speaks raft while a member) or an operator " +
					"certificate (--operator: client only, for a workstation or automation; --read-only for monitoring), " +
					"and copy ca.crt beside it",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "ca", Usage: "the CA directory (from certs ca)"},
					&cli.StringFlag{Name: "node-id", Usage: "the node's cluster.node_id"},
					&cli.StringSliceFlag{Name: "host", Usage: "a DNS name or IP the node is reached at (raft and API); repeat for each"},
					&cli.StringFlag{Name: "operator", Usage: "NAME of an operator certificate (a person, host or tool), instead of --node-id"},
					&cli.BoolFlag{Name: "read-only", Usage: "with --operator: the certificate may only read (status, watermarks, keys)"},
					&cli.StringFlag{Name: "out", Usage: "directory for the certificate, its key and ca.crt (e.g. NODE_HOME/tls)"},
				},
				Action: certsIssue,
			},
		},
	}
}

func certsIssue(c *cli.Context) error {
	nodeID, op := c.String("node-id"), c.String("operator")
	if (nodeID == "") == (op == "") {
		return cli.Exit("kms-ha certs issue: give exactly one of --node-id ID (a signer node) and --operator NAME (a workstation or tool)", 2)
	}
	if err := need(c, "ca", "out"); err != nil {
		return err
	}
	hosts := c.StringSlice("host")
	var written []string
	switch {
	case op != "":
		if len(hosts) > 0 {
			return cli.Exit("kms-ha certs issue: --host is for node certificates; an operator certificate only dials", 2)
		}
		if err := pki.IssueOperator(c.String("ca"), pki.OperatorOptions{Name: op, ReadOnly: c.Bool("read-only"), OutDir: c.String("out")}); err != nil {
			return fail(c, err)
		}
		written = []string{pki.OperatorCertFile, pki.OperatorKeyFile}
	default:
		if c.Bool("read-only") {
			return cli.Exit("kms-ha certs issue: --read-only is for operator certificates (--operator NAME)", 2)
		}
		if len(hosts) == 0 {
			return cli.Exit("kms-ha certs issue: --host is required: every DNS name or IP the other nodes and your tools use to reach this node", 2)
		}
		if err := pki.Issue(c.String("ca"), pki.IssueOptions{NodeID: nodeID, Hosts: hosts, OutDir: c.String("out")}); err != nil {
			return fail(c, err)
		}
		written = []string{pki.NodeCertFile, pki.NodeKeyFile}
	}
	caDst := filepath.Join(c.String("out"), pki.CACertFile)
	if _, err := os.Stat(caDst); errors.Is(err, os.ErrNotExist) {
		data, err := os.ReadFile(filepath.Join(c.String("ca"), pki.CACertFile))
		if err != nil {
			return fail(c, err)
		}
		if err := os.WriteFile(caDst, data, 0o644); err != nil {
			return fail(c, err)
		}
	}
	certPath, keyPath := filepath.Join(c.String("out"), written[0]), filepath.Join(c.String("out"), written[1])
	if op != "" {
		role := "operator"
		if c.Bool("read-only") {
			role = "read-only operator"
		}
		fmt.Printf("wrote %s, %s and %s for %s %s\nuse: kms-ha status --cluster NODE_API_ADDR --tls-ca %s --tls-cert %s --tls-key %s\n",
			certPath, keyPath, caDst, role, op, caDst, certPath, keyPath)
		return nil
	}
	fmt.Printf("wrote %s, %s and %s for node %s (hosts %s)\n", certPath, keyPath, caDst, nodeID, strings.Join(hosts, ", "))
	return nil
}

func removeCmd() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "remove a member from the cluster (forwarded to the leader; a leader hands leadership over first)",
		ArgsUsage: "NODE_ID",
		Flags:     apiFlags,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("kms-ha remove: give exactly one NODE_ID (see kms-ha remove --help)", 2)
			}
			d, addr, err := apiClient(c)
			if err != nil {
				return err
			}
			id := c.Args().First()
			var leader string
			err = d.Call(addr, 15*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
				r, err := cl.Remove(ctx, &clusterpb.RemoveRequest{Id: id})
				leader = r.GetLeaderId()
				return err
			})
			if err != nil {
				return fail(c, err)
			}
			fmt.Printf("removed %s (leader %s); stop it, and wipe its data_dir before it ever joins again\n", id, leader)
			return nil
		},
	}
}

func leaveCmd() *cli.Command {
	return &cli.Command{
		Name:  "leave",
		Usage: "take the node at --home out of the cluster (it hands leadership over first if it leads)",
		Flags: []cli.Flag{homeFlag},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			leader, err := node.Leave(ctx, cfg, quietLogger())
			if err != nil {
				return fail(c, err)
			}
			fmt.Printf("%s left the cluster (leader %s); stop it now. To bring it back, wipe %s and run kms-ha join\n",
				cfg.Cluster.NodeID, leader, cfg.Cluster.DataDir)
			return nil
		},
	}
}

func transferCmd() *cli.Command {
	return &cli.Command{
		Name:  "transfer-leadership",
		Usage: "hand leadership to another voter (the most up-to-date one, or --to)",
		Flags: append([]cli.Flag{&cli.StringFlag{Name: "to", Usage: "node id of the new leader"}}, apiFlags...),
		Action: func(c *cli.Context) error {
			d, addr, err := apiClient(c)
			if err != nil {
				return err
			}
			var next string
			err = d.Call(addr, 15*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
				r, err := cl.TransferLeadership(ctx, &clusterpb.TransferLeadershipRequest{To: c.String("to")})
				next = r.GetNewLeaderId()
				return err
			})
			if err != nil {
				return fail(c, err)
			}
			if to := c.String("to"); to != "" && next != to {
				return cli.Exit(fmt.Sprintf("kms-ha transfer-leadership: %s did not keep leadership (it refused to lead or lost the "+
					"election; see its log and /readyz); the leader is now %s", to, next), 1)
			}
			fmt.Printf("leader is now %s\n", next)
			return nil
		},
	}
}

func hrsText(w *clusterpb.ChainWatermark) string {
	if w == nil {
		return "none"
	}
	if w.GetHeight() == 0 && w.GetStep() == 0 {
		return "empty (fresh)"
	}
	return fsm.HRS{Height: w.GetHeight(), Round: w.GetRound(), Step: int8(w.GetStep())}.String()
}

func stateCmd() *cli.Command {
	return &cli.Command{
		Name:  "state",
		Usage: "import a validator's signing state, or show the cluster's watermarks",
		Subcommands: []*cli.Command{
			{
				Name: "import",
				Usage: "raise a chain's watermark to the state in FILE (priv_validator_state.json, tmkms or horcrux state); " +
					"never lowers it",
				ArgsUsage: "FILE",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "chain", Usage: "chain id"},
					&cli.StringFlag{Name: "format", Value: "auto", Usage: "auto, cometbft, tmkms or horcrux"},
					forceFlag,
				}, apiFlags...),
				Action: stateImport,
			},
			{
				Name:  "show",
				Usage: "print every chain's watermark as the node at --cluster holds it",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "chain", Usage: "only this chain"},
					&cli.BoolFlag{Name: "linearizable", Usage: "answer only after the leader confirmed it leads (fails without a quorum)"},
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
				}, apiFlags...),
				Action: stateShow,
			},
		},
	}
}

// stateImport raises a chain's watermark to a state file's through the
// cluster API; it never lowers one.
func stateImport(c *cli.Context) error {
	if err := need(c, "chain"); err != nil {
		return err
	}
	if c.NArg() != 1 {
		return cli.Exit("kms-ha state import: give the state FILE (see kms-ha state import --help)", 2)
	}
	if h := c.String("home"); h != "" {
		if cfg, err := config.Load(h); err == nil && !slices.ContainsFunc(cfg.Chains, func(ch config.Chain) bool { return ch.ID == c.String("chain") }) {
			return cli.Exit(fmt.Sprintf("kms-ha state import: chain %q is not under chains in %s; check the chain id "+
				"(a watermark cannot be removed once imported). Nothing was imported.", c.String("chain"), filepath.Join(h, config.FileName)), 2)
		}
	}
	st, err := stateimport.ParseFile(c.Args().First(), c.String("format"))
	if err != nil {
		return cli.Exit(fmt.Sprintf("kms-ha state import: %v; nothing was imported", err), 2)
	}
	d, addr, err := apiClient(c)
	if err != nil {
		return err
	}
	var r *clusterpb.ImportStateResponse
	err = d.Call(addr, 10*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
		var err error
		r, err = cl.ImportState(ctx, &clusterpb.ImportStateRequest{ChainId: c.String("chain"), Height: st.Height,
			Round: st.Round, Step: int32(st.Step), SignBytes: st.SignBytes, Source: st.Format, Force: c.Bool("force")})
		return err
	})
	if err != nil {
		return fail(c, err)
	}
	req := fsm.HRS{Height: st.Height, Round: st.Round, Step: st.Step}
	if !r.GetApplied() {
		return cli.Exit(fmt.Sprintf("kms-ha state import: refused: the cluster's watermark for %s is %s, at or above the file's %s "+
			"(%s state); an import never lowers a watermark. Nothing changed.", c.String("chain"), hrsText(r.GetCurrent()), req, st.Format), 1)
	}
	fmt.Printf("chain %s: watermark raised from %s to %s (%s state, sign bytes %s)\n", c.String("chain"),
		hrsText(r.GetPrevious()), hrsText(r.GetCurrent()), st.Format, map[bool]string{true: "included", false: "absent"}[len(st.SignBytes) > 0])
	return nil
}

// stateShow prints the watermarks of the node at --cluster.
func stateShow(c *cli.Context) error {
	r, err := fetchStatus(c, c.Bool("linearizable"))
	if err != nil {
		return err
	}
	all := []watermarkOut{}
	for _, w := range r.GetChains() {
		all = append(all, watermarkOut{w.GetChainId(), w.GetHeight(), w.GetRound(), w.GetStep()})
	}
	out := all
	if chain := c.String("chain"); chain != "" {
		out = slices.DeleteFunc(slices.Clone(all), func(w watermarkOut) bool { return w.ChainID != chain })
		if len(out) == 0 {
			return cli.Exit("kms-ha state show: "+noWatermarkFor(chain, all), 1)
		}
	}
	if c.Bool("json") {
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	if len(out) == 0 {
		// On stderr: a script reading the CHAIN<TAB>HRS lines gets none.
		fmt.Fprintln(os.Stderr, "no chain has a watermark yet")
		printMissingWatermarks(os.Stderr, configuredChains(c), out, c.String("home"))
		return nil
	}
	for _, w := range out {
		fmt.Printf("%s\t%s\n", w.ChainID, hrsText(&clusterpb.ChainWatermark{Height: w.Height, Round: w.Round, Step: w.Step}))
	}
	return nil
}

func snapshotCmd() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "back up the replicated state, or restore watermarks from a backup",
		Subcommands: []*cli.Command{
			{
				Name:      "save",
				Usage:     "write the cluster's state (read linearizably on the leader) to FILE",
				ArgsUsage: "FILE",
				Flags:     apiFlags,
				Action:    snapshotSave,
			},
			{
				Name: "restore",
				Usage: "raise each chain's watermark to the backup's (an import per chain: it never lowers one); " +
					"membership is not restored",
				ArgsUsage: "FILE",
				Flags:     append([]cli.Flag{forceFlag}, apiFlags...),
				Action:    snapshotRestore,
			},
		},
	}
}

// snapshotSave writes the cluster's state, read linearizably on the
// leader, to a new file.
func snapshotSave(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("kms-ha snapshot save: give the output FILE", 2)
	}
	d, addr, err := apiClient(c)
	if err != nil {
		return err
	}
	var r *clusterpb.BackupResponse
	err = d.Call(addr, 10*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
		var err error
		r, err = cl.Backup(ctx, &clusterpb.BackupRequest{})
		return err
	})
	if err != nil {
		return fail(c, err)
	}
	if err := writeNew(c.Args().First(), r.GetState()); err != nil {
		return fail(c, err)
	}
	st, _ := fsm.DecodeState(r.GetState())
	fmt.Printf("wrote %s: %d chains at raft index %d (leader %s)\n", c.Args().First(), len(st.Chains), r.GetIndex(), r.GetLeaderId())
	return nil
}

// snapshotRestore imports each chain's watermark from a backup, one
// import per chain, in chain id order.
func snapshotRestore(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("kms-ha snapshot restore: give the backup FILE", 2)
	}
	data, err := os.ReadFile(c.Args().First())
	if err != nil {
		return fail(c, err)
	}
	st, err := fsm.DecodeState(data)
	if err != nil {
		return cli.Exit(fmt.Sprintf("kms-ha snapshot restore: %s is not a kms-ha backup: %v", c.Args().First(), err), 2)
	}
	d, addr, err := apiClient(c)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(st.Chains))
	for id := range st.Chains {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		w := st.Chains[id]
		var r *clusterpb.ImportStateResponse
		err = d.Call(addr, 10*time.Second, func(ctx context.Context, cl clusterpb.ClusterClient) error {
			var err error
			r, err = cl.ImportState(ctx, &clusterpb.ImportStateRequest{ChainId: id, Height: w.Height, Round: w.Round,
				Step: int32(w.Step), SignBytes: w.SignBytes, Source: "backup", Force: c.Bool("force")})
			return err
		})
		if err != nil {
			return fail(c, fmt.Errorf("chain %s: %w", id, err))
		}
		if r.GetApplied() {
			fmt.Printf("%s: raised to %s\n", id, hrsText(r.GetCurrent()))
		} else {
			fmt.Printf("%s: kept %s (the backup's %s is not above it)\n", id, hrsText(r.GetCurrent()), w.HRS)
		}
	}
	return nil
}

func recoverCmd() *cli.Command {
	return &cli.Command{
		Name: "recover",
		Usage: "lost quorum: make the STOPPED node at --home a one-node cluster holding every watermark in its log " +
			"(without --force, only show what it holds)",
		Flags: []cli.Flag{homeFlag, &cli.BoolFlag{Name: "force", Usage: "rewrite the raft configuration (read the README's warnings first)"}},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			cc := node.ClusterConfig(cfg, quietLogger())
			var rec cluster.Recovery
			if c.Bool("force") {
				rec, err = cluster.RecoverSingle(cc)
			} else {
				rec, err = cluster.Inspect(cc)
			}
			if errors.Is(err, cluster.ErrLocked) {
				return cli.Exit("kms-ha recover: the node is running; stop it first (and make sure no other member is running)", 1)
			}
			if err != nil {
				return fail(c, err)
			}
			printRecovery(os.Stdout, rec)
			if !c.Bool("force") {
				fmt.Println("\nnothing changed. Run this on every surviving node and recover the one with the highest last index; " +
					"see README \"Lost quorum\" before adding --force.")
				return nil
			}
			fmt.Printf("\n%s is now a one-node cluster. Start it, check `kms-ha status`, then add new members with empty data dirs "+
				"(kms-ha join). Never start the lost members with their old data.\n", cfg.Cluster.NodeID)
			return nil
		},
	}
}

func printRecovery(w io.Writer, r cluster.Recovery) {
	fmt.Fprintf(w, "last log index %d, term %d\nconfiguration:\n", r.LastIndex, r.LastTerm)
	for _, s := range r.Servers {
		fmt.Fprintf(w, "  %s %s %s\n", s.ID, s.Address, s.Suffrage)
	}
	fmt.Fprintln(w, "watermarks (including entries not known to be committed):")
	ids := make([]string, 0, len(r.State.Chains))
	for id := range r.State.Chains {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(w, "  %s %s\n", id, r.State.Chains[id].HRS)
	}
}

func peerIDCmd() *cli.Command {
	return &cli.Command{
		Name:  "peer-id",
		Usage: "print the libp2p peer ID of this node's identity (for the validator's noise:// priv_validator_laddr)",
		Flags: []cli.Flag{homeFlag, &cli.StringFlag{Name: "identity", Usage: "identity file (default: --home/identity.json)"}},
		Action: func(c *cli.Context) error {
			path := c.String("identity")
			if path == "" {
				if err := need(c, "home"); err != nil {
					return err
				}
				path = filepath.Join(c.String("home"), IdentityFile)
				// The identity the node dials noise:// validators with.
				if cfg, err := config.Load(c.String("home")); err == nil {
					for _, v := range cfg.Validators {
						if strings.HasPrefix(v.Addr, "noise://") && v.IdentityKey != "" {
							path = v.IdentityKey
							break
						}
					}
				}
			}
			nk, err := p2p.LoadNodeKey(path)
			if err != nil {
				return fail(c, fmt.Errorf("read identity %s: %w", path, err))
			}
			id, err := transport.PeerID(nk.PrivKey)
			if err != nil {
				return fail(c, err)
			}
			fmt.Println(id)
			return nil
		},
	}
}
