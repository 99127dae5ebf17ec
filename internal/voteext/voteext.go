// Package voteext carries, with one privval request, whether the node asked
// not to have its vote extension signed. The transport knows (the line of
// CometBFT on the connection, v1's skip_extension_signing); the signer
// decides what to sign. Neither imports the other, so the flag travels in
// the request's context, the one thing both already share.
package voteext

import "context"

type skipKey struct{}

// Skip returns ctx marked: do not sign the vote extension of this request.
// The transport sets it for the lines without extensions (v0.34, v0.37) and
// for a v1 request with skip_extension_signing.
func Skip(ctx context.Context) context.Context {
	return context.WithValue(ctx, skipKey{}, true)
}

// Skipped reports whether ctx was marked by Skip. Unmarked (the v0.38 to
// v0.40 lines, which do not say), the signer signs the extension of every
// non-nil precommit, as CometBFT's FilePV does.
func Skipped(ctx context.Context) bool {
	v, _ := ctx.Value(skipKey{}).(bool)
	return v
}
