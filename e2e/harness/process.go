package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Process is one child process (a kms-ha node or the cometbft node) that can
// be killed and started again with the same command line. Its stdout and
// stderr go to LogPath, which is appended to, never truncated: the safety
// check must see the signatures released by earlier incarnations too.
type Process struct {
	Name    string
	Bin     string
	Args    []string
	Dir     string
	LogPath string
	// Env is added to the environment the process inherits.
	Env []string
	// NetNS, if set, runs the process inside that network namespace
	// (`ip netns exec NetNS Bin Args...`, which execs in place, so PID and
	// signals are the program's own).
	NetNS string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	starts  int
}

// live holds every running child of this program so that KillAll can clean
// up after an interrupted test or demo, whichever object owns the process.
var (
	liveMu sync.Mutex
	live   = map[*Process]struct{}{}
)

// KillAll sends SIGKILL to every child process still running and waits
// briefly for them to be reaped.
func KillAll() {
	liveMu.Lock()
	procs := make([]*Process, 0, len(live))
	for p := range live {
		procs = append(procs, p)
	}
	liveMu.Unlock()
	for _, p := range procs {
		_ = p.Kill()
	}
}

// Start launches the process. It fails if the process is already running.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s is already running (pid %d)", p.Name, p.cmd.Process.Pid)
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// The child gets its own copy of the descriptor; ours is not needed once
	// the child is running.
	defer f.Close()
	p.starts++
	// A non-JSON marker line: the log parsers skip it, a human reading the
	// file sees where each incarnation begins.
	fmt.Fprintf(f, "##### harness: start #%d of %s at %s\n", p.starts, p.Name, time.Now().Format(time.RFC3339Nano))

	cmd := exec.Command(p.Bin, p.Args...)
	if p.NetNS != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", p.NetNS, p.Bin}, p.Args...)...)
	}
	cmd.Dir = p.Dir
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = childSysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.exitErr = cmd, done, nil
	liveMu.Lock()
	live[p] = struct{}{}
	liveMu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		liveMu.Lock()
		delete(live, p)
		liveMu.Unlock()
		close(done)
	}()
	return nil
}

// Running reports whether the process was started and has not exited.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !isClosed(p.done)
}

// PID returns the id of the current (or last) incarnation, 0 if never started.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Done is closed when the current incarnation exits.
func (p *Process) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

// ExitErr is the result of the last incarnation's Wait, nil while running.
func (p *Process) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Kill sends SIGKILL, like a crash or a power cut would, and waits until the
// process is gone so that its ports are free for a restart.
func (p *Process) Kill() error {
	return p.signalAndWait(syscall.SIGKILL, 10*time.Second)
}

// Stop asks the process to exit with SIGTERM and falls back to SIGKILL after
// grace.
func (p *Process) Stop(grace time.Duration) error {
	if err := p.signalAndWait(syscall.SIGTERM, grace); err == nil {
		return nil
	}
	return p.Kill()
}

func (p *Process) signalAndWait(sig syscall.Signal, wait time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || isClosed(done) {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.Name, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("%s (pid %d) still running %s after %s", p.Name, cmd.Process.Pid, wait, sig)
	}
}

func isClosed(c chan struct{}) bool {
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}
