package harness

import "syscall"

// childSysProcAttr puts each child in its own process group, so a terminal
// Ctrl-C reaches only this program, which then stops the children in an
// orderly way. Pdeathsig is the backstop when this program itself dies
// without running its cleanup (SIGKILL, a panic in another goroutine, a
// test timeout): the kernel then kills the children, which would otherwise
// keep their loopback ports and keep signing.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
