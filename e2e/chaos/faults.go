//go:build chaos

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Applying and healing faults: iptables in the hosts' namespaces, the
// link proxies, process signals and the full disk.

// cut drops traffic between hosts a and b in a's namespace (iptables on
// eth0) and, between kms-ha nodes, in the Raft proxy.
func (r *Run) cut(a, b string, aToB, bToA bool) (func(), error) {
	ha, hb := r.topo.Host(a), r.topo.Host(b)
	var rules [][]string
	if aToB {
		rules = append(rules, []string{"OUTPUT", "-o", "eth0", "-d", hb.IP, "-j", "DROP"})
	}
	if bToA {
		rules = append(rules, []string{"INPUT", "-i", "eth0", "-s", hb.IP, "-j", "DROP"})
	}
	heal, err := r.rules(ha.NS, rules)
	if err != nil {
		return heal, err
	}
	isNode := strings.HasPrefix(a, "node") && strings.HasPrefix(b, "node")
	if isNode && aToB {
		r.proxy.Update(a, b, func(s *LinkState) { s.Blocked = true })
	}
	if isNode && bToA {
		r.proxy.Update(b, a, func(s *LinkState) { s.Blocked = true })
	}
	return func() {
		heal()
		if isNode && aToB {
			r.proxy.Update(a, b, func(s *LinkState) { s.Blocked = false })
		}
		if isNode && bToA {
			r.proxy.Update(b, a, func(s *LinkState) { s.Blocked = false })
		}
	}, nil
}

// rules inserts iptables rules in ns; the returned func deletes them.
func (r *Run) rules(ns string, rules [][]string) (func(), error) {
	var added [][]string
	heal := func() {
		for _, rl := range added {
			if err := ipt(ns, append([]string{"-D"}, rl...)...); err != nil {
				r.violation("heal failed: %v", err)
			}
		}
	}
	for _, rl := range rules {
		if err := ipt(ns, append([]string{"-I"}, rl...)...); err != nil {
			heal()
			return func() {}, err
		}
		added = append(added, rl)
	}
	return heal, nil
}

// apply starts one fault on target and returns how to heal it.
// It is one case per fault kind, kept together so the nemesis reads as a
// table (over 80 lines for that reason).
func (r *Run) apply(f Fault, target, leader string) (string, func(), error) {
	var others []string
	for _, n := range r.c.Nodes {
		if n.ID != target {
			others = append(others, n.ID)
		}
	}
	switch f.Kind {
	case "partition-leader", "partition-follower":
		var heals []func()
		for _, o := range others {
			h, err := r.cut(target, o, true, true)
			heals = append(heals, h)
			if err != nil {
				return "", all(heals), err
			}
		}
		return fmt.Sprintf("%s cut off from %s", target, strings.Join(others, ", ")), all(heals), nil
	case "leader-validator":
		h, err := r.cut(target, "val4", true, true)
		return fmt.Sprintf("%s cut off from val4 (its validator); Raft intact", target), h, err
	case "one-way":
		var heals []func()
		for _, o := range others {
			h, err := r.cut(target, o, true, false)
			heals = append(heals, h)
			if err != nil {
				return "", all(heals), err
			}
		}
		return fmt.Sprintf("%s -> %s dropped; %s still hears them", target, strings.Join(others, ", "), target), all(heals), nil
	case "pause":
		n := r.c.Node(target)
		pid := n.Proc.PID()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return "", func() {}, err
		}
		return fmt.Sprintf("SIGSTOP %s (pid %d) for %s", target, pid, f.Dur), func() { _ = syscall.Kill(pid, syscall.SIGCONT) }, nil
	case "kill":
		n := r.c.Node(target)
		if err := n.Proc.Kill(); err != nil {
			return "", func() {}, err
		}
		return fmt.Sprintf("SIGKILL %s, restart after %s", target, f.Dur), func() {
			if err := n.Proc.Start(); err != nil {
				r.event("restart %s: %v", target, err)
			}
		}, nil
	case "latency":
		set := func(d, j time.Duration) {
			for _, o := range others {
				r.proxy.Update(target, o, func(s *LinkState) { s.Delay, s.Jitter = d, j })
				r.proxy.Update(o, target, func(s *LinkState) { s.Delay, s.Jitter = d, j })
			}
		}
		set(f.Delay, f.Jitter)
		return fmt.Sprintf("%s Raft links +%s ±%s each way", target, f.Delay, f.Jitter/2), func() { set(0, 0) }, nil
	case "validator-latency", "p2p-latency":
		peers := []string{"val4"}
		if f.Kind == "p2p-latency" {
			peers = []string{"val1", "val2", "val3"}
		}
		set := func(d, j time.Duration) {
			for _, o := range peers {
				r.proxy.Update(target, o, func(s *LinkState) { s.Delay, s.Jitter = d, j })
				r.proxy.Update(o, target, func(s *LinkState) { s.Delay, s.Jitter = d, j })
			}
		}
		set(f.Delay, f.Jitter)
		return fmt.Sprintf("%s links to %s +%s ±%s each way", target, strings.Join(peers, ", "), f.Delay, f.Jitter/2), func() { set(0, 0) }, nil
	case "loss":
		p := fmt.Sprintf("%.2f", f.Loss)
		h, err := r.rules(r.topo.Host(target).NS, [][]string{
			{"INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP"},
			{"OUTPUT", "-o", "eth0", "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP"},
		})
		return fmt.Sprintf("%s drops %.0f%% of packets each way", target, 100*f.Loss), h, err
	case "disk-full":
		path := filepath.Join(r.c.Node(diskNode).Home, "raft", "chaos-fill")
		if err := fill(path); err != nil {
			return "", func() { os.Remove(path) }, err
		}
		return fmt.Sprintf("%s data dir (tmpfs) filled", diskNode), func() { os.Remove(path) }, nil
	case "validator-restart":
		v := r.tn.Remote[0]
		if err := v.Proc.Kill(); err != nil {
			return "", func() {}, err
		}
		return fmt.Sprintf("SIGKILL val4 (cometbft), restart after %s", f.Dur), func() {
			if err := v.Proc.Start(); err != nil {
				r.event("restart val4: %v", err)
			}
		}, nil
	}
	return "", func() {}, fmt.Errorf("unknown fault %q", f.Kind)
}

func all(fs []func()) func() {
	return func() {
		for _, f := range fs {
			f()
		}
	}
}

// fill writes path until the file system is full.
func fill(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return err
		}
	}
}
