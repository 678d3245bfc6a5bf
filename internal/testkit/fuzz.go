package testkit

import (
	"flag"
	"testing"
)

// FuzzMain runs a package's tests with a cap on how many calls the fuzzer
// spends minimizing each input, for packages whose fuzz targets take
// kilobyte seeds: call it from TestMain as os.Exit(testkit.FuzzMain(m, "500x")).
//
// Why: under -fuzz, Go minimizes every input that finds new coverage
// before it fuzzes on, trying on the order of n*n/2 smaller candidates
// for an n-byte input, bounded only by -fuzzminimizetime (default 60s).
// With seeds of a few kilobytes (signed metadata, archives) that is a
// stall of up to a minute per new input on every worker, reported as
// "0/sec". minimize is the default for -fuzzminimizetime ("Nx" calls or
// a duration); an explicit -fuzzminimizetime on the command line wins.
// Runs without -fuzz (the seed corpus in CI) are unaffected.
func FuzzMain(m *testing.M, minimize string) int {
	flag.Parse()
	fuzzing, set := false, false
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "test.fuzz":
			fuzzing = f.Value.String() != ""
		case "test.fuzzminimizetime":
			set = true
		}
	})
	if fuzzing && !set {
		if err := flag.Set("test.fuzzminimizetime", minimize); err != nil {
			panic("testkit: bad minimize limit " + minimize + ": " + err.Error())
		}
	}
	return m.Run()
}
