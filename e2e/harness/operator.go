package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// CADir is the cluster CA that KMSNode.Init created next to the homes
// (ca.crt and ca.key), as an operator keeps it on an admin machine.
func (c *Cluster) CADir() string { return filepath.Join(c.Dir, "cluster-ca") }

// Operator is a workstation holding an operator certificate from the
// cluster CA: it calls the cluster API with --tls-ca, --tls-cert and
// --tls-key, never with a node's --home.
type Operator struct {
	Name     string
	ReadOnly bool
	// Dir holds operator.crt, operator.key and ca.crt.
	Dir string

	bin string
}

// IssueOperator runs `kms-ha certs issue --ca CADir --operator name
// [--read-only] --out Dir/operators/name` and returns the workstation with
// that certificate, and what the command printed.
func (c *Cluster) IssueOperator(ctx context.Context, name string, readOnly bool) (*Operator, string, error) {
	o := &Operator{Name: name, ReadOnly: readOnly, Dir: filepath.Join(c.Dir, "operators", name), bin: c.Bin.KMSHA}
	args := []string{"certs", "issue", "--ca", c.CADir(), "--operator", name, "--out", o.Dir}
	if readOnly {
		args = append(args, "--read-only")
	}
	r := RunKMSHA(ctx, c.Bin.KMSHA, 30*time.Second, args...)
	if r.Err != nil {
		return nil, r.Output, fmt.Errorf("kms-ha %s: %w\n%s", strings.Join(args, " "), r.Err, r.Output)
	}
	for _, f := range []string{"operator.crt", "operator.key", "ca.crt"} {
		if !fileExists(filepath.Join(o.Dir, f)) {
			return nil, r.Output, fmt.Errorf("kms-ha certs issue --operator did not write %s in %s:\n%s", f, o.Dir, r.Output)
		}
	}
	return o, r.Output, nil
}

// TLSArgs are the client certificate flags of every API command.
func (o *Operator) TLSArgs() []string {
	return []string{
		"--tls-ca", filepath.Join(o.Dir, "ca.crt"),
		"--tls-cert", filepath.Join(o.Dir, "operator.crt"),
		"--tls-key", filepath.Join(o.Dir, "operator.key"),
	}
}

// Run runs `kms-ha CMD... --cluster api --tls-*... REST...` where cmd holds
// the command words (e.g. "state", "show") and rest its other flags and
// arguments.
func (o *Operator) Run(ctx context.Context, api string, cmd []string, rest ...string) Result {
	args := append(append([]string(nil), cmd...), "--cluster", api)
	args = append(append(args, o.TLSArgs()...), rest...)
	return RunKMSHA(ctx, o.bin, 30*time.Second, args...)
}

// Status runs `kms-ha status --json` against api with this certificate.
func (o *Operator) Status(ctx context.Context, api string) (*Status, error) {
	r := o.Run(ctx, api, []string{"status"}, "--json")
	if r.Err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", r.Command, r.Err, r.Output)
	}
	var s Status
	if err := json.Unmarshal(bytes.TrimSpace(r.Stdout), &s); err != nil {
		return nil, fmt.Errorf("%s: output is not the documented JSON: %w\n%s", r.Command, err, r.Output)
	}
	return &s, nil
}

// Result is what a user sees of a command: its exit code and its output.
type Result struct {
	Command string
	// ExitCode is -1 when the command did not exit by itself (it could not
	// start, or was killed at the timeout).
	ExitCode int
	Stdout   []byte
	// Output is stdout and stderr, interleaved as a terminal shows them.
	Output string
	// Err is nil for exit code 0.
	Err error
}

// RunKMSHA runs bin with args and collects what a terminal would show.
func RunKMSHA(ctx context.Context, bin string, timeout time.Duration, args ...string) Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// Stdout and stderr are copied by two goroutines; both go through one
	// lock into the interleaved output.
	var stdout, both bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout = &lockedWriter{mu: &mu, to: []*bytes.Buffer{&stdout, &both}}
	cmd.Stderr = &lockedWriter{mu: &mu, to: []*bytes.Buffer{&both}}
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	r := Result{Command: "kms-ha " + strings.Join(args, " "), Stdout: stdout.Bytes(), Output: both.String(), Err: err}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.ExitCode = ee.ExitCode()
	default:
		r.ExitCode = -1
	}
	return r
}

type lockedWriter struct {
	mu *sync.Mutex
	to []*bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.to {
		b.Write(p)
	}
	return len(p), nil
}
