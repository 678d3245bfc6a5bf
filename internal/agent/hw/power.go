package hw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
)

// PowerReading is what a power monitor knows. Nil fields are not
// measured by this unit.
type PowerReading struct {
	BatteryPct *float64 `json:"battery_pct,omitempty"` // state of charge, 0–100
	VoltageV   *float64 `json:"voltage_v,omitempty"`   // battery voltage
	Charging   *bool    `json:"charging,omitempty"`
	EnergyWh   *float64 `json:"energy_wh,omitempty"` // energy counter since installation
}

// Power reads a unit's power monitor (a fuel gauge, an energy meter):
// what Linux's /sys/class/power_supply does not tell, such as an energy
// counter.
type Power interface {
	// ReadPower returns the current reading; an error wrapping
	// ErrNotFound when the unit has no power monitor.
	ReadPower(ctx context.Context) (PowerReading, error)
}

// PowerFile is the simulated power monitor's file in a device directory.
const PowerFile = "power.json"

// SimPower is the power monitor of a simulated unit: the JSON of a
// PowerReading in PowerFile of its device directory, written by a test
// or the simulator.
type SimPower struct{ Dir string }

var _ Power = SimPower{}

// ReadPower reads PowerFile; ErrNotFound when it is absent, ErrInvalid
// when it is not a PowerReading with finite, non-negative values.
func (p SimPower) ReadPower(ctx context.Context) (PowerReading, error) {
	b, err := os.ReadFile(filepath.Join(p.Dir, PowerFile))
	if errors.Is(err, os.ErrNotExist) {
		return PowerReading{}, fmt.Errorf("hw: no %s: %w", PowerFile, ErrNotFound)
	}
	if err != nil {
		return PowerReading{}, fmt.Errorf("hw: %w", err)
	}
	var r PowerReading
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return PowerReading{}, fmt.Errorf("hw: %s: %v: %w", PowerFile, err, ErrInvalid)
	}
	for _, v := range []*float64{r.BatteryPct, r.VoltageV, r.EnergyWh} {
		if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0) || *v < 0) {
			return PowerReading{}, fmt.Errorf("hw: %s: value %v is not a finite non-negative number: %w", PowerFile, *v, ErrInvalid)
		}
	}
	return r, nil
}
