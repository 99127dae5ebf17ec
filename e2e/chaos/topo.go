//go:build chaos

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Host is one machine of the chaos run: a network namespace with one veth
// link (eth0, 10.77.<Net>.2/24) to the router namespace, whose end of the
// link is 10.77.<Net>.1. Every packet between hosts crosses the router, and
// Raft traffic between kms-ha nodes crosses the fault proxy there.
type Host struct {
	Name string // node1, val4, ...
	NS   string // namespace name, unique per run
	Net  int
	IP   string
	// RouterIP is the router's address on this host's link.
	RouterIP string
	// Link is the router's interface towards this host.
	Link string
}

// Topology is the set of namespaces of one run.
type Topology struct {
	Prefix string
	Router string
	Hosts  []*Host
}

// hostNames: three kms-ha nodes and four validators, each its own host.
var hostNames = []struct {
	name string
	net  int
}{
	{"node1", 1}, {"node2", 2}, {"node3", 3},
	{"val1", 11}, {"val2", 12}, {"val3", 13}, {"val4", 14},
}

func newTopologyDesc(prefix string) *Topology {
	t := &Topology{Prefix: prefix, Router: prefix + "-router"}
	for _, h := range hostNames {
		t.Hosts = append(t.Hosts, &Host{
			Name: h.name, NS: prefix + "-" + h.name, Net: h.net,
			IP:       fmt.Sprintf("10.77.%d.2", h.net),
			RouterIP: fmt.Sprintf("10.77.%d.1", h.net),
			Link:     "v-" + h.name,
		})
	}
	return t
}

// Host returns the host of that name, or nil.
func (t *Topology) Host(name string) *Host {
	for _, h := range t.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Create makes the router namespace and one namespace per host, wired by
// veth pairs. Nothing outside these namespaces changes.
func (t *Topology) Create() error {
	if err := run("ip", "netns", "add", t.Router); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "-n", t.Router, "link", "set", "lo", "up"},
		{"ip", "netns", "exec", t.Router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
	}
	for _, h := range t.Hosts {
		if err := run("ip", "netns", "add", h.NS); err != nil {
			return err
		}
		steps = append(steps,
			[]string{"ip", "-n", t.Router, "link", "add", h.Link, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
			[]string{"ip", "-n", t.Router, "addr", "add", h.RouterIP + "/24", "dev", h.Link},
			[]string{"ip", "-n", t.Router, "link", "set", h.Link, "up"},
			[]string{"ip", "-n", h.NS, "link", "set", "lo", "up"},
			[]string{"ip", "-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
			[]string{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", h.NS, "route", "add", "default", "via", h.RouterIP},
		)
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// Destroy SIGKILLs whatever still runs in the run's namespaces (only
// processes this run started live there) and deletes them. Safe to call
// on a partly created topology.
func (t *Topology) Destroy() {
	all := append([]string{}, t.Router)
	for _, h := range t.Hosts {
		all = append(all, h.NS)
	}
	for _, ns := range all {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = exec.Command("kill", "-9", strconv.Itoa(pid)).Run()
			}
		}
	}
	for _, ns := range all {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// ipt runs iptables in a host's namespace.
func ipt(ns string, args ...string) error {
	return run("ip", append([]string{"netns", "exec", ns, "iptables", "-w"}, args...)...)
}

// SweepStale removes the namespaces of earlier runs whose program is gone
// (killed with SIGKILL, or a machine's CI job cut short): their names carry
// the pid of the run that made them, and only this program makes kc<pid>-*
// namespaces. A run still alive keeps its own.
func SweepStale(logf func(string, ...any)) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	stale := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		pfx, _, ok := strings.Cut(name, "-")
		if !ok || !strings.HasPrefix(pfx, "kc") {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimPrefix(pfx, "kc"))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		stale[pfx] = true
	}
	for pfx := range stale {
		logf("removing the namespaces %s-* of an earlier run that did not clean up", pfx)
		newTopologyDesc(pfx).Destroy()
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
