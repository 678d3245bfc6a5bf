package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// buildAgent builds the agent into a temporary directory with its version
// set the way a release build sets it.
func buildAgent(t *testing.T, version string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "cradle-agent")
	out, err := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X cradle.Version="+version, "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestBinaryPrintsVersion(t *testing.T) {
	bin := buildAgent(t, "v1.2.3-test")
	want := "cradle-agent v1.2.3-test (" + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")\n"
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"command", []string{"version"}},
		{"flag", []string{"--version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(bin, tc.args...).Output()
			if err != nil {
				t.Fatalf("cradle-agent %s: %v", strings.Join(tc.args, " "), err)
			}
			if string(out) != want {
				t.Errorf("cradle-agent %s printed %q, want %q", strings.Join(tc.args, " "), out, want)
			}
		})
	}
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		stdout     string // a fragment stdout must contain
		stderr     string // a fragment stderr must contain
		emptyOut   bool
		emptyError bool
	}{
		{name: "help", args: []string{"--help"}, code: 0, stdout: "enrolls the device with its factory identity", emptyError: true},
		{name: "no command", args: nil, code: 2, stderr: "Usage:", emptyOut: true},
		{name: "unknown command", args: []string{"enroll"}, code: 2, stderr: `unknown command "enroll"`, emptyOut: true},
		{name: "unknown flag", args: []string{"--nope"}, code: 2, stderr: "flag provided but not defined", emptyOut: true},
		{name: "version with extra argument", args: []string{"version", "x"}, code: 2, stderr: "unknown command", emptyOut: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tc.stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.stderr)
			}
			if tc.emptyOut && stdout.Len() > 0 {
				t.Errorf("stdout is %q, want nothing", stdout.String())
			}
			if tc.emptyError && stderr.Len() > 0 {
				t.Errorf("stderr is %q, want nothing", stderr.String())
			}
		})
	}
}
