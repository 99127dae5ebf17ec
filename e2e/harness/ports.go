package harness

import (
	"fmt"
	"net"
	"sync"
)

// handedOut remembers every port given out by this process: a port whose
// probe listener was closed is free again for the kernel, and the next call
// could otherwise return a port the previous caller is about to bind.
var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)

// FreePorts returns n distinct free TCP ports on 127.0.0.1, none of them
// returned before by this process.
func FreePorts(n int) ([]int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for len(ports) < n {
		if len(held) > n+100 {
			return nil, fmt.Errorf("could not find %d unused loopback ports", n)
		}
		// Holding every probe listener open until the end keeps the kernel
		// from handing out the same port twice within this call.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve loopback port: %w", err)
		}
		held = append(held, l)
		p := l.Addr().(*net.TCPAddr).Port
		if handedOut[p] {
			continue
		}
		handedOut[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

func loopback(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
