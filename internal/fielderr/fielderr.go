// Package fielderr is how a package below config reports a problem with
// one field of its configuration: the field as kms.yaml spells it inside
// the package's section ("pin", "keys[0].id") and what to do about it.
// The package's own error reads "keys/pkcs11: pin: set exactly one ...";
// config names the same problem by its place in kms.yaml
// ("keys[2].pin: set exactly one ..."), so the rule and its message are
// written once, next to the code that relies on it.
package fielderr

import (
	"errors"
	"fmt"
)

// Error is one problem with one field.
type Error struct {
	// Prefix names the package, e.g. "keys/pkcs11".
	Prefix string
	// Field is the kms.yaml field, relative to the section entry.
	Field string
	// Msg says what is wrong and how to fix it.
	Msg string
}

func (e *Error) Error() string { return e.Prefix + ": " + e.Field + ": " + e.Msg }

// New returns a field error with a formatted message.
func New(prefix, field, format string, args ...any) *Error {
	return &Error{Prefix: prefix, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Split lists the problems in err, which may be one error or several
// joined with errors.Join: field errors, and others (rest) that name no
// field.
func Split(err error) (fields []*Error, rest []error) {
	if err == nil {
		return nil, nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			f, r := Split(e)
			fields, rest = append(fields, f...), append(rest, r...)
		}
		return fields, rest
	}
	var fe *Error
	if errors.As(err, &fe) {
		return []*Error{fe}, nil
	}
	return nil, []error{err}
}
