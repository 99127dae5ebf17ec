package transport

import (
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	ok := []struct{ in, scheme, hostport string }{
		{"tcp://127.0.0.1:26659", "tcp", "127.0.0.1:26659"},
		{"tcp://localhost:1", "tcp", "localhost:1"},
		{"tcp://[::1]:26659", "tcp", "[::1]:26659"},
		{"TCP://node.example:26659", "tcp", "node.example:26659"},
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
		{"noise://12D3KooWabc@127.0.0.1:26659", `transport: scheme "noise" not supported yet`},
		{"unix:///run/pv.sock", `transport: scheme "unix" not supported yet`},
		{"http://127.0.0.1:80", `unknown scheme "http"`},
		{"127.0.0.1:26659", "no scheme"},
		{"", "no scheme"},
		{"tcp://127.0.0.1", "missing port"},
		{"tcp://:26659", "missing host"},
		{"tcp://127.0.0.1:0", "invalid port"},
		{"tcp://127.0.0.1:70000", "invalid port"},
		{"tcp://127.0.0.1:abc", "invalid port"},
		{"tcp://127.0.0.1:26659/path", "invalid port"},
		{"tcp://user@127.0.0.1:26659", "invalid host"},
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
