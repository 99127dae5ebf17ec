package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// BuildABCIApp builds ./e2e/cmd/abciapp (kvstore with vote extensions) into
// outDir.
func BuildABCIApp(ctx context.Context, repoRoot, outDir string) (string, error) {
	out := filepath.Join(outDir, "abciapp")
	return out, goBuild(ctx, repoRoot, out, "./e2e/cmd/abciapp")
}

// BuildABCIAppV1 builds ./e2e/cmd/abciapp-v1, the same app against
// CometBFT v1.0 (its own module, with its own go.mod), into outDir.
func BuildABCIAppV1(ctx context.Context, repoRoot, outDir string) (string, error) {
	out := filepath.Join(outDir, "abciapp-v1")
	return out, goBuild(ctx, filepath.Join(repoRoot, "e2e", "cmd", "abciapp-v1"), out, ".")
}

// ABCIApp is an out-of-process ABCI application (../cmd/abciapp) that a
// cometbft node reaches over a socket.
type ABCIApp struct {
	Addr string // tcp://127.0.0.1:PORT
	// RecordPath receives one JSON line per vote extension event; see
	// VoteExtRecord.
	RecordPath string
	Proc       *Process
}

// NewABCIApp prepares the app for the chain whose genesis is genesisPath;
// its log is dir/logs/<name>.log, its record file dir/<name>.jsonl. Nothing
// is started.
func NewABCIApp(bin, dir, name, genesisPath string) (*ABCIApp, error) {
	p, err := FreePorts(1)
	if err != nil {
		return nil, err
	}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	a := &ABCIApp{
		Addr:       "tcp://" + loopback(p[0]),
		RecordPath: filepath.Join(dir, name+".jsonl"),
	}
	a.Proc = &Process{
		Name:    name,
		Bin:     bin,
		Args:    []string{"--addr", a.Addr, "--genesis", genesisPath, "--record", a.RecordPath},
		Dir:     dir,
		LogPath: filepath.Join(logDir, name+".log"),
	}
	return a, nil
}

// Start starts the app and waits until it accepts connections, so that the
// node finds it on its first attempt.
func (a *ABCIApp) Start(ctx context.Context) error {
	if err := a.Proc.Start(); err != nil {
		return err
	}
	hostport := strings.TrimPrefix(a.Addr, "tcp://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", hostport, time.Second)
		if err == nil {
			// The socket server serves each connection until it closes;
			// closing this probe at once is harmless.
			c.Close()
			return nil
		}
		if !a.Proc.Running() {
			return fmt.Errorf("%s exited (%v)", a.Proc.Name, a.Proc.ExitErr())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not accept connections on %s: %w", a.Proc.Name, a.Addr, err)
		}
		if err := Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// GenesisPath is the node's genesis.json.
func (n *CometNode) GenesisPath() string { return filepath.Join(n.Home, "config", "genesis.json") }

// UseABCIApp points the node at an out-of-process ABCI application
// (proxy_app, abci = "socket") instead of the built-in kvstore. Call it
// before the node starts.
func (n *CometNode) UseABCIApp(addr string) error {
	return n.editConfig([]tomlSetting{
		{"", "proxy_app", tomlString(addr)},
		{"", "abci", tomlString("socket")},
	})
}

// editConfig applies settings to the node's config.toml.
func (n *CometNode) editConfig(settings []tomlSetting) error {
	p := filepath.Join(n.Home, "config", "config.toml")
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	out, err := applyTOML(string(data), settings)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return os.WriteFile(p, []byte(out), 0o644)
}

// SetVoteExtensionsEnableHeight sets consensus_params.abci.
// vote_extensions_enable_height in the node's genesis.json (the field of
// v0.38 to v0.40; consensus_params.feature.vote_extensions_enable_height in
// v1.0; 0 means never). Call it before the node first starts.
func (n *CometNode) SetVoteExtensionsEnableHeight(h int64) error {
	return editGenesis(n.GenesisPath(), func(g map[string]any) error {
		cp, ok := g["consensus_params"].(map[string]any)
		if !ok {
			return fmt.Errorf("no consensus_params")
		}
		abci, ok := cp["abci"].(map[string]any)
		if !ok {
			// CometBFT v1.0 keeps the height under feature.
			if abci, ok = cp["feature"].(map[string]any); !ok {
				return fmt.Errorf("no consensus_params.abci (v0.38 to v0.40) or consensus_params.feature (v1.0)")
			}
		}
		if _, ok := abci["vote_extensions_enable_height"]; !ok {
			return fmt.Errorf("no consensus_params.abci.vote_extensions_enable_height")
		}
		abci["vote_extensions_enable_height"] = fmt.Sprint(h)
		return nil
	})
}

// editGenesis decodes genesis.json generically (numbers kept as written),
// lets edit change it and writes it back. Field order changes, which
// cometbft does not mind; fields unknown to this harness survive.
func editGenesis(path string, edit func(map[string]any) error) error {
	g, err := readGenesis(path)
	if err != nil {
		return err
	}
	if err := edit(g); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	out, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}

// readGenesis decodes genesis.json generically, numbers kept as written.
func readGenesis(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var g map[string]any
	if err := dec.Decode(&g); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return g, nil
}

// VoteExtRecord is one line of an ABCIApp's record file (see
// ../cmd/abciapp).
type VoteExtRecord struct {
	Time      time.Time `json:"time"`
	Event     string    `json:"event"`
	Height    int64     `json:"height"`
	Round     int32     `json:"round"`
	Validator string    `json:"validator"`
	Flag      int32     `json:"block_id_flag"`
	Extension string    `json:"extension"`
	ExtSigLen int       `json:"ext_sig_len"`
	OK        bool      `json:"ok"`
	Err       string    `json:"err"`
}

// Record events.
const (
	EventExtendVote      = "extend_vote"
	EventVerifyExtension = "verify_vote_extension"
	// EventLocalLastCommit is one vote of the extended commit that the
	// proposer's app received in PrepareProposal, checked by the app.
	EventLocalLastCommit = "local_last_commit"
)

// ReadVoteExtRecords reads the whole record file.
func ReadVoteExtRecords(path string) ([]VoteExtRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []VoteExtRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r VoteExtRecord
		if err := json.Unmarshal(line, &r); err != nil {
			// The last line may be half written while the app runs.
			continue
		}
		out = append(out, r)
	}
	return out, sc.Err()
}
