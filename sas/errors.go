// Package sas parses and formats IoT Hub connection strings and signs,
// parses and verifies shared access signature (SAS) tokens.
//
// The package is pure: it performs no I/O, does no logging and never reads
// the clock; callers pass the time in. No error produced here ever contains a
// key, a signature or a whole token.
package sas

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package matches exactly one
// of them with errors.Is.
var (
	// ErrMalformed reports a syntax error in a connection string, key or
	// token. It is always wrapped with detail.
	ErrMalformed = errors.New("sas: malformed")
	// ErrExpired reports a token whose se lies before the verification time.
	ErrExpired = errors.New("sas: token expired")
	// ErrSignature reports a token whose signature matches none of the keys.
	ErrSignature = errors.New("sas: signature does not match")
	// ErrAudience reports a token whose sr does not cover the resource.
	ErrAudience = errors.New("sas: token audience does not cover the resource")
)

// FieldError names the connection-string key that is missing, duplicated or
// malformed. errors.Is(fe, ErrMalformed) is true. Error() never contains the
// key's value.
type FieldError struct {
	Key    string // connection-string key, e.g. "SharedAccessKey"; "" when the element has no key
	Reason string // what is wrong, without the value
}

func (e *FieldError) Error() string {
	if e.Key == "" {
		return "sas: malformed connection string: " + e.Reason
	}
	return "sas: malformed connection string: " + e.Key + ": " + e.Reason
}

// Unwrap makes errors.Is(e, ErrMalformed) true.
func (e *FieldError) Unwrap() error { return ErrMalformed }

// tokenError is a syntax error in a SAS token.
type tokenError struct{ reason string }

func (e *tokenError) Error() string { return "sas: malformed token: " + e.reason }
func (e *tokenError) Unwrap() error { return ErrMalformed }

func malformedToken(format string, args ...any) error {
	return &tokenError{reason: fmt.Sprintf(format, args...)}
}

// keyError is a malformed key passed to Sign or Verify.
type keyError struct{ what, reason string }

func (e *keyError) Error() string { return "sas: malformed " + e.what + ": " + e.reason }
func (e *keyError) Unwrap() error { return ErrMalformed }
