package ipam

import (
	"errors"
	"fmt"
)

// Kinds of failure, for errors.Is. The message a user reads is the full
// sentence of the returned error, not these short texts: dockerd shows it
// verbatim in the output of `docker network create` or `docker run`.
var (
	ErrInvalid      = errors.New("invalid request")
	ErrOverlap      = errors.New("subnet overlaps a pool in use")
	ErrNoFreeSubnet = errors.New("no free default subnet")
	ErrUnknownPool  = errors.New("unknown pool")
	ErrOutOfRange   = errors.New("address outside the pool")
	ErrReserved     = errors.New("address reserved")
	ErrAddressInUse = errors.New("address already in use")
	ErrPoolFull     = errors.New("no free address in pool")
	ErrNotSaved     = errors.New("state not saved")
)

// Error is what every method of Allocator returns on failure.
type Error struct {
	kind  error
	msg   string
	cause error
}

func (e *Error) Error() string { return e.msg }

func (e *Error) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

func newErr(kind error, format string, args ...any) error {
	return &Error{kind: kind, msg: "ournet: " + fmt.Sprintf(format, args...)}
}

func notSaved(cause error) error {
	return &Error{
		kind:  ErrNotSaved,
		cause: cause,
		msg: fmt.Sprintf("ournet: could not save the change to ournet's state file (%v); "+
			"nothing was changed: check the disk holding the plugin's state and try again", cause),
	}
}
