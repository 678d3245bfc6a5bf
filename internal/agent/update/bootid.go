package update

import (
	"os"
	"strings"
)

// BootIDFile is where Linux publishes the current boot's identity, a
// random UUID drawn at each boot.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// FileBootID returns an Options.BootID for a unit whose reboots are real:
// it reads the boot identity from path (BootIDFile when path is ""), so
// that an agent restarted without a reboot (a crash, a service restart)
// between installing and booting the new slot tells that apart from the
// boot it waits for. A file that cannot be read gives "", which the
// updater takes as "unknown" (every resume is then after a boot). A
// unit whose reboots are simulated in-process must not use it: the
// kernel's boot never changes there.
func FileBootID(path string) func() string {
	if path == "" {
		path = BootIDFile
	}
	return func() string {
		b, err := os.ReadFile(path)
		if err != nil || len(b) > 256 {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
}
