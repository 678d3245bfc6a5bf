package cradle

import (
	"errors"
	"fmt"
)

// Error codes visible to clients. Each transport keeps one table from code to
// its own status (HTTP status, CoAP code, MQTT reason code). The set is small
// and stable; add to it only with a transport mapping for every transport.
const (
	ECONFLICT       = "conflict"        // the request clashes with current state (duplicate, illegal transition)
	EINTERNAL       = "internal"        // a failure on our side; details are logged, not shown
	EINVALID        = "invalid"         // the request is malformed or breaks a validation rule
	ENOTFOUND       = "not_found"       // no such record (or it belongs to another tenant)
	EUNAUTHORIZED   = "unauthorized"    // no credentials, or credentials that are unknown, expired or revoked
	EFORBIDDEN      = "forbidden"       // authenticated, but the role may not do this
	ETOOLARGE       = "too_large"       // the request body is over its size limit
	ENOTIMPLEMENTED = "not_implemented" // the operation exists but is not available in this deployment
	EUNAVAILABLE    = "unavailable"     // the service is starting or shutting down
)

// Error is an error a client may see: a stable code and a message that says
// what was wrong and, where it helps, what to do.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("cradle: %s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL for
// any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the message of the first *Error in err's chain, a
// generic message for any other non-nil error (its text may hold internals),
// and "" for nil.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
