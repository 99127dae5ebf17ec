//go:build !linux

package harness

import "syscall"

// childSysProcAttr: without Pdeathsig outside Linux, keeping the children in
// our process group at least lets a terminal Ctrl-C reach them too.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{}
}
