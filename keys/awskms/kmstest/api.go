package kmstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// apiError is a KMS error answer.
type apiError struct {
	status        int
	code, message string
}

func errorf(code, format string, args ...any) *apiError {
	return &apiError{status: statusFor(code), code: code, message: fmt.Sprintf(format, args...)}
}

func statusFor(code string) int {
	switch code {
	case "KMSInternalException", "KeyUnavailableException":
		return http.StatusInternalServerError
	case "DependencyTimeoutException":
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	op, _ := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)

	s.mu.Lock()
	s.calls[op]++
	latency := s.latency
	s.mu.Unlock()

	// Read the body before waiting: only then does net/http watch the
	// connection and cancel r.Context() when the client hangs up, which
	// keeps an abandoned slow request from holding up Close.
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	if latency > 0 {
		timer := time.NewTimer(latency)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
	}

	out, aerr := s.handle(op, r, body)
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("X-Amzn-Requestid", newRequestID())
	if aerr != nil {
		w.WriteHeader(aerr.status)
		// KMS names the error in the body's __type; the SDK also accepts
		// the X-Amzn-Errortype header but real KMS does not send it.
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": aerr.code, "message": aerr.message})
		return
	}
	_ = json.NewEncoder(w).Encode(out)
}

func (s *Server) handle(op string, r *http.Request, body []byte) (any, *apiError) {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		return nil, errorf("UnknownOperationException", "expected POST /, got %s %s", r.Method, r.URL.Path)
	}
	if r.Header.Get("Authorization") == "" {
		s.mu.Lock()
		s.unauthenticated++
		s.mu.Unlock()
		return nil, errorf("MissingAuthenticationTokenException", "Missing Authentication Token")
	}
	if ct := r.Header.Get("Content-Type"); ct != contentType {
		return nil, errorf("SerializationException", "Content-Type %q is not %s", ct, contentType)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.faults) > 0 {
		f := s.faults[0]
		s.faults = s.faults[1:]
		return nil, errorf(f.code, "%s", f.message)
	}
	if s.deny {
		return nil, errorf("AccessDeniedException",
			"User: arn:aws:iam::%s:user/kmstest is not authorized to perform: kms:%s because no identity-based policy allows the kms:%s action",
			AccountID, op, op)
	}
	switch op {
	case OpDescribeKey:
		return s.describeKey(body)
	case OpGetPublicKey:
		return s.getPublicKey(body)
	case OpSign:
		return s.signOp(body)
	default:
		return nil, errorf("UnsupportedOperationException", "kmstest does not implement %q", r.Header.Get("X-Amz-Target"))
	}
}

func decode(body []byte, v any) *apiError {
	if err := json.Unmarshal(body, v); err != nil {
		return errorf("SerializationException", "%v", err)
	}
	return nil
}

// resolve finds a key by id, key ARN, alias name or alias ARN, as KMS does.
// Callers hold s.mu.
func (s *Server) resolve(ref string) (*key, *apiError) {
	if ref == "" {
		return nil, errorf("ValidationException", "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null")
	}
	id := ref
	if rest, ok := strings.CutPrefix(ref, "arn:aws:kms:"); ok {
		parts := strings.SplitN(rest, ":", 3)
		if len(parts) != 3 || parts[0] != Region || parts[1] != AccountID {
			return nil, errorf("NotFoundException", "Invalid arn %s", ref)
		}
		id = parts[2]
		if k, ok := strings.CutPrefix(id, "key/"); ok {
			id = k
		}
	}
	if strings.HasPrefix(id, "alias/") {
		kid, ok := s.aliases[id]
		if !ok {
			return nil, errorf("NotFoundException", "Alias %s is not found.", s.AliasARN(id))
		}
		id = kid
	}
	k, ok := s.keys[id]
	if !ok {
		return nil, errorf("NotFoundException", "Key '%s' does not exist", s.ARN(id))
	}
	return k, nil
}

// usable is KMS's refusal of a cryptographic operation on a key that is not
// enabled.
func (s *Server) usable(k *key) *apiError {
	switch k.state {
	case StateEnabled:
		return nil
	case StateDisabled:
		return errorf("DisabledException", "%s is disabled.", s.ARN(k.id))
	default:
		return errorf("KMSInvalidStateException", "%s is %s.", s.ARN(k.id), strings.ToLower(k.state[:1])+k.state[1:])
	}
}

func (s *Server) describeKey(body []byte) (any, *apiError) {
	var in struct{ KeyId string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	k, e := s.resolve(in.KeyId)
	if e != nil {
		return nil, e
	}
	md := map[string]any{
		"AWSAccountId":          AccountID,
		"KeyId":                 k.id,
		"Arn":                   s.ARN(k.id),
		"CreationDate":          float64(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).Unix()),
		"Enabled":               k.state == StateEnabled,
		"Description":           "kmstest key",
		"KeyUsage":              k.usage,
		"KeyState":              k.state,
		"Origin":                "AWS_KMS",
		"KeyManager":            "CUSTOMER",
		"CustomerMasterKeySpec": k.spec,
		"KeySpec":               k.spec,
		"MultiRegion":           false,
	}
	if k.algs != nil {
		md["SigningAlgorithms"] = k.algs
	}
	if k.spec == SpecSymmetric {
		md["EncryptionAlgorithms"] = []string{"SYMMETRIC_DEFAULT"}
	}
	return map[string]any{"KeyMetadata": md}, nil
}

func (s *Server) getPublicKey(body []byte) (any, *apiError) {
	var in struct{ KeyId string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	k, e := s.resolve(in.KeyId)
	if e != nil {
		return nil, e
	}
	if e := s.usable(k); e != nil {
		return nil, e
	}
	if k.pubDER == nil {
		return nil, errorf("UnsupportedOperationException", "%s key spec does not have a public key", k.spec)
	}
	out := map[string]any{
		"KeyId":                 s.ARN(k.id),
		"PublicKey":             k.pubDER, // []byte: base64, as KMS sends blobs
		"CustomerMasterKeySpec": k.spec,
		"KeySpec":               k.spec,
		"KeyUsage":              k.usage,
	}
	if k.algs != nil {
		out["SigningAlgorithms"] = k.algs
	}
	return out, nil
}

func (s *Server) signOp(body []byte) (any, *apiError) {
	var in struct {
		KeyId            string
		Message          []byte // base64 on the wire
		MessageType      string
		SigningAlgorithm string
		DryRun           bool
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if len(in.Message) == 0 || len(in.Message) > maxMessage {
		return nil, errorf("ValidationException",
			"1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length between 1 and %d (got %d)", maxMessage, len(in.Message))
	}
	k, e := s.resolve(in.KeyId)
	if e != nil {
		return nil, e
	}
	if e := s.usable(k); e != nil {
		return nil, e
	}
	if k.usage != UsageSignVerify {
		return nil, errorf("InvalidKeyUsageException", "%s key usage is %s which is not valid for Sign.", s.ARN(k.id), k.usage)
	}
	supported := false
	for _, a := range k.algs {
		supported = supported || a == in.SigningAlgorithm
	}
	if !supported {
		return nil, errorf("InvalidKeyUsageException", "Algorithm %s is incompatible with key spec %s.", in.SigningAlgorithm, k.spec)
	}
	if in.MessageType == "" {
		in.MessageType = "RAW"
	}
	if in.DryRun {
		return nil, errorf("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
	}
	sig, err := k.sign(in.Message, in.MessageType, in.SigningAlgorithm)
	if err != nil {
		return nil, errorf("ValidationException", "%v", err)
	}
	if len(s.mangle) > 0 {
		sig = s.mangle[0](sig)
		s.mangle = s.mangle[1:]
	}
	return map[string]any{
		"KeyId":            s.ARN(k.id),
		"Signature":        sig,
		"SigningAlgorithm": in.SigningAlgorithm,
	}, nil
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
