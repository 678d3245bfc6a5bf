// Package testkit starts the real third-party programs tests run beside
// Cradle: a SoftHSM2 token, a swtpm TPM 2.0 simulator. A test that needs
// one calls its helper, which skips the test with a clear message when the
// program is missing and fails it instead when the CI variable is set (see
// docs TESTING.md). Whatever a helper starts is stopped by t.Cleanup.
//
// Only tests import this package.
package testkit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// NeedProgram returns the path of the program name, skipping the test when
// it is not installed, or failing it when CI is set.
func NeedProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, fmt.Sprintf("%s is not installed (%v)", name, err))
	}
	return p
}

// NeedFile checks that path exists, like NeedProgram.
func NeedFile(t testing.TB, path, what string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Missing(t, fmt.Sprintf("%s %s is not installed (%v)", what, path, err))
	}
}

// Missing skips the test, saying why, or fails it when CI is set.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("required in CI: %s", why)
	}
	t.Skipf("skipping: %s", why)
}

// Run runs a program and returns its combined output, failing the test if
// it exits non-zero.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// SoftHSMModule is the path of Debian's SoftHSM2 PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SoftHSM is a SoftHSM2 token directory private to one test.
type SoftHSM struct {
	// Module is the PKCS#11 module path.
	Module string
	// Conf is the SOFTHSM2_CONF file.
	Conf string
	// PIN is the user PIN of every token; PINFile holds it.
	PIN     string
	PINFile string
}

// NewSoftHSM makes a token directory under t.TempDir and points SoftHSM2
// at it through SOFTHSM2_CONF, then initializes a token for each label.
// SOFTHSM2_CONF is process-wide, so tests using it must not run in
// parallel (t.Setenv enforces that).
func NewSoftHSM(t testing.TB, labels ...string) *SoftHSM {
	t.Helper()
	NeedProgram(t, "softhsm2-util")
	NeedFile(t, SoftHSMModule, "the SoftHSM2 module")
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	h := &SoftHSM{Module: SoftHSMModule, Conf: filepath.Join(dir, "softhsm2.conf"), PIN: "1234", PINFile: filepath.Join(dir, "pin")}
	if err := os.WriteFile(h.Conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.PINFile, []byte(h.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ts, ok := t.(interface{ Setenv(string, string) }); ok {
		ts.Setenv("SOFTHSM2_CONF", h.Conf)
	} else {
		t.Fatal("testkit: NewSoftHSM needs a *testing.T or *testing.B")
	}
	for _, l := range labels {
		h.InitToken(t, l)
	}
	return h
}

// InitToken initializes a token labelled label with the user PIN h.PIN.
func (h *SoftHSM) InitToken(t testing.TB, label string) {
	t.Helper()
	Run(t, "softhsm2-util", "--init-token", "--free", "--label", label, "--pin", h.PIN, "--so-pin", "5678")
}

// URI returns the RFC 7512 URI of the object in token, with the module
// path and the PIN file.
func (h *SoftHSM) URI(token, object string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", token, object, h.Module, h.PINFile)
}

// Objects lists the objects of token with pkcs11-tool (opensc), one line
// per attribute as pkcs11-tool prints them.
func (h *SoftHSM) Objects(t testing.TB, token string) string {
	t.Helper()
	tool := NeedProgram(t, "pkcs11-tool")
	return Run(t, tool, "--module", h.Module, "--token-label", token, "--login", "--pin", h.PIN, "--list-objects")
}

// SWTPM is a swtpm TPM 2.0 simulator listening on loopback.
type SWTPM struct {
	// Addr is host:port of the TPM command channel (raw TPM 2.0 commands).
	Addr string
	// Port and CtrlPort are the command and control ports; swtpm's TCTI
	// expects CtrlPort = Port+1.
	Port, CtrlPort int
	// StateDir holds the TPM's persistent state.
	StateDir string
	cmd      *exec.Cmd
}

// TCTI is the tpm2-tools TCTI string for this simulator
// (TPM2TOOLS_TCTI, or tpm2_* --tcti).
func (s *SWTPM) TCTI() string {
	return fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", s.Port)
}

// Dial opens a connection to the command channel. swtpm serves one
// connection at a time: close it before another client (tpm2-tools) runs.
func (s *SWTPM) Dial() (net.Conn, error) {
	return net.DialTimeout("tcp", s.Addr, 5*time.Second)
}

// StartSWTPM starts swtpm with a fresh state directory, TPM2_Startup
// already done, on two free consecutive loopback ports, and stops it at
// the end of the test.
func StartSWTPM(t testing.TB) *SWTPM {
	t.Helper()
	return startSWTPM(t, t.TempDir())
}

// startSWTPM starts swtpm on the state directory state.
func startSWTPM(t testing.TB, state string) *SWTPM {
	t.Helper()
	bin := NeedProgram(t, "swtpm")
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		port, err := freePortPair()
		if err != nil {
			lastErr = err
			continue
		}
		s := &SWTPM{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, CtrlPort: port + 1, StateDir: state}
		logPath := filepath.Join(state, "swtpm.log")
		s.cmd = exec.Command(bin, "socket", "--tpm2",
			"--tpmstate", "dir="+state,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear",
			"--log", "file="+logPath+",level=1")
		if err := s.cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- s.cmd.Wait() }()
		deadline := time.Now().Add(5 * time.Second)
		up := false
		for time.Now().Before(deadline) {
			select {
			case err := <-done:
				lastErr = fmt.Errorf("swtpm exited: %v", err)
			default:
			}
			if lastErr != nil {
				break
			}
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port+1), 200*time.Millisecond); err == nil {
				c.Close()
				up = true
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if up {
			t.Cleanup(func() {
				s.cmd.Process.Kill()
				<-done
			})
			return s
		}
		s.cmd.Process.Kill()
		if lastErr == nil {
			lastErr = fmt.Errorf("swtpm did not listen on port %d within 5s", port+1)
			<-done
		}
	}
	t.Fatalf("start swtpm: %v", lastErr)
	return nil
}

// freePortPair finds a loopback port p such that p and p+1 are both free
// at the time of the probe. It draws from 10000–32767, below Linux's
// ephemeral range, where a busy machine's outgoing connections do not
// take ports between the probe and swtpm's bind.
func freePortPair() (int, error) {
	for i := 0; i < 200; i++ {
		p := 10000 + rand.IntN(32767-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no two consecutive free loopback ports")
}
