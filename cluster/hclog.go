package cluster

import (
	"bytes"
	"context"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// newHCLogAdapter routes raft's hclog output into the node's slog logger,
// so an operator reads one log stream in one format.
func newHCLogAdapter(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:        "raft",
		Level:       hclog.Info,
		Output:      &slogWriter{l: l},
		DisableTime: true,
	})
}

type slogWriter struct{ l *slog.Logger }

var levels = []struct {
	tag   []byte
	level slog.Level
}{
	{[]byte("[TRACE]"), slog.LevelDebug - 4},
	{[]byte("[DEBUG]"), slog.LevelDebug},
	{[]byte("[INFO]"), slog.LevelInfo},
	{[]byte("[WARN]"), slog.LevelWarn},
	{[]byte("[ERROR]"), slog.LevelError},
}

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		level := slog.LevelInfo
		for _, lv := range levels {
			if bytes.HasPrefix(line, lv.tag) {
				level, line = lv.level, bytes.TrimSpace(line[len(lv.tag):])
				break
			}
		}
		w.l.Log(context.Background(), level, string(line))
	}
	return len(p), nil
}
