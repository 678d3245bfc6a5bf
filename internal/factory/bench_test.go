//go:build cgo

package factory

import (
	"context"
	"fmt"
	"testing"
	"time"

	"cradle"
	"cradle/internal/kms"
	"cradle/internal/testkit"
)

// BenchmarkBatch provisions simulated units with the manufacturing CA
// and station keys in SoftHSM2, and reports units per minute and where a
// unit's time goes: signing in the HSM (the baseline: the HSM's own
// signing time), the unit's hardware (key generation in its key store,
// flash, fuses, identity partition, each write synced), and the station
// itself (everything else: CSR and chain checks, certificate building,
// and the journal's two synced appends per unit, also reported alone). station/hsm is the station's overhead on top of
// the HSM's signing time (goal: below 0.5).
//
//	go test -run '^$' -bench BenchmarkBatch -benchtime 200x ./internal/factory
func BenchmarkBatch(b *testing.B) {
	hsm := testkit.NewSoftHSM(b, "station")
	ctx := context.Background()
	mfg, err := kms.Generate(ctx, hsm.URI("station", "manufacturing-ca"), kms.ECDSAP256, kms.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer kms.Close(mfg)
	sk, err := kms.Generate(ctx, hsm.URI("station", "station-key"), kms.ECDSAP256, kms.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer kms.Close(sk)
	r := newRig(b, cradle.ProfileTest, b.N, mfg, sk)
	units := make([]Unit, b.N)
	for i := range units {
		units[i] = newUnit(b, fmt.Sprintf("UID-%08d", i))
	}
	var total, inHSM, inDevice, inJournal time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := r.st.Provision(ctx, r.batch, r.rel, units[i])
		if res.Err != nil {
			b.Fatal(res.Err)
		}
		total += res.Total
		inHSM += res.HSM
		inDevice += res.Device
		inJournal += res.Journal
	}
	b.StopTimer()
	n := float64(b.N)
	station := total - inHSM - inDevice
	b.ReportMetric(n/total.Minutes(), "units/min")
	b.ReportMetric(float64(inHSM.Microseconds())/1000/n, "hsm-ms/unit")
	b.ReportMetric(float64(inDevice.Microseconds())/1000/n, "device-ms/unit")
	b.ReportMetric(float64(station.Microseconds())/1000/n, "station-ms/unit")
	b.ReportMetric(float64(inJournal.Microseconds())/1000/n, "journal-ms/unit")
	b.ReportMetric(station.Seconds()/inHSM.Seconds(), "station/hsm")
	b.ReportMetric(inHSM.Seconds()/total.Seconds(), "hsm-share")
}
