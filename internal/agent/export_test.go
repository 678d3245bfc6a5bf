package agent

// WithWipeCrash returns o with a crash injected before each erase step:
// crash returns the error that stops the wipe there, as a power cut would,
// or nil to go on.
func WithWipeCrash(o WipeOptions, crash func(step string) error) WipeOptions {
	o.crash = crash
	return o
}
