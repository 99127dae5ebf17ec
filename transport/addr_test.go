package transport

import (
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
)

func testPeerID(t *testing.T) string {
	t.Helper()
	id, err := PeerID(ed25519.GenPrivKey())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestParseAddr(t *testing.T) {
	pid := testPeerID(t)
	nodeID := strings.Repeat("ab", 20)
	ok := []struct{ in, scheme, hostport, pinned string }{
		{"tcp://127.0.0.1:26659", "tcp", "127.0.0.1:26659", ""},
		{"tcp://localhost:1", "tcp", "localhost:1", ""},
		{"tcp://[::1]:26659", "tcp", "[::1]:26659", ""},
		{"TCP://node.example:26659", "tcp", "node.example:26659", ""},
		{"tcp://" + nodeID + "@10.0.0.1:26659", "tcp", "10.0.0.1:26659", nodeID},
		// Node ids are compared in CometBFT's lower-case form.
		{"Tcp://" + strings.ToUpper(nodeID) + "@validator.example:26659", "tcp", "validator.example:26659", nodeID},
		{"noise://" + pid + "@10.0.0.1:26659", "noise", "10.0.0.1:26659", pid},
		{"NOISE://" + pid + "@[::1]:26659", "noise", "[::1]:26659", pid},
		{"unix:///run/pv.sock", "unix", "/run/pv.sock", ""},
		{"UNIX:///tmp/dir with space/pv.sock", "unix", "/tmp/dir with space/pv.sock", ""},
	}
	for _, c := range ok {
		a, err := ParseAddr(c.in)
		if err != nil {
			t.Errorf("ParseAddr(%q): unexpected error %v", c.in, err)
			continue
		}
		if a.Scheme != c.scheme || a.HostPort != c.hostport || a.PeerID != c.pinned {
			t.Errorf("ParseAddr(%q) = %+v; want %q, %q, %q", c.in, a, c.scheme, c.hostport, c.pinned)
		}
	}

	bad := []struct{ in, wantErr string }{
		{"http://127.0.0.1:80", `unknown scheme "http"`},
		{"http://127.0.0.1:80", "noise://<validator-peer-id>@IP:PORT"},
		{"127.0.0.1:26659", "no scheme"},
		{"", "no scheme"},
		{"tcp://127.0.0.1", "missing port"},
		{"tcp://:26659", "missing host"},
		{"tcp://127.0.0.1:0", "invalid port"},
		{"tcp://127.0.0.1:70000", "invalid port"},
		{"tcp://127.0.0.1:abc", "invalid port"},
		{"tcp://127.0.0.1:26659/path", "invalid port"},
		{"tcp://user@127.0.0.1:26659", `"user" is not a node id (40 hex characters`},
		{"tcp://@127.0.0.1:26659", `"" is not a node id`},
		{"tcp://" + nodeID + "ab@127.0.0.1:26659", "is not a node id"},
		{"tcp://" + nodeID + "@127.0.0.1", "missing port"},
		{"tcp://a@b@127.0.0.1:26659", "is not a node id"},

		{"noise://127.0.0.1:26659", "missing validator peer ID"},
		{"noise://@127.0.0.1:26659", "missing validator peer ID"},
		{"noise://12D3KooWabc@127.0.0.1:26659", `"12D3KooWabc" is not a libp2p peer ID; get it with ` + "`cometbft show-node-id --libp2p`"},
		{"noise://" + pid + "x@127.0.0.1:26659", "is not a libp2p peer ID"},
		{"noise://" + pid + "@validator.example:26659", `host "validator.example" must be an IP address`},
		{"noise://" + pid + "@127.0.0.1", "missing port"},
		{"noise://" + pid + "@127.0.0.1:0", "invalid port"},
		{"noise://" + pid + "@:26659", "missing host"},

		{"unix://", "missing socket path"},
		{"unix://run/pv.sock", `socket path "run/pv.sock" is not absolute`},
		{"unix://./pv.sock", "is not absolute"},
	}
	for _, c := range bad {
		_, err := ParseAddr(c.in)
		if err == nil {
			t.Errorf("ParseAddr(%q): expected error", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("ParseAddr(%q): error %q does not mention %q", c.in, err, c.wantErr)
		}
		if !strings.HasPrefix(err.Error(), "transport: ") {
			t.Errorf("ParseAddr(%q): error %q lacks package prefix", c.in, err)
		}
	}
}

func TestNoisePeerID(t *testing.T) {
	pid := testPeerID(t)
	got, err := NoisePeerID("noise://" + pid + "@127.0.0.1:26659")
	if err != nil {
		t.Fatalf("NoisePeerID: %v", err)
	}
	if got != pid {
		t.Fatalf("NoisePeerID = %q, want %q", got, pid)
	}

	for _, c := range []struct{ in, wantErr string }{
		{"tcp://127.0.0.1:26659", "not a noise:// address"},
		{"unix:///run/pv.sock", "not a noise:// address"},
		{"noise://nope@127.0.0.1:26659", "is not a libp2p peer ID"},
	} {
		_, err := NoisePeerID(c.in)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("NoisePeerID(%q): error %v, want one mentioning %q", c.in, err, c.wantErr)
		}
	}
}
