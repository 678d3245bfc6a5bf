package testkit_test

import (
	"strings"
	"testing"

	"cradle/internal/testkit"
)

// TestSWTPM: the simulator answers tpm2-tools as a TPM 2.0.
func TestSWTPM(t *testing.T) {
	s := testkit.StartSWTPM(t)
	tool := testkit.NeedProgram(t, "tpm2_getcap")
	out := testkit.Run(t, tool, "--tcti", s.TCTI(), "properties-fixed")
	if !strings.Contains(out, "TPM2_PT_FAMILY_INDICATOR") || !strings.Contains(out, `value: "2.0"`) {
		t.Fatalf("tpm2_getcap did not report a TPM 2.0:\n%s", out)
	}
}

// TestSoftHSM: a token initialized by NewSoftHSM is listed by pkcs11-tool.
func TestSoftHSM(t *testing.T) {
	h := testkit.NewSoftHSM(t, "station")
	tool := testkit.NeedProgram(t, "pkcs11-tool")
	out := testkit.Run(t, tool, "--module", h.Module, "--list-token-slots")
	if !strings.Contains(out, "station") {
		t.Fatalf("pkcs11-tool does not list token station:\n%s", out)
	}
}
