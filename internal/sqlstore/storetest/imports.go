package storetest

import (
	"fmt"
	"strings"
	"testing"

	"cradle"
)

func count(t *testing.T, e *Env, q string, args ...any) int {
	t.Helper()
	var n int
	if err := e.Raw.QueryRow(e.Backend.Rebind(q), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func testImport(t *testing.T, e *Env) {
	tn, ctx := e.Tenant("acme", cradle.RoleFactory)
	var csv strings.Builder
	csv.WriteString("serial,model,hardware_revision,macs,labels,state\n")
	const n = 1000 // several batches
	for i := range n {
		fmt.Fprintf(&csv, "C-%05d,gw,B2,02:00:5e:%02x:%02x:01,site=berlin;batch=7,\n", i, i/256, i%256)
	}
	rep, err := e.Devices.ImportDevices(ctx, cradle.ImportCSV, strings.NewReader(csv.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Committed || rep.Accepted != n || rep.RejectedCount != 0 {
		t.Fatalf("report = %+v", rep)
	}
	d := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(ctx, "C-00300"))
	if d.Labels["batch"] != "7" || d.MACs[0] != "02:00:5e:01:2c:01" || d.State != cradle.StateFactory || d.HardwareRevision != "B2" {
		t.Fatalf("imported device = %+v", d)
	}
	jsonl := `{"serial":"J-1","model":"sensor","macs":["02:00:5e:00:00:aa"],"labels":{"env":"prod"},"state":"provisioned"}

{"serial":"J-2","model":"sensor"}
`
	rep, err = e.Devices.ImportDevices(ctx, cradle.ImportJSONL, strings.NewReader(jsonl))
	if err != nil || !rep.Committed || rep.Accepted != 2 {
		t.Fatalf("jsonl import: %+v, %v", rep, err)
	}
	if d := must[*cradle.Device](t)(e.Devices.FindDeviceBySerial(ctx, "J-1")); d.State != cradle.StateProvisioned {
		t.Fatalf("J-1 state = %s", d.State)
	}
	entries := must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(e.As(tn.ID, cradle.RoleAuditor), cradle.AuditFilter{Action: ptr("device.import")}))
	if len(entries) != 2 || !strings.Contains(string(entries[0].Details), `"accepted":1000`) {
		t.Fatalf("import audit entries = %+v", entries)
	}
	_, err = e.Devices.ImportDevices(ctx, "xml", strings.NewReader(""))
	wantCode(t, err, cradle.EINVALID, "unknown import format")
	_, err = e.Devices.ImportDevices(ctx, cradle.ImportCSV, strings.NewReader(""))
	wantCode(t, err, cradle.EINVALID, "empty")
	_, err = e.Devices.ImportDevices(ctx, cradle.ImportCSV, strings.NewReader("serial,colour\n"))
	wantCode(t, err, cradle.EINVALID, "colour")
}

func testImportRejects(t *testing.T, e *Env) {
	_, ctx := e.Tenant("acme", cradle.RoleOperator)
	create(t, e, ctx, "EXISTING", "gw", nil)
	before := count(t, e, `SELECT COUNT(*) FROM devices`)
	auditBefore := count(t, e, `SELECT COUNT(*) FROM audit_entries`)

	var b strings.Builder
	b.WriteString("serial,model,macs\n")
	for i := range 600 {
		switch i {
		case 5:
			b.WriteString("bad serial,gw,\n") // line 7
		case 10:
			b.WriteString("EXISTING,gw,\n") // line 12
		case 20:
			b.WriteString("R-00001,gw,\n") // line 22: same batch duplicate of line 3
		case 400:
			b.WriteString("R-00002,gw,\n") // line 402: duplicate from an earlier batch
		case 500:
			b.WriteString("R-00500x,gw,zz:zz\n") // line 502
		default:
			fmt.Fprintf(&b, "R-%05d,gw,\n", i)
		}
	}
	rep, err := e.Devices.ImportDevices(ctx, cradle.ImportCSV, strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Committed || rep.RejectedCount != 5 {
		t.Fatalf("report = %+v", rep)
	}
	want := map[int]string{7: "invalid serial", 12: "already exists", 22: "appears earlier in this import (line 3)", 402: "appears earlier in this import", 502: "invalid MAC"}
	for _, r := range rep.Rejected {
		if w, ok := want[r.Line]; !ok || !strings.Contains(r.Reason, w) {
			t.Errorf("rejected line %d (%s): %q, want %q", r.Line, r.Serial, r.Reason, w)
		}
		delete(want, r.Line)
	}
	for line, reason := range want {
		t.Errorf("line %d not rejected (want %q)", line, reason)
	}
	if after := count(t, e, `SELECT COUNT(*) FROM devices`); after != before {
		t.Fatalf("a rejected import left rows: %d devices, want %d", after, before)
	}
	// Only the record of the rejection was added to the audit log.
	if got := count(t, e, `SELECT COUNT(*) FROM audit_entries`); got != auditBefore+1 {
		t.Fatalf("audit entries %d, want %d", got, auditBefore+1)
	}

	// The report lists at most MaxImportErrors rows but counts them all.
	var many strings.Builder
	many.WriteString("{}\n")
	for range cradle.MaxImportErrors + 10 {
		many.WriteString(`{"serial":"x y","model":"m"}` + "\n")
	}
	rep, err = e.Devices.ImportDevices(ctx, cradle.ImportJSONL, strings.NewReader(many.String()))
	if err != nil {
		t.Fatal(err)
	}
	if rep.RejectedCount != cradle.MaxImportErrors+11 || len(rep.Rejected) != cradle.MaxImportErrors || rep.Rejected[0].Line != 1 {
		t.Fatalf("report: count %d, listed %d, first %+v", rep.RejectedCount, len(rep.Rejected), rep.Rejected[0])
	}
}
