package hawkbit_test

import (
	"net/http"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/sqlstore"
)

// A revoked device leaves service: the tenant's gateway token, which
// revocation does not touch and which checks only the device's state, no
// longer polls for it.
func TestGatewayPollAfterRevoke(t *testing.T) {
	e := newEnv(t)
	tok := e.device("SN-HB", nil)
	e.base(t, "SN-HB", tok) // admitted: hawkbit, deployed
	gw, err := e.protocol.CreateDeviceToken(e.admin, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway, Name: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	poll := func() *http.Response {
		req, _ := http.NewRequest("GET", e.srv.URL+"/default/controller/v1/SN-HB", nil)
		req.Header.Set("Authorization", "GatewayToken "+gw.Secret)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	expect(t, poll(), 200, "gateway poll before the revocation")
	r, err := sqlstore.NewRevocationService(e.db).RevokeDevice(e.admin, "SN-HB", cradle.ReasonKeyCompromise)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != cradle.StateSuspended {
		t.Fatalf("revocation: %+v", r)
	}
	if body := expect(t, poll(), 403, "gateway poll after the revocation"); !strings.Contains(body, "suspended") {
		t.Fatalf("refusal %q does not say the device is suspended", body)
	}
}
