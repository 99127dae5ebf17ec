package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// healthcheckCmd is for container images without a shell or curl (the
// FROM scratch image): Docker's HEALTHCHECK runs
// `kms-ha healthcheck --url http://127.0.0.1:26661/readyz`, which exits 0
// on a 2xx answer and 1 otherwise, printing the answer's first line.
func healthcheckCmd() *cli.Command {
	return &cli.Command{
		Name:      "healthcheck",
		Usage:     "GET a health URL (default /readyz of the metrics listener) and exit 0 on 2xx, 1 otherwise",
		UsageText: "kms-ha healthcheck [--url URL] [--timeout D]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Value: "http://127.0.0.1:26661/readyz", Usage: "URL to GET (kms.yaml metrics.listen, path /readyz or /healthz)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "give up after this long"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit(fmt.Sprintf("kms-ha healthcheck: unexpected argument %q (use --url)", c.Args().First()), 2)
			}
			line, err := healthcheck(c.Context, c.String("url"), c.Duration("timeout"))
			if err != nil {
				return cli.Exit("kms-ha healthcheck: "+err.Error(), 1)
			}
			fmt.Println(line)
			return nil
		},
	}
}

// healthcheck GETs url and returns the status and the body's first line,
// or an error that says the same for a non-2xx answer.
func healthcheck(ctx context.Context, url string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	// Never through a proxy: the URL is this container's own listener.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	first, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	line := fmt.Sprintf("%s %s", resp.Status, first)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", fmt.Errorf("%s: %s", url, line)
	}
	return line, nil
}
