package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthcheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		http.Error(w, "not ready: no leader", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	ctx := context.Background()
	if line, err := healthcheck(ctx, srv.URL+"/readyz", time.Second); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("ready: %q, %v", line, err)
	}
	_, err := healthcheck(ctx, srv.URL+"/other", time.Second)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "no leader") {
		t.Fatalf("not ready: %v", err)
	}
	srv.Close()
	if _, err := healthcheck(ctx, srv.URL+"/readyz", time.Second); err == nil {
		t.Fatal("a closed listener passed the check")
	}
}
