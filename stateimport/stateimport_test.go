package stateimport

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cometbft/cometbft/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/fsm"
)

const chainID = "cosmoshub-4"

var (
	blockHash = bytes.Repeat([]byte{0x26}, 32)
	partsHash = bytes.Repeat([]byte{0x47}, 32)
	stamp     = time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)
	// A 64-byte Ed25519-sized signature; its value is never checked.
	sigB64 = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, 64))
)

func blockID() cmtproto.BlockID {
	return cmtproto.BlockID{Hash: blockHash, PartSetHeader: cmtproto.PartSetHeader{Total: 1, Hash: partsHash}}
}

// voteBytes are the canonical sign bytes CometBFT produces for a vote.
func voteBytes(typ cmtproto.SignedMsgType, h int64, r int32) []byte {
	return types.VoteSignBytes(chainID, &cmtproto.Vote{
		Type: typ, Height: h, Round: r, BlockID: blockID(), Timestamp: stamp,
	})
}

func proposalBytes(h int64, r int32) []byte {
	return types.ProposalSignBytes(chainID, &cmtproto.Proposal{
		Type: cmtproto.ProposalType, Height: h, Round: r, PolRound: -1, BlockID: blockID(), Timestamp: stamp,
	})
}

func upperHex(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

type tc struct {
	name   string
	format string // "" means auto
	in     string
	want   State
	// errs are substrings the error must contain; empty means success.
	errs []string
}

func cases() []tc {
	precommit := voteBytes(cmtproto.PrecommitType, 1_000_001, 2)
	prevote := voteBytes(cmtproto.PrevoteType, 77, 0)
	proposal := proposalBytes(9, 1)
	return []tc{
		// CometBFT FilePV, as cmtjson.MarshalIndent writes it.
		{
			name: "cometbft fresh",
			in:   "{\n  \"height\": \"0\",\n  \"round\": 0,\n  \"step\": 0\n}",
			want: State{Format: FormatCometBFT},
		},
		{
			name: "cometbft precommit with bytes",
			in: fmt.Sprintf("{\n  \"height\": \"1000001\",\n  \"round\": 2,\n  \"step\": 3,\n  \"signature\": %q,\n  \"signbytes\": %q\n}",
				sigB64, upperHex(precommit)),
			want: State{Height: 1_000_001, Round: 2, Step: 3, SignBytes: precommit, Format: FormatCometBFT},
		},
		{
			name: "cometbft proposal, lower-case hex",
			in:   fmt.Sprintf(`{"height":"9","round":1,"step":1,"signature":%q,"signbytes":%q}`, sigB64, hex.EncodeToString(proposal)),
			want: State{Height: 9, Round: 1, Step: 1, SignBytes: proposal, Format: FormatCometBFT},
		},
		{
			name: "cometbft without bytes",
			in:   `{"height":"500","round":0,"step":2}`,
			want: State{Height: 500, Step: 2, Format: FormatCometBFT},
		},
		{
			name:   "cometbft explicit, unquoted height",
			format: FormatCometBFT,
			in:     `{"height":500,"round":0,"step":2}`,
			want:   State{Height: 500, Step: 2, Format: FormatCometBFT},
		},
		{
			name: "cometbft negative height",
			in:   `{"height":"-5","round":0,"step":2}`,
			errs: []string{"CometBFT priv_validator_state.json", `field "height"`, "negative"},
		},
		{
			name: "cometbft negative round",
			in:   `{"height":"5","round":-1,"step":2}`,
			errs: []string{"CometBFT", `field "round"`, "negative"},
		},
		{
			name: "cometbft round beyond int32",
			in:   `{"height":"5","round":2147483648,"step":2}`,
			errs: []string{`field "round"`, "maximum"},
		},
		{
			name: "cometbft step 4",
			in:   `{"height":"5","round":0,"step":4}`,
			errs: []string{`field "step"`, "above the maximum 3"},
		},
		{
			name: "cometbft step 0 above height 0",
			in:   `{"height":"5","round":0,"step":0}`,
			errs: []string{`field "step"`, "only valid with height 0"},
		},
		{
			name: "cometbft height 0 with a step",
			in:   `{"height":"0","round":0,"step":3}`,
			errs: []string{`field "height"`, "fresh state"},
		},
		{
			name: "cometbft fractional height",
			in:   `{"height":"1.5","round":0,"step":1}`,
			errs: []string{`field "height"`, "not a whole number"},
		},
		{
			name: "cometbft exponent height",
			in:   `{"height":1e3,"round":0,"step":1}`,
			errs: []string{`field "height"`, "not a whole number"},
		},
		{
			name: "cometbft height beyond int64",
			in:   `{"height":"9223372036854775808","round":0,"step":1}`,
			errs: []string{`field "height"`, "out of range"},
		},
		{
			name: "cometbft missing step",
			in:   `{"height":"5","round":0}`,
			errs: []string{`field "step"`, "missing"},
		},
		{
			name: "cometbft null height",
			in:   `{"height":null,"round":0,"step":1}`,
			errs: []string{`field "height"`, "null"},
		},
		{
			name: "cometbft signbytes not hex",
			in:   `{"height":"5","round":0,"step":2,"signbytes":"XYZ"}`,
			errs: []string{`field "signbytes"`, "not hex"},
		},
		{
			name: "cometbft signbytes for another height",
			in:   fmt.Sprintf(`{"height":"1000002","round":2,"step":3,"signbytes":%q}`, upperHex(precommit)),
			errs: []string{`field "signbytes"`, "1000001/2", "1000002/2"},
		},
		{
			name: "cometbft signbytes of a prevote at the precommit step",
			in:   fmt.Sprintf(`{"height":"77","round":0,"step":3,"signbytes":%q}`, upperHex(prevote)),
			errs: []string{`field "signbytes"`, "prevote message", "precommit"},
		},
		{
			name: "cometbft signbytes with trailing garbage",
			in:   fmt.Sprintf(`{"height":"77","round":0,"step":2,"signbytes":%q}`, upperHex(prevote)+"00"),
			errs: []string{`field "signbytes"`, "length prefix"},
		},
		{
			name: "cometbft signbytes in a fresh state",
			in:   fmt.Sprintf(`{"height":"0","round":0,"step":0,"signbytes":%q}`, upperHex(prevote)),
			errs: []string{`field "signbytes"`, "never signed"},
		},
		{
			name: "cometbft signature not base64",
			in:   `{"height":"5","round":0,"step":2,"signature":"!!"}`,
			errs: []string{`field "signature"`, "base64"},
		},

		// tmkms: tendermint-rs consensus::State through serde_json.
		{
			name: "tmkms fresh",
			in:   `{"height":"0","round":"0","step":0,"block_id":null}`,
			want: State{Format: FormatTmkms},
		},
		{
			name: "tmkms proposal is step 0",
			in:   `{"height":"19200101","round":"0","step":0,"block_id":{"hash":"26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D","part_set_header":{"total":1,"hash":"2470A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"}}}`,
			want: State{Height: 19_200_101, Step: fsm.StepPropose, Format: FormatTmkms},
		},
		{
			name: "tmkms prevote is step 1",
			in:   `{"height":"19200101","round":"3","step":1,"block_id":null}`,
			want: State{Height: 19_200_101, Round: 3, Step: fsm.StepPrevote, Format: FormatTmkms},
		},
		{
			name: "tmkms precommit is step 2, block id with legacy parts",
			in:   `{"height":"5","round":"1","step":2,"block_id":{"hash":"1234567890123456789012345678901234567890123456789012345678901234","parts":{"total":"1","hash":"1234567890123456789012345678901234567890123456789012345678901234"}}}`,
			want: State{Height: 5, Round: 1, Step: fsm.StepPrecommit, Format: FormatTmkms},
		},
		{
			name: "tmkms legacy proposal step 3",
			in:   `{"height":"42","round":"0","step":3,"block_id":null}`,
			want: State{Height: 42, Step: fsm.StepPropose, Format: FormatTmkms},
		},
		{
			name: "tmkms legacy vote step 6 reads as precommit",
			in:   `{"height":"42","round":"1","step":6,"block_id":null}`,
			want: State{Height: 42, Round: 1, Step: fsm.StepPrecommit, Format: FormatTmkms},
		},
		{
			name: "tmkms 0.5 unquoted integers",
			in:   `{"height":123456,"round":0,"step":6,"block_id":null}`,
			want: State{Height: 123456, Step: fsm.StepPrecommit, Format: FormatTmkms},
		},
		{
			name: "tmkms hex string block id",
			in:   `{"height":"7","round":"0","step":1,"block_id":"26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"}`,
			want: State{Height: 7, Step: fsm.StepPrevote, Format: FormatTmkms},
		},
		{
			name: "tmkms unknown step",
			in:   `{"height":"7","round":"0","step":4,"block_id":null}`,
			errs: []string{"tmkms consensus state file", `field "step"`, "unknown tmkms step 4"},
		},
		{
			name: "tmkms negative round",
			in:   `{"height":"7","round":"-1","step":1,"block_id":null}`,
			errs: []string{"tmkms", `field "round"`, "negative"},
		},
		{
			name: "tmkms prevote at height 0",
			in:   `{"height":"0","round":"0","step":1,"block_id":null}`,
			errs: []string{"tmkms", `field "height"`, "fresh state"},
		},
		{
			name: "tmkms block id of the wrong shape",
			in:   `{"height":"7","round":"0","step":1,"block_id":42}`,
			errs: []string{"tmkms", `field "block_id"`},
		},
		{
			name: "tmkms block id hash not hex",
			in:   `{"height":"7","round":"0","step":1,"block_id":{"hash":"zz","parts":{"total":1,"hash":""}}}`,
			errs: []string{"tmkms", `field "block_id"`, "not hex"},
		},

		// horcrux: SignState through CometBFT's JSON (int64 quoted).
		{
			name: "horcrux fresh, as in the horcrux repository",
			in:   "{\n  \"height\": \"0\",\n  \"round\": \"0\",\n  \"step\": 0,\n  \"nonce_public\": null,\n  \"FilePath\": \"chain-1_priv_validator_state.json\"\n}",
			want: State{Format: FormatHorcrux},
		},
		{
			name: "horcrux v3 base64 signbytes",
			in: fmt.Sprintf("{\n  \"height\": \"1000001\",\n  \"round\": \"2\",\n  \"step\": 3,\n  \"nonce_public\": null,\n  \"signature\": %q,\n  \"signbytes\": %q,\n  \"vote_ext_signature\": %q\n}",
				sigB64, base64.StdEncoding.EncodeToString(precommit), sigB64),
			want: State{Height: 1_000_001, Round: 2, Step: 3, SignBytes: precommit, Format: FormatHorcrux},
		},
		{
			name: "horcrux older hex signbytes",
			in: fmt.Sprintf(`{"height":"9","round":"1","step":1,"ephemeral_public":null,"signature":%q,"signbytes":%q}`,
				sigB64, upperHex(proposal)),
			want: State{Height: 9, Round: 1, Step: 1, SignBytes: proposal, Format: FormatHorcrux},
		},
		{
			name: "horcrux detected by quoted round alone",
			in:   fmt.Sprintf(`{"height":"77","round":"0","step":2,"signbytes":%q}`, base64.StdEncoding.EncodeToString(prevote)),
			want: State{Height: 77, Step: 2, SignBytes: prevote, Format: FormatHorcrux},
		},
		{
			name: "horcrux signbytes neither encoding",
			in:   `{"height":"77","round":"0","step":2,"nonce_public":null,"signbytes":"%%%"}`,
			errs: []string{"horcrux sign state file", `field "signbytes"`, "neither hex nor base64"},
		},
		{
			name: "horcrux signbytes for another round",
			in:   fmt.Sprintf(`{"height":"77","round":"1","step":2,"nonce_public":null,"signbytes":%q}`, base64.StdEncoding.EncodeToString(prevote)),
			errs: []string{"horcrux", `field "signbytes"`, "77/0"},
		},
		{
			name: "horcrux step 7",
			in:   `{"height":"77","round":"0","step":7,"nonce_public":null}`,
			errs: []string{"horcrux", `field "step"`},
		},

		// Detection and explicit formats.
		{
			name: "not JSON",
			in:   `height=5`,
			errs: []string{"signer state file", "not a JSON object"},
		},
		{
			name: "JSON null",
			in:   `null`,
			errs: []string{"not a JSON object"},
		},
		{
			name: "a key file",
			in:   `{"address":"AB","pub_key":{"type":"tendermint/PubKeyEd25519","value":"x"},"priv_key":{"type":"tendermint/PrivKeyEd25519","value":"y"}}`,
			errs: []string{"priv_validator_key.json"},
		},
		{
			name: "block_id with signbytes is ambiguous",
			in:   `{"height":"5","round":"0","step":2,"block_id":null,"signbytes":""}`,
			errs: []string{"block_id", "no known signer writes both"},
		},
		{
			name:   "cometbft file named tmkms",
			format: FormatTmkms,
			in:     fmt.Sprintf(`{"height":"77","round":0,"step":2,"signbytes":%q}`, upperHex(prevote)),
			errs:   []string{"tmkms consensus state file", `field "signbytes"`, "format right"},
		},
		{
			name:   "tmkms file named cometbft",
			format: FormatCometBFT,
			in:     `{"height":"7","round":"0","step":2,"block_id":null}`,
			errs:   []string{"CometBFT", `field "block_id"`},
		},
		{
			name:   "unknown format",
			format: "privval",
			in:     `{"height":"0","round":0,"step":0}`,
			errs:   []string{`unknown state file format "privval"`},
		},
	}
}

func TestParse(t *testing.T) {
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			format := c.format
			if format == "" {
				format = FormatAuto
			}
			got, err := ParseFormat([]byte(c.in), format)
			if len(c.errs) > 0 {
				if err == nil {
					t.Fatalf("parsed %+v, want an error containing %q", got, c.errs)
				}
				for _, s := range c.errs {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if got.Height != c.want.Height || got.Round != c.want.Round || got.Step != c.want.Step ||
				got.Format != c.want.Format || !bytes.Equal(got.SignBytes, c.want.SignBytes) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
			if (got.SignBytes == nil) != (c.want.SignBytes == nil) {
				t.Fatalf("SignBytes nil-ness differs: got %v want %v", got.SignBytes, c.want.SignBytes)
			}
		})
	}
}

func TestErrorsAreTyped(t *testing.T) {
	_, err := Parse([]byte(`{"height":"5","round":0,"step":9}`))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an *Error", err)
	}
	if e.Format != FormatCometBFT || e.Field != "step" {
		t.Fatalf("got format %q field %q, want cometbft/step", e.Format, e.Field)
	}
}

// TestRealFilePVState parses files written by CometBFT's own FilePV, so
// the CometBFT format is checked against the writer, not a transcription.
func TestRealFilePVState(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "priv_validator_state.json")
	pv := privval.GenFilePV(filepath.Join(dir, "priv_validator_key.json"), statePath)
	pv.Save()

	check := func(want State) {
		t.Helper()
		raw, err := os.ReadFile(statePath)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("FilePV wrote: %s", raw)
		got, err := ParseFile(statePath, FormatAuto)
		if err != nil {
			t.Fatalf("parse FilePV's own file: %v", err)
		}
		if got.HRS() != want.HRS() || !bytes.Equal(got.SignBytes, want.SignBytes) || got.Format != FormatCometBFT {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	}
	check(State{})

	addr := pv.GetAddress()
	prevote := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 12, Round: 1, BlockID: blockID(),
		Timestamp: stamp, ValidatorAddress: addr}
	if err := pv.SignVote(chainID, prevote); err != nil {
		t.Fatal(err)
	}
	check(State{Height: 12, Round: 1, Step: fsm.StepPrevote, SignBytes: types.VoteSignBytes(chainID, prevote)})

	precommit := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 12, Round: 1, BlockID: blockID(),
		Timestamp: stamp, ValidatorAddress: addr}
	if err := pv.SignVote(chainID, precommit); err != nil {
		t.Fatal(err)
	}
	check(State{Height: 12, Round: 1, Step: fsm.StepPrecommit, SignBytes: types.VoteSignBytes(chainID, precommit)})

	proposal := &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 13, Round: 0, PolRound: -1,
		BlockID: blockID(), Timestamp: stamp}
	if err := pv.SignProposal(chainID, proposal); err != nil {
		t.Fatal(err)
	}
	check(State{Height: 13, Round: 0, Step: fsm.StepPropose, SignBytes: types.ProposalSignBytes(chainID, proposal)})
}

func TestParsedStateImportsIntoTheFSM(t *testing.T) {
	// What the importer does with a parsed state: the watermark it yields
	// must refuse the position itself and everything below it.
	s, err := Parse([]byte(`{"height":"42","round":"1","step":6,"block_id":null}`))
	if err != nil {
		t.Fatal(err)
	}
	cur := fsm.Watermark{HRS: s.HRS(), SignBytes: s.SignBytes}
	for _, h := range []fsm.HRS{{Height: 42, Round: 1, Step: fsm.StepPrevote}, {Height: 42, Round: 1, Step: fsm.StepPrecommit}, {Height: 41, Round: 9, Step: fsm.StepPrecommit}} {
		if d := fsm.Decide(cur, h, []byte{1}); d.Outcome != fsm.Refuse {
			t.Fatalf("%s allowed over imported %s", h, s.HRS())
		}
	}
	if d := fsm.Decide(cur, fsm.HRS{Height: 42, Round: 2, Step: fsm.StepPropose}, []byte{1}); d.Outcome != fsm.Allow {
		t.Fatalf("next round refused: %s", d.Detail)
	}
}

func TestParseFileErrorsNameThePath(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	if err := os.WriteFile(p, []byte(`{"height":"-1","round":0,"step":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ParseFile(p, FormatAuto)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"height"`) {
		t.Fatalf("error %v does not name the path and field", err)
	}
	if _, err := ParseFile(filepath.Join(dir, "missing.json"), FormatAuto); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, bytes.Repeat([]byte(" "), MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseFile(big, FormatAuto); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized file: %v", err)
	}
}
