package stateimport

import (
	"errors"
	"testing"

	"github.com/kms-ha/kms-ha/fsm"
)

// FuzzParse feeds arbitrary bytes to every format. Parsing must never
// panic, and whatever it accepts must be a position the FSM can take.
func FuzzParse(f *testing.F) {
	for _, c := range cases() {
		f.Add([]byte(c.in))
	}
	f.Add([]byte(`{"height":"1","round":"0","step":0,"block_id":{"hash":"","parts":null}}`))
	f.Add([]byte(`{"height":"3","round":0,"step":1,"signbytes":"00"}`))

	formats := []string{FormatAuto, FormatCometBFT, FormatTmkms, FormatHorcrux}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range formats {
			s, err := ParseFormat(data, format)
			if err != nil {
				if err.Error() == "" {
					t.Fatalf("%s: empty error message", format)
				}
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("%s: error %v is not an *Error", format, err)
				}
				continue
			}
			if format != FormatAuto && s.Format != format {
				t.Fatalf("asked for %s, got %s", format, s.Format)
			}
			switch s.Format {
			case FormatCometBFT, FormatTmkms, FormatHorcrux:
			default:
				t.Fatalf("unknown format %q in result", s.Format)
			}
			if s.Height < 0 || s.Round < 0 || s.Step < fsm.StepNone || s.Step > fsm.StepPrecommit {
				t.Fatalf("%s accepted an invalid position %+v", format, s)
			}
			if (s.Height == 0) != (s.Step == fsm.StepNone) {
				t.Fatalf("%s: step 0 must go with height 0 and only with it: %+v", format, s)
			}
			if s.Height == 0 && (s.Round != 0 || s.SignBytes != nil) {
				t.Fatalf("%s: fresh state with round or bytes: %+v", format, s)
			}
			if s.SignBytes != nil {
				if s.Format == FormatTmkms {
					t.Fatalf("tmkms state with sign bytes: %+v", s)
				}
				if err := checkSignBytes(s.SignBytes, s); err != nil {
					t.Fatalf("%s accepted sign bytes that do not match: %v", format, err)
				}
			}
		}
	})
}
