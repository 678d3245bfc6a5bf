package hw

// storeError is an error of a real key store that matches both the
// KeyStore error kind (ErrExists, ErrNotFound, ErrInvalid) and its cause
// under errors.Is.
type storeError struct {
	op, name string
	kind     error
	err      error
}

func (e *storeError) Error() string { return "hw: " + e.op + " " + e.name + ": " + e.err.Error() }

func (e *storeError) Unwrap() []error { return []error{e.kind, e.err} }
