// Command cradle-agent is the program that runs on a Cradle-managed device.
//
// It enrolls the device with the operational PKI using the identity
// (IDevID) injected at the factory, keeps its certificate fresh, reports
// telemetry, applies configuration, obeys commands signed by the server,
// and installs updates: a release that a rollout (`cradle rollout create`)
// hands to the device, signed into the tenant's TUF repository
// (`cradle release sign`) and checked against it, is written into the
// inactive A/B slot, verified as an MCUboot image, booted on trial, and
// committed after its health checks or rolled back. At decommissioning a
// signed wipe command makes it send a tombstone signed with its LDevID key,
// destroy its keys, erase its files and set the lifecycle fuse word to
// end-of-life; it then exits with status 3 and refuses to run again.
//
// It has two commands. `cradle-agent run --config FILE` is the agent
// proper (see agent.example.yaml; `run --help` lists the configuration).
// `cradle-agent factory-init --device DIR` is its part of factory
// provisioning: it creates the device key inside the unit's key store
// (its simulated key files, a TPM 2.0, or a PKCS#11 secure element) and
// prints, as one JSON object, the hardware UID, a CSR signed by the new
// key, and the key's SHA-256 fingerprint. It refuses a unit whose
// lifecycle fuses say it left the factory.
//
// The agent is small on purpose: it links no SQL driver, no MQTT broker and
// no web console (a test checks its dependencies).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"

	"cradle"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `cradle-agent runs on a device managed by Cradle.

It enrolls the device with its factory identity, keeps its certificate fresh,
reports telemetry, applies configuration, obeys signed commands from the server,
and installs signed updates (releases rolled out with cradle rollout) into the
inactive A/B slot, committing them after a healthy trial boot or rolling back.

Usage:
  cradle-agent run --config FILE
                           run the agent: enrollment and renewal, telemetry,
                           configuration, commands, updates (run --help)
  cradle-agent factory-init --device DIR [flags]
                           create the device key and print its CSR as JSON
                           (cradle-agent factory-init --help for the flags)
  cradle-agent version     print the version
  cradle-agent --version   the same
  cradle-agent --help      this text
`

// run runs the agent with args (without the program name) and returns the
// exit code: 0 on success, 1 when the command failed, 2 for a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cradle-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // errors are reported below; --help prints usage to stdout
	version := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err == flag.ErrHelp {
		fmt.Fprint(stdout, usage)
		return 0
	} else if err != nil {
		fmt.Fprintln(stderr, "see cradle-agent --help")
		return 2
	}
	switch {
	case *version && fs.NArg() == 0, !*version && fs.NArg() == 1 && fs.Arg(0) == "version":
		fmt.Fprintf(stdout, "cradle-agent %s (%s, %s/%s)\n", cradle.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case fs.NArg() == 0:
		fmt.Fprint(stderr, usage)
		return 2
	case !*version && fs.Arg(0) == "factory-init":
		return runFactoryInit(fs.Args()[1:], stdout, stderr)
	case !*version && fs.Arg(0) == "run":
		return runRun(fs.Args()[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "error: unknown command %q; see cradle-agent --help\n", fs.Arg(0))
	return 2
}
