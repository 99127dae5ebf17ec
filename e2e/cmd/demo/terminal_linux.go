//go:build linux

package main

import (
	"os"
	"os/signal"
	"syscall"
	"unsafe"
)

// takeTerminal moves the demo into a process group of its own and makes
// that group the terminal's foreground, so a Ctrl-C reaches the demo
// alone. Under `make demo`, make would otherwise get the SIGINT too and,
// whatever the demo then returns, kill itself with it once the demo has
// exited. The returned func gives the terminal back to the group that had
// it. Without a terminal, or when the demo is not in the foreground, it
// changes nothing.
func takeTerminal() (restore func()) {
	nothing := func() {}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nothing
	}
	var orig int32
	if ioctl(tty, syscall.TIOCGPGRP, &orig) != nil || int(orig) != syscall.Getpgrp() {
		tty.Close()
		return nothing
	}
	// A background group that sets the foreground gets SIGTTOU.
	signal.Ignore(syscall.SIGTTOU)
	if syscall.Setpgid(0, 0) != nil {
		tty.Close()
		return nothing
	}
	own := int32(syscall.Getpgrp())
	if ioctl(tty, syscall.TIOCSPGRP, &own) != nil {
		syscall.Setpgid(0, int(orig))
		tty.Close()
		return nothing
	}
	return func() {
		ioctl(tty, syscall.TIOCSPGRP, &orig)
		tty.Close()
	}
}

func ioctl(f *os.File, req uintptr, pgrp *int32) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), req, uintptr(unsafe.Pointer(pgrp))); e != 0 {
		return e
	}
	return nil
}
