package main

import (
	"context"
	"crypto"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"cradle/internal/agent/bootsim"
	"cradle/internal/agent/hw"
	"cradle/internal/agent/update"
)

// The update section's back ends: where the A/B variables live and how the
// unit reboots.
const (
	bootEnvSim   = "sim"   // the simulated unit's boot environment file
	bootEnvUBoot = "uboot" // a U-Boot environment through fw_printenv / fw_setenv

	rebootSim     = "sim"     // the bootloader simulator boots the unit in-process
	rebootCommand = "command" // commands.reboot reboots the machine
)

// rebootWait bounds the wait for a reboot command to take the machine
// down; after it the updater fails the step and asks again later.
const rebootWait = 5 * time.Minute

// checkBootEnv validates update.boot_env, update.fw_env_config,
// update.reboot and update.boot_id_file, filling in the defaults.
func (c *agentConfig) checkBootEnv() error {
	u := &c.Update
	switch u.BootEnv {
	case "":
		u.BootEnv = bootEnvSim
	case bootEnvSim, bootEnvUBoot:
	default:
		return fmt.Errorf("config: update.boot_env %q: use %s (the simulated unit's file) or %s (fw_printenv/fw_setenv)", u.BootEnv, bootEnvSim, bootEnvUBoot)
	}
	switch {
	case u.BootEnv == bootEnvUBoot && u.FWEnvConfig == "":
		return fmt.Errorf("config: update.fw_env_config (the fw_env.config file) is required with update.boot_env %s", bootEnvUBoot)
	case u.BootEnv != bootEnvUBoot && u.FWEnvConfig != "":
		return fmt.Errorf("config: update.fw_env_config is only used with update.boot_env %s", bootEnvUBoot)
	case u.FWEnvConfig != "":
		b, err := os.ReadFile(u.FWEnvConfig)
		if err != nil {
			return fmt.Errorf("config: update.fw_env_config: %w", err)
		}
		if _, err := hw.ParseUBootEnvConfig(b); err != nil {
			return fmt.Errorf("config: update.fw_env_config %s: %w", u.FWEnvConfig, err)
		}
	}
	switch u.Reboot {
	case "":
		u.Reboot = rebootSim
	case rebootSim:
	case rebootCommand:
		if len(c.Commands.Reboot) == 0 {
			return fmt.Errorf("config: update.reboot %s needs commands.reboot (e.g. [systemctl, reboot])", rebootCommand)
		}
	default:
		return fmt.Errorf("config: update.reboot %q: use %s (the bootloader simulator) or %s (commands.reboot)", u.Reboot, rebootSim, rebootCommand)
	}
	if u.BootIDFile != "" && u.Reboot != rebootCommand {
		return fmt.Errorf("config: update.boot_id_file is only used with update.reboot %s (a simulated reboot does not change the kernel's boot id)", rebootCommand)
	}
	return nil
}

// openBootEnv gives dev the configured boot environment: with boot_env
// uboot the U-Boot environment replaces the simulated file, for the
// updater, the bootloader simulator and the reboot command alike.
func openBootEnv(cfg *agentConfig, dev *hw.Device) {
	if cfg.Update.BootEnv != bootEnvUBoot {
		return
	}
	dev.BootEnv = &hw.UBootEnv{Config: cfg.Update.FWEnvConfig, LockFile: filepath.Join(cfg.StateDir, "uboot-env.lock")}
}

// updateReboot returns the updater's Reboot and BootID. With reboot sim
// the bootloader simulator boots dev in-process with the image keys, and
// there is no boot id (every resume is after a boot). With reboot command
// the command runs and the updater waits for the machine to go down; the
// boot id (update.boot_id_file, default update.BootIDFile) tells a real
// boot from a restart of the agent.
func updateReboot(cfg *agentConfig, dev *hw.Device, keys []crypto.PublicKey) (func(context.Context) error, func() string) {
	if cfg.Update.Reboot != rebootCommand {
		boot := bootsim.Options{Keys: keys}
		return func(ctx context.Context) error {
			res, err := bootsim.Boot(ctx, dev, boot)
			if err == nil && res.Bricked {
				err = fmt.Errorf("simulated boot: %s", res.Reason)
			}
			return err
		}, nil
	}
	argv := cfg.Commands.Reboot
	return func(ctx context.Context) error {
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("agent: reboot command %v: %v: %s", argv, err, out)
		}
		t := time.NewTimer(rebootWait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return fmt.Errorf("agent: reboot command %v succeeded but the unit did not go down within %s", argv, rebootWait)
		}
	}, update.FileBootID(cfg.Update.BootIDFile)
}
