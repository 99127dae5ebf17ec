package fsm

import (
	"errors"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

// goldenEntries are log entries exactly as this release writes them: one
// byte of type, one of version, then the JSON body. Raft logs and
// snapshots on operators' disks hold these bytes, so an encoding change
// would make a replica misread its own log: this test must never be
// edited to follow the code, only extended when a type or version is added.
var goldenEntries = []struct {
	name string
	enc  func() ([]byte, error)
	want string
	body any
	// level is what applying the entry needs (and raises MaxLevel to).
	level int
}{
	{
		name: "reserve v1",
		enc: func() ([]byte, error) {
			return EncodeReserve(Reserve{ChainID: "c", HRS: HRS{Height: 7, Round: 1, Step: StepPrevote}, SignBytes: []byte{1, 2, 3}})
		},
		want:  "\x01\x01" + `{"chain_id":"c","hrs":{"height":7,"round":1,"step":2},"sign_bytes":"AQID"}`,
		body:  Reserve{ChainID: "c", HRS: HRS{Height: 7, Round: 1, Step: StepPrevote}, SignBytes: []byte{1, 2, 3}},
		level: 0,
	},
	{
		name: "reserve v2",
		enc: func() ([]byte, error) {
			return EncodeReserve(Reserve{ChainID: "c", HRS: HRS{Height: 7, Round: 1, Step: StepPrevote}, SignBytes: []byte{1, 2, 3}, NeedState: true})
		},
		want:  "\x01\x02" + `{"chain_id":"c","hrs":{"height":7,"round":1,"step":2},"sign_bytes":"AQID"}`,
		body:  Reserve{ChainID: "c", HRS: HRS{Height: 7, Round: 1, Step: StepPrevote}, SignBytes: []byte{1, 2, 3}, NeedState: true},
		level: 1,
	},
	{
		// Encode writes a type's newest version: 2 for a reservation.
		name: "reserve through Encode",
		enc: func() ([]byte, error) {
			return Encode(CmdReserve, Reserve{ChainID: "c", HRS: HRS{Height: 1, Step: StepPropose}})
		},
		want:  "\x01\x02" + `{"chain_id":"c","hrs":{"height":1,"round":0,"step":1},"sign_bytes":null}`,
		body:  Reserve{ChainID: "c", HRS: HRS{Height: 1, Step: StepPropose}, NeedState: true},
		level: 1,
	},
	{
		name: "set-member",
		enc: func() ([]byte, error) {
			return Encode(CmdSetMember, SetMember{ID: "n1", APIAddr: "10.0.0.1:9443", Level: 1})
		},
		want:  "\x02\x01" + `{"id":"n1","api_addr":"10.0.0.1:9443","level":1}`,
		body:  SetMember{ID: "n1", APIAddr: "10.0.0.1:9443", Level: 1},
		level: 0,
	},
	{
		name:  "set-member level 0, removal",
		enc:   func() ([]byte, error) { return Encode(CmdSetMember, SetMember{ID: "n1"}) },
		want:  "\x02\x01" + `{"id":"n1","api_addr":""}`,
		body:  SetMember{ID: "n1"},
		level: 0,
	},
	{
		name: "import",
		enc: func() ([]byte, error) {
			return Encode(CmdImport, Import{ChainID: "c", HRS: HRS{Height: 9, Step: StepPrecommit}, SignBytes: []byte{9}, Source: "priv_validator_state.json"})
		},
		want:  "\x03\x01" + `{"chain_id":"c","hrs":{"height":9,"round":0,"step":3},"sign_bytes":"CQ==","source":"priv_validator_state.json"}`,
		body:  Import{ChainID: "c", HRS: HRS{Height: 9, Step: StepPrecommit}, SignBytes: []byte{9}, Source: "priv_validator_state.json"},
		level: 1,
	},
	{
		name:  "import fresh",
		enc:   func() ([]byte, error) { return Encode(CmdImport, Import{ChainID: "c"}) },
		want:  "\x03\x01" + `{"chain_id":"c","hrs":{"height":0,"round":0,"step":0}}`,
		body:  Import{ChainID: "c"},
		level: 1,
	},
	{
		name: "set-chain-key",
		enc: func() ([]byte, error) {
			return Encode(CmdSetChainKey, SetChainKey{ChainID: "c", PubKey: []byte{0xAA, 0xBB}, KeyType: "ed25519"})
		},
		want:  "\x04\x01" + `{"chain_id":"c","pub_key":"qrs=","key_type":"ed25519"}`,
		body:  SetChainKey{ChainID: "c", PubKey: []byte{0xAA, 0xBB}, KeyType: "ed25519"},
		level: 1,
	},
	{
		// Applied to an empty state it records nothing (no watermark at
		// that position), but it still needs level 2.
		name: "record-signature",
		enc: func() ([]byte, error) {
			return Encode(CmdRecordSignature, RecordSignature{ChainID: "c", HRS: HRS{Height: 3, Step: StepPrevote}, SignBytes: []byte{1}, Signature: []byte{2, 3}})
		},
		want:  "\x05\x01" + `{"chain_id":"c","hrs":{"height":3,"round":0,"step":2},"sign_bytes":"AQ==","signature":"AgM="}`,
		body:  RecordSignature{ChainID: "c", HRS: HRS{Height: 3, Step: StepPrevote}, SignBytes: []byte{1}, Signature: []byte{2, 3}},
		level: 2,
	},
}

func TestGoldenEncoding(t *testing.T) {
	for _, g := range goldenEntries {
		t.Run(g.name, func(t *testing.T) {
			got, err := g.enc()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != g.want {
				t.Fatalf("encoding changed:\n got %q\nwant %q", got, g.want)
			}
			typ, body, err := Decode([]byte(g.want))
			if err != nil {
				t.Fatal(err)
			}
			if typ != CommandType(g.want[0]) || !reflect.DeepEqual(body, g.body) {
				t.Fatalf("decoded %d %#v, want %d %#v", typ, body, g.want[0], g.body)
			}
			f := New()
			if res, isErr := f.Apply(&raft.Log{Type: raft.LogCommand, Data: []byte(g.want)}).(error); isErr {
				t.Fatalf("apply: %v", res)
			}
			if f.MaxLevel() != g.level {
				t.Fatalf("applying needs level %d, want %d", f.MaxLevel(), g.level)
			}
		})
	}
}

// TestGoldenLevels: what each type needs at its newest version, and that
// this binary's level covers every type it writes.
func TestGoldenLevels(t *testing.T) {
	want := map[CommandType]int{CmdReserve: 1, CmdSetMember: 0, CmdImport: 1, CmdSetChainKey: 1, CmdRecordSignature: 2}
	for typ, lv := range want {
		if got := RequiredLevel(typ); got != lv {
			t.Errorf("type %d needs level %d, want %d", typ, got, lv)
		}
		if lv > Level {
			t.Errorf("type %d needs level %d, above this binary's %d", typ, lv, Level)
		}
	}
	if Level != 2 {
		t.Errorf("Level is %d, want 2", Level)
	}
	// Versions past the newest, version 0 and unknown types are refused.
	for _, data := range []string{"\x01\x03{}", "\x02\x02{}", "\x03\x02{}", "\x04\x02{}", "\x05\x02{}", "\x01\x00{}", "\x06\x01{}", "\x00\x01{}"} {
		if _, _, err := Decode([]byte(data)); !errors.Is(err, ErrUnknownCommand) {
			t.Errorf("entry %q: %v, want ErrUnknownCommand", data, err)
		}
	}
	if _, err := Encode(CommandType(6), struct{}{}); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("encode of an unknown type: %v", err)
	}
}
