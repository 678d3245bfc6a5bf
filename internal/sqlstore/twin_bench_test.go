package sqlstore

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"cradle"
)

// BenchmarkConfigGroupPut measures one config group change on SQLite in a
// tenant of 10,000 devices (imported), of which half match the group and
// get a new version each time: the whole transaction, with the reads of
// every device of the tenant, the recomputation and the writes.
//
//	go test -run '^$' -bench BenchmarkConfigGroupPut -benchtime 20x ./internal/sqlstore/
func BenchmarkConfigGroupPut(b *testing.B) {
	const devices = 10000
	db, _, sys := benchStore(b)
	var rows strings.Builder
	for i := range devices {
		env := "prod"
		if i%2 == 1 {
			env = "dev"
		}
		fmt.Fprintf(&rows, `{"serial":"bench-%05d","model":"gw-1","labels":{"env":%q,"site":"s%d"}}`+"\n", i, env, i%10)
	}
	if rep, err := NewDeviceService(db).ImportDevices(sys, cradle.ImportJSONL, strings.NewReader(rows.String())); err != nil || !rep.Committed {
		b.Fatalf("import: %v %+v", err, rep)
	}
	svc := NewTwinService(db)
	changed := 0
	db.SetTwinNotifier(func(cs []cradle.TwinChange) { changed += len(cs) })
	if _, err := svc.PutConfigGroup(sys, "base", cradle.ConfigGroupPut{Selector: "env", Config: json.RawMessage(`{"ntp":["a","b"],"log":{"level":"info"}}`)}); err != nil {
		b.Fatal(err)
	}
	changed = 0
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := svc.PutConfigGroup(sys, "prod", cradle.ConfigGroupPut{Selector: "env=prod", Priority: 1, Config: json.RawMessage(fmt.Sprintf(`{"mtu":%d}`, 1000+i))}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(changed)/float64(b.N), "devices_changed/op")
}
