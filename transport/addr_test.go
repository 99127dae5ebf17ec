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
	ok := []struct{ in, scheme, hostport string }{
		{"tcp://127.0.0.1:26659", "tcp", "127.0.0.1:26659"},
		{"tcp://localhost:1", "tcp", "localhost:1"},
		{"tcp://[::1]:26659", "tcp", "[::1]:26659"},
		{"TCP://node.example:26659", "tcp", "node.example:26659"},
		{"noise://" + pid + "@10.0.0.1:26659", "noise", "10.0.0.1:26659"},
		{"NOISE://" + pid + "@[::1]:26659", "noise", "[::1]:26659"},
		{"unix:///run/pv.sock", "unix", "/run/pv.sock"},
		{"unix:///tmp/dir with space/pv.sock", "unix", "/tmp/dir with space/pv.sock"},
	}
	for _, c := range ok {
		s, hp, err := ParseAddr(c.in)
		if err != nil {
			t.Errorf("ParseAddr(%q): unexpected error %v", c.in, err)
			continue
		}
		if s != c.scheme || hp != c.hostport {
			t.Errorf("ParseAddr(%q) = %q, %q; want %q, %q", c.in, s, hp, c.scheme, c.hostport)
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
		{"tcp://user@127.0.0.1:26659", "invalid host"},

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
		_, _, err := ParseAddr(c.in)
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
