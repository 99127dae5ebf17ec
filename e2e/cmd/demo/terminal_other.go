//go:build !linux

package main

// takeTerminal is a no-op outside Linux: Ctrl-C reaches make as well, which
// then reports the interrupt after the demo's cleanup.
func takeTerminal() (restore func()) { return func() {} }
