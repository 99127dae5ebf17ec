package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// procStat is what /proc says about one process at one moment.
type procStat struct {
	cpu      float64 // user+system CPU seconds since start
	rssKiB   int64   // VmRSS
	hwmKiB   int64   // VmHWM: peak resident set since start
	syscw    int64   // write syscalls
	writeB   int64   // bytes this process caused to be written to storage
	readable bool
}

// clkTck is USER_HZ, 100 on every Linux this runs on.
const clkTck = 100

func readProc(pid int) procStat {
	var s procStat
	if pid <= 0 {
		return s
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s
	}
	// The command name may hold spaces: fields count from after its ')'.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		return s
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	s.cpu = float64(ut+st) / clkTck
	s.readable = true
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		s.rssKiB = kib(string(status), "VmRSS:")
		s.hwmKiB = kib(string(status), "VmHWM:")
	}
	if io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		s.syscw = kib(string(io), "syscw:")
		s.writeB = kib(string(io), "write_bytes:")
	}
	return s
}

// kib returns the number after key in a /proc key-value file.
func kib(text, key string) int64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest + " 0")[0], 10, 64)
			return n
		}
	}
	return 0
}
