package wire

import (
	"errors"
	"strconv"
)

// Sentinel errors, wrapped by *Error. Test with errors.Is.
var (
	ErrTruncated       = errors.New("packet shorter than its header or its size field")
	ErrBadSize         = errors.New("packet size field smaller than the fixed header")
	ErrBadChecksum     = errors.New("checksum mismatch")
	ErrBadVersion      = errors.New("unsupported NHRP version")
	ErrUnknownType     = errors.New("unknown packet type")
	ErrAddressFamily   = errors.New("unsupported NBMA address family")
	ErrProtocolType    = errors.New("unsupported protocol type")
	ErrAddressLength   = errors.New("address length does not match its family")
	ErrExtOffset       = errors.New("extension offset outside the packet")
	ErrMandatoryPart   = errors.New("mandatory part overruns its end")
	ErrCIE             = errors.New("client information entry overruns the mandatory part")
	ErrExtOverrun      = errors.New("extension overruns the packet")
	ErrExtMissingEnd   = errors.New("extensions not terminated by an End extension")
	ErrExtTrailing     = errors.New("data after the End extension")
	ErrExtPayload      = errors.New("malformed extension payload")
	ErrTooBig          = errors.New("packet larger than 65535 bytes")
	ErrAddressMismatch = errors.New("address does not match the packet's address family")
	ErrFieldRange      = errors.New("field value out of range")
)

// Error is a decoding or encoding error. Code is the Error Indication code
// a receiver sends back for it; Offset is the byte offset in the packet
// where the problem was found (the Error Offset field).
type Error struct {
	Code   ErrorCode
	Offset int
	Err    error
	// Detail says more when the sentinel alone is vague; may be empty.
	Detail string
}

func (e *Error) Error() string {
	s := "nhrp: " + e.Err.Error()
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s + " at offset " + strconv.Itoa(e.Offset) + " [" + e.Code.String() + "]"
}

// Unwrap returns the sentinel error.
func (e *Error) Unwrap() error { return e.Err }

func protoErr(off int, err error) *Error {
	return &Error{Code: ErrorProtocol, Offset: off, Err: err}
}

func extErr(off int, err error) *Error {
	return &Error{Code: ErrorInvalidExtension, Offset: off, Err: err}
}
