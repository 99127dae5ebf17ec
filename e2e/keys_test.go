//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
)

// TestPKCS11Chain runs a real chain whose only validator key was generated
// inside an HSM (SoftHSM2 through PKCS#11) and never left it. The three
// kms-ha nodes share one token directory, as they would share a network
// HSM, and get its user PIN from the environment (pin_env): kms.yaml names
// the variable, never the PIN. The genesis names the HSM key as the
// validator, and the cometbft node's own key file holds an unrelated decoy,
// so every block's precommit can only have come through kms-ha and the HSM.
//
// Checked: blocks are produced and each commit carries the HSM key's
// precommit, verified under that key and present in the audit log with the
// same sign bytes; a SIGKILL of the signing leader is survived (the new
// leader signs with the same HSM key, the killed node comes back and
// reopens it); no slot is signed twice with different bytes; validator
// connections and signatures only inside leadership; the PIN appears in no
// process's log and in no file the run wrote.
func TestPKCS11Chain(t *testing.T) {
	requireBins(t)
	const (
		stall    = 20 * time.Second
		progress = 5
		maxLag   = 5
		// Distinct per test, since pkcs11test shares one token directory per
		// test process.
		tokenLabel = "kms-ha-e2e-pkcs11"
		keyLabel   = "validator"
		pinEnv     = "KMSHA_E2E_HSM_PIN"
	)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// A PIN that cannot occur by accident in a log, so that grepping for it
	// means something.
	pin := "hsm-pin-" + randomHex(t, 12)
	module, hsmEnv := pkcs11test.NewToken(t, tokenLabel, pin)
	pub := pkcs11test.GenerateEd25519(t, module, tokenLabel, pin, keyLabel, []byte{0x01})
	t.Logf("SoftHSM token %q (module %s, %s): Ed25519 key %q generated on the token, public key %X",
		tokenLabel, module, strings.Join(hsmEnv, " "), keyLabel, []byte(pub))

	dir := workDir(t)
	c := newCluster(ctx, t, harness.Config{
		Dir: dir, Nodes: 3, Setup: func(n *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
			// The token directory (SOFTHSM2_CONF) and the PIN reach kms-ha
			// only through its environment.
			n.Proc.Env = append(append([]string(nil), hsmEnv...), pinEnv+"="+pin)
			for i := range chains {
				chains[i].KeyFile = ""
				chains[i].KeyYAML = fmt.Sprintf("    backend: pkcs11\n    module: %s\n    token_label: %s\n    key_label: %s\n    pin_env: %s\n",
					module, tokenLabel, keyLabel, pinEnv)
			}
			return chains
		},
	})
	val, decoy, err := c.Comet.UseValidatorKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("genesis of %s names the HSM key as its validator (address %X); the node's priv_validator_key.json is a decoy (%X)",
		c.Comet.ChainID, val.Address, decoy.Address)
	for _, n := range c.Nodes {
		yaml, err := os.ReadFile(filepath.Join(n.Home, "kms.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(yaml, []byte(pin)) {
			t.Fatalf("%s: kms.yaml contains the PIN:\n%s", n.ID, yaml)
		}
		if !bytes.Contains(yaml, []byte("pin_env: "+pinEnv)) || !bytes.Contains(yaml, []byte("backend: pkcs11")) {
			t.Fatalf("%s: kms.yaml has no pkcs11 key with pin_env:\n%s", n.ID, yaml)
		}
		if n == c.Nodes[0] {
			t.Logf("%s kms.yaml:\n%s", n.ID, yaml)
		}
	}

	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()
	h, err := c.Comet.WaitHeight(ctx, 5, stall)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chain at height %d, signed by the HSM key through the kms-ha cluster", h)
	// Every node opened the HSM key, not some other key.
	for _, n := range c.Nodes {
		lines, err := logLines(n.Proc.LogPath, "key loaded")
		if err != nil {
			t.Fatal(err)
		}
		ok := false
		for _, l := range lines {
			ok = ok || (l["backend"] == "pkcs11" && l["pubkey"] == fmt.Sprintf("%X", []byte(pub)))
		}
		if !ok {
			t.Fatalf("%s: no \"key loaded\" line for backend pkcs11 with public key %X; got %v", n.ID, []byte(pub), lines)
		}
	}

	f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	t.Logf("failover: SIGKILL of leader %s at height %d -> height %d committed %s later; %s became leader after %s; first block after the kill signed by %s",
		f.Killed, f.HeightAtKill, f.NextHeight, ms(f.NextBlock), f.NewLeader, ms(f.Elected), orUnknown(f.NextSigner))
	target := f.HeightAtKill + progress
	if _, err := c.Comet.WaitHeight(ctx, target, stall); err != nil {
		t.Fatalf("chain did not go on under %s: %v", f.NewLeader, err)
	}
	if signer := waitPrecommitSigner(ctx, c, c.Comet.ChainID, target); signer != f.NewLeader {
		t.Fatalf("height %d precommit signed by %q, want new leader %s", target, signer, f.NewLeader)
	}
	killed := c.Node(f.Killed)
	if err := c.Restart(killed); err != nil {
		t.Fatal(err)
	}
	fol, lead, err := c.WaitCaughtUp(ctx, killed, 60*time.Second, maxLag)
	if err != nil {
		t.Fatal(err)
	}
	if loaded, err := logLines(killed.Proc.LogPath, "key loaded"); err != nil || len(loaded) != 2 {
		t.Fatalf("%s: want a \"key loaded\" line per start (2), got %d (%v)", killed.ID, len(loaded), err)
	}
	t.Logf("%s restarted (reopened the HSM key) and follows %s: applied index %d, leader commit index %d",
		killed.ID, fol.LeaderID, fol.AppliedIndex, lead.CommitIndex)

	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if latest, err = c.Comet.WaitHeight(ctx, latest+3, stall); err != nil {
		t.Fatal(err)
	}
	if gap, after := mon.MaxGap(); gap > stall {
		t.Errorf("chain stalled for %s after height %d", gap.Round(time.Millisecond), after)
	} else {
		t.Logf("longest gap between blocks: %s (after height %d)", ms(gap), after)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkPrecommitsLogged(t, scan, c.Comet.ChainID, latest, 1)
	rep, err := c.Comet.CheckCommits(ctx, val, 1, latest-1, scan.Signed)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	if rep.Present != int(rep.To-rep.From+1) {
		t.Errorf("HSM key's precommit verified in %d of %d commits", rep.Present, rep.To-rep.From+1)
	}
	t.Logf("chain %s: the HSM key's (%X) precommit is present and verifies in %d of %d commits (heights %d..%d), each in the audit log with the same sign bytes",
		c.Comet.ChainID, val.Address, rep.Present, rep.To-rep.From+1, rep.From, rep.To)

	// The PIN: in no log line of any process, and in no file of the run
	// (kms.yaml, raft data, snapshots, the cometbft home).
	var logs []string
	for _, n := range c.Nodes {
		logs = append(logs, n.Proc.LogPath)
	}
	logs = append(logs, c.Comet.Proc.LogPath)
	lines := 0
	for _, p := range logs {
		n, hits, err := grepFile(p, pin)
		if err != nil {
			t.Fatal(err)
		}
		lines += n
		for _, h := range hits {
			t.Errorf("%s: the PIN appears in a log line: %s", p, h)
		}
	}
	files, err := filesContaining(dir, pin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range files {
		t.Errorf("the PIN appears in %s", p)
	}
	t.Logf("PIN: not in any of %d log lines of %d processes, nor in any file under %s", lines, len(logs), dir)
}

// TestKeyMismatchRefusesToLead gives node3 a different consensus key than
// node1 and node2 (an operator's copy-paste mistake). The chain runs under
// node1, which records the validator's key in the cluster; leadership is
// then forced onto node3 with `kms-ha transfer-leadership --to node3`.
// node3 must refuse: log "key mismatch: refusing to lead" naming both keys,
// never dial the validator nor sign, hand leadership back to a node with
// the right key, and report the problem on /readyz (503) while the chain
// keeps making blocks.
func TestKeyMismatchRefusesToLead(t *testing.T) {
	requireBins(t)
	const (
		stall         = 20 * time.Second
		progress      = 5
		msgMismatch   = "key mismatch: refusing to lead"
		wrongKeyName  = "wrong_validator_key.json"
		recordTimeout = 15 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var wrong harness.ValidatorKey
	c := newCluster(ctx, t, harness.Config{
		Nodes: 3, Metrics: true,
		Setup: func(n *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
			if n.ID != "node3" {
				return chains
			}
			k, err := harness.WriteFileKey(filepath.Join(n.Home, wrongKeyName), "")
			if err != nil {
				t.Fatal(err)
			}
			wrong = k
			for i := range chains {
				chains[i].KeyFile = filepath.Join(n.Home, wrongKeyName)
			}
			return chains
		},
	})
	right, err := harness.LoadValidatorKey(c.Comet.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	rightHex, wrongHex := fmt.Sprintf("%X", right.PubKey.Bytes()), fmt.Sprintf("%X", wrong.PubKey.Bytes())
	t.Logf("validator key (genesis, node1, node2): %s; node3's key file: %s", rightHex, wrongHex)
	node1, node3 := c.Node("node1"), c.Node("node3")

	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()
	if _, err := c.Comet.WaitHeight(ctx, 5, stall); err != nil {
		t.Fatal(err)
	}
	leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	if leader.ID == "node3" {
		t.Fatalf("node3 (wrong key) leads before any transfer")
	}
	// The leader with the right key records it in the cluster; only then
	// can any node tell that node3's key is wrong.
	recorded, err := waitChainKey(ctx, node1, c.Comet.ChainID, recordTimeout)
	if err != nil {
		// The first leader of a new cluster must record the key in its
		// first term (kms-ha before 84df4f9 tried once, before its own
		// member level was committed, and never again in that term; a
		// transfer to node3 then let node3 record its own key, sign with
		// it and halt the chain). Report it, then get the key recorded the
		// way a later term would (a transfer between the two nodes with
		// the right key) so that the refusal itself is still tested.
		t.Errorf("the validator's key was not recorded in the cluster within %s while %s led with the right key (%v): "+
			"a transfer to node3 now would record node3's wrong key instead", recordTimeout, leader.ID, err)
		other := "node2"
		if leader.ID == "node2" {
			other = "node1"
		}
		out, err := transferLeadership(ctx, node1, other)
		t.Logf("workaround: kms-ha transfer-leadership --to %s: err=%v, output: %s", other, err, out)
		if err != nil {
			t.Fatal(err)
		}
		if recorded, err = waitChainKey(ctx, node1, c.Comet.ChainID, recordTimeout); err != nil {
			t.Fatalf("the validator's key was not recorded after a leadership change either: %v", err)
		}
		if leader, _, err = c.WaitLeader(ctx, 10*time.Second, "node3"); err != nil {
			t.Fatal(err)
		}
	}
	if recorded != rightHex {
		t.Fatalf("cluster recorded key %s for %s, want the validator's %s", recorded, c.Comet.ChainID, rightHex)
	}
	t.Logf("%s leads; the cluster recorded %s's key %s", leader.ID, c.Comet.ChainID, recorded)

	h0, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	transferAt := time.Now()
	out, terr := transferLeadership(ctx, node1, "node3")
	t.Logf("kms-ha transfer-leadership --home %s --to node3 at height %d: err=%v, output: %s", node1.Home, h0, terr, out)
	// node3 hands leadership on within milliseconds: the command says the
	// transfer did not hold and names the leader it went to.
	// (Under heavy load node3's refusal can come after the command's
	// half-second settling wait; then the command reports node3, and the
	// checks below still prove the refusal.)
	if terr == nil || !strings.Contains(out, "node3 did not keep leadership") {
		t.Logf("note: transfer-leadership did not report the refusal: err=%v, output: %s", terr, out)
	}

	// node3 took leadership, saw the mismatch and refused.
	var refusal map[string]any
	for deadline := time.Now().Add(15 * time.Second); refusal == nil; {
		lines, err := logLines(node3.Proc.LogPath, msgMismatch)
		if err != nil {
			t.Fatal(err)
		}
		if len(lines) > 0 {
			refusal = lines[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node3 logged no %q within 15s of the transfer (transfer-leadership: err=%v, %s); end of its log:\n%s",
				msgMismatch, terr, out, c.LogTail(node3.Proc.LogPath, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("node3: %v", refusal)
	if refusal["level"] != "ERROR" || refusal["chain"] != c.Comet.ChainID ||
		refusal["local_pubkey"] != wrongHex || refusal["cluster_pubkey"] != rightHex {
		t.Errorf("node3's refusal line %v: want level ERROR, chain %s, local_pubkey %s (its own), cluster_pubkey %s (recorded)",
			refusal, c.Comet.ChainID, wrongHex, rightHex)
	}

	// Leadership is back with a node holding the right key, and stays there.
	back, st, err := c.WaitLeader(ctx, 10*time.Second, "node3")
	if err != nil {
		t.Fatalf("leadership did not leave node3: %v", err)
	}
	// Time it from node3's refusal to the next "became leader" elsewhere,
	// from the logs: the transfer command's own wait is not part of it.
	refusedAt, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(refusal["time"]))
	var backAfter time.Duration
	for deadline := time.Now().Add(3 * time.Second); backAfter == 0 && time.Now().Before(deadline); {
		all, err := c.Scan()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range all.Events {
			if e.Msg == harness.MsgBecameLeader && e.File != node3.Proc.LogPath && e.Time.After(refusedAt) &&
				(backAfter == 0 || e.Time.Sub(refusedAt) < backAfter) {
				backAfter = e.Time.Sub(refusedAt)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("leadership back on %s (term %d), %s after node3's refusal (%s after the transfer command started)",
		back.ID, st.Term, ms(backAfter), ms(time.Since(transferAt)))
	h1, err := c.Comet.WaitHeight(ctx, h0+progress, stall)
	if err != nil {
		t.Fatalf("chain did not go on after node3 refused to lead: %v", err)
	}
	if l, _, err := c.Leader(ctx); err != nil || l.ID == "node3" {
		t.Fatalf("leader at height %d: %v (err %v); node3 must not lead", h1, l, err)
	}
	if signer := waitPrecommitSigner(ctx, c, c.Comet.ChainID, h1); signer == "" || signer == "node3" {
		t.Fatalf("height %d precommit signed by %q, want node1 or node2", h1, signer)
	}

	// /readyz: node3 is not ready and says why, naming both keys; the
	// leader is ready (its validator connection is up).
	code, body, err := waitReadyz(ctx, node3, http.StatusServiceUnavailable, 10*time.Second)
	if err != nil {
		t.Fatalf("node3 /readyz: %v", err)
	}
	t.Logf("node3 /readyz: %d %s", code, body)
	for _, want := range []string{"refusing to lead", wrongHex, rightHex, c.Comet.ChainID} {
		if !strings.Contains(body, want) {
			t.Errorf("node3 /readyz body %q does not contain %q", body, want)
		}
	}
	if code, body, err := waitReadyz(ctx, back, http.StatusOK, 10*time.Second); err != nil {
		t.Errorf("leader %s /readyz: %v", back.ID, err)
	} else {
		t.Logf("leader %s /readyz: %d %s", back.ID, code, body)
	}

	// node3 was leader for a moment and never dialed the validator nor
	// signed: its log has "became leader", the refusal, "lost leadership",
	// and no connection or signature at all.
	audit, err := harness.ScanAudit(node3.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit.Conns) > 0 {
		t.Errorf("node3 (wrong key) has validator connection events: %v", audit.Conns)
	}
	n3, err := harness.ScanLogs(node3.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(n3.Signed) > 0 {
		t.Errorf("node3 (wrong key) signed %d messages, first %+v", len(n3.Signed), n3.Signed[0])
	}
	var seq []string
	for _, e := range n3.Events {
		seq = append(seq, e.Msg)
	}
	if len(seq) < 2 || seq[0] != harness.MsgBecameLeader || seq[len(seq)-1] != harness.MsgLostLeadership {
		t.Errorf("node3's leadership events %v: want it to have become leader and lost leadership again", seq)
	}
	t.Logf("node3: leadership events %v, %d validator connections, %d signatures", seq, len(audit.Conns), len(n3.Signed))

	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if gap, after := mon.MaxGap(); gap > stall {
		t.Errorf("chain stalled for %s after height %d", gap.Round(time.Millisecond), after)
	} else {
		t.Logf("longest gap between blocks: %s (after height %d)", ms(gap), after)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkCommits(ctx, t, c.Comet, scan, latest)
}

// transferLeadership runs `kms-ha transfer-leadership --home via --to to`;
// via's API forwards the request to the leader.
func transferLeadership(ctx context.Context, via *harness.KMSNode, to string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.KMSHA, "transfer-leadership", "--home", via.Home, "--to", to).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// logLines returns the JSON log lines of path whose msg is msg, decoded.
func logLines(path, msg string) ([]map[string]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' || !bytes.Contains(line, []byte(msg)) {
			continue
		}
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// grepFile counts the lines of path and returns those containing s.
func grepFile(path, s string) (lines int, hits []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines++
		if strings.Contains(sc.Text(), s) {
			hits = append(hits, sc.Text())
		}
	}
	return lines, hits, sc.Err()
}

// filesContaining lists the regular files under dir whose bytes contain s.
func filesContaining(dir, s string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(data, []byte(s)) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// chainKeyOf returns the public key (upper hex) that node n's FSM holds for
// chain, from `kms-ha status --json`, or "" if none is recorded.
func chainKeyOf(ctx context.Context, n *harness.KMSNode, chain string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.KMSHA, "status", "--home", n.Home, "--cluster", n.APIAddr, "--json").Output()
	if err != nil {
		return "", fmt.Errorf("kms-ha status --cluster %s: %w", n.APIAddr, err)
	}
	var st struct {
		Keys []struct {
			ChainID string `json:"chain_id"`
			PubKey  string `json:"pub_key"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", fmt.Errorf("kms-ha status --json: %w: %s", err, out)
	}
	for _, k := range st.Keys {
		if k.ChainID == chain {
			return k.PubKey, nil
		}
	}
	return "", nil
}

func waitChainKey(ctx context.Context, n *harness.KMSNode, chain string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		k, err := chainKeyOf(ctx, n, chain)
		if err == nil && k != "" {
			return k, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("no key recorded for chain %s after %s (as %s sees the cluster)", chain, timeout, n.ID)
			}
			return "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readyz GETs n's /readyz.
func readyz(ctx context.Context, n *harness.KMSNode) (int, string, error) {
	if n.MetricsAddr == "" {
		return 0, "", fmt.Errorf("%s has no metrics address (harness.Config.Metrics)", n.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.MetricsAddr+"/readyz", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

// waitReadyz polls n's /readyz until it answers want.
func waitReadyz(ctx context.Context, n *harness.KMSNode, want int, timeout time.Duration) (int, string, error) {
	deadline := time.Now().Add(timeout)
	for {
		code, body, err := readyz(ctx, n)
		if err == nil && code == want {
			return code, body, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("answers %d %q, want %d", code, body, want)
			}
			return code, body, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
