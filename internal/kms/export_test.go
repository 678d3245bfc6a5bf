package kms

// LimitKDFCost lowers the bounds on key derivation cost in files read, so
// a fuzz target is not slowed by inputs that ask for millions of PBKDF2
// iterations; it returns a function that restores them.
func LimitKDFCost(iterations, scryptMemory int) (restore func()) {
	oldIter, oldMem := maxPBKDF2Iterations, maxScryptMemory
	maxPBKDF2Iterations, maxScryptMemory = iterations, scryptMemory
	return func() { maxPBKDF2Iterations, maxScryptMemory = oldIter, oldMem }
}
