package mqttapi_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"cradle/internal/mqttapi"
	"cradle/internal/testkit"
)

// startSubID is startSub with the MQTT client identifier id and a
// persistent session (clean session off), so that two devices using the
// same identifier would take over each other's session if the broker let
// them.
func (e *env) startSubID(t *testing.T, cert, version, id, topic string) *sub {
	t.Helper()
	testkit.NeedProgram(t, "mosquitto_sub")
	args := append(e.client(cert, version, id), "-t", topic, "-v", "-q", "1", "-c")
	cmd := exec.Command("mosquitto_sub", args...)
	s := &sub{cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
	})
	return s
}

// Two tenants each have a device SN-1, both connected with the same MQTT
// client identifier: each receives only what the server sends to it, their
// publishes are attributed to their own tenant, neither reaches the other,
// and disconnecting one leaves the other connected.
func TestTenantsWithTheSameSerialAreKeptApart(t *testing.T) {
	one, two := d1("SN-1"), mqttapi.Device{TenantID: 2, Serial: "SN-1"}
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			// A broker each: the persistent sessions of one version would
			// outlive their clients into the other.
			e := newEnv(t, nil)
			e.ca.issueIn(t, 2, "t2-sn1", "SN-1", false)
			all := mqttapi.DeviceTopic("SN-1", "#")
			s1 := e.startSubID(t, "sn1", v, "same-"+v, all)
			s2 := e.startSubID(t, "t2-sn1", v, "same-"+v, all)
			waitFor(t, 5*time.Second, "both subscribed", func() bool {
				return e.broker.Sessions(one) == 1 && e.broker.Sessions(two) == 1 &&
					mqttapi.SubscriberCount(e.broker, 1, mqttapi.DeviceTopic("SN-1", "x")) == 1 &&
					mqttapi.SubscriberCount(e.broker, 2, mqttapi.DeviceTopic("SN-1", "x")) == 1
			})

			// Server pushes name the tenant.
			for _, p := range []struct {
				dev    mqttapi.Device
				suffix string
			}{
				{one, mqttapi.TopicTwinDesired}, {two, mqttapi.TopicTwinDesired},
				{one, mqttapi.TopicCommands}, {two, mqttapi.TopicCommands},
				{one, mqttapi.TopicUpdate}, {two, mqttapi.TopicUpdate},
			} {
				if err := e.broker.Publish(p.dev, p.suffix, []byte("for-"+p.dev.String()), 1); err != nil {
					t.Fatal(err)
				}
			}
			// Devices publish in their own subtree, which has the same name
			// in both tenants.
			cmds := mqttapi.DeviceTopic("SN-1", mqttapi.TopicCommands)
			tele := mqttapi.DeviceTopic("SN-1", mqttapi.TopicTelemetry)
			if out, err := e.pub(t, "t2-sn1", v, cmds, "reboot-from-2", "-q", "1"); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, out)
			}
			if out, err := e.pub(t, "sn1", v, tele, "temp-of-1-"+v, "-q", "1"); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, out)
			}
			if out, err := e.pub(t, "t2-sn1", v, tele, "temp-of-2-"+v, "-q", "1"); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, out)
			}
			// A device writing the broker's internal namespace itself
			// stays in its own and is refused.
			forged := "tenants/2/" + cmds
			out, err := e.pub(t, "sn1", v, forged, "forged-from-1", "-q", "1")
			t.Logf("forged mosquitto_pub: %v %q", err, out)
			waitFor(t, 5*time.Second, "forged publish refused", func() bool {
				return slices.Contains(e.rec.Refusals(), refusal{one, mqttapi.ActionPublish, forged})
			})
			// Markers last: everything before them has been delivered.
			for _, d := range []mqttapi.Device{one, two} {
				if err := e.broker.Publish(d, "marker", []byte("end"), 1); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, 5*time.Second, "markers", func() bool {
				return strings.Contains(s1.out.String(), "marker end") && strings.Contains(s2.out.String(), "marker end")
			})
			for _, c := range []struct {
				name      string
				out       string
				want, not []string
			}{
				{"tenant 1's SN-1", s1.out.String(),
					[]string{mqttapi.DeviceTopic("SN-1", mqttapi.TopicTwinDesired) + " for-1/SN-1", cmds + " for-1/SN-1", mqttapi.DeviceTopic("SN-1", mqttapi.TopicUpdate) + " for-1/SN-1", tele + " temp-of-1-" + v},
					[]string{"for-2/", "reboot-from-2", "temp-of-2", "forged", "tenants/"}},
				{"tenant 2's SN-1", s2.out.String(),
					[]string{mqttapi.DeviceTopic("SN-1", mqttapi.TopicTwinDesired) + " for-2/SN-1", cmds + " for-2/SN-1", mqttapi.DeviceTopic("SN-1", mqttapi.TopicUpdate) + " for-2/SN-1", cmds + " reboot-from-2", tele + " temp-of-2-" + v},
					[]string{"for-1/", "temp-of-1", "forged", "tenants/"}},
			} {
				for _, w := range c.want {
					if !strings.Contains(c.out, w+"\n") {
						t.Errorf("%s did not receive %q; got:\n%s", c.name, w, c.out)
					}
				}
				for _, n := range c.not {
					if strings.Contains(c.out, n) {
						t.Errorf("%s received %q; got:\n%s", c.name, n, c.out)
					}
				}
			}
			msgs := e.rec.Messages()
			for _, want := range []message{{one, tele, "temp-of-1-" + v}, {two, tele, "temp-of-2-" + v}, {two, cmds, "reboot-from-2"}} {
				if !slices.Contains(msgs, want) {
					t.Errorf("OnMessage not called with %v; got %v", want, msgs)
				}
			}
			for _, m := range msgs {
				if strings.Contains(m.Payload, "forged") || (m.Device == one && strings.Contains(m.Payload, "-2")) {
					t.Errorf("OnMessage got %v", m)
				}
			}

			// Disconnecting tenant 2's SN-1 leaves tenant 1's connected.
			e.rec.revoke(two)
			if n := e.broker.Disconnect(two); n != 1 {
				t.Fatalf("Disconnect(%v) closed %d sessions, want 1", two, n)
			}
			if v == "mqttv5" {
				s2.wait(t, 5*time.Second)
			}
			if s1.exited() || e.broker.Sessions(one) != 1 {
				t.Errorf("tenant 1's SN-1 lost its session when tenant 2's was disconnected:\n%s", s1.out.String())
			}
			if err := e.broker.Publish(one, "after", []byte("still-here"), 1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "tenant 1's SN-1 still served", func() bool { return strings.Contains(s1.out.String(), "still-here") })
		})
	}
}

// A device cannot subscribe into another tenant's namespace by naming it.
func TestDeviceCannotSubscribeIntoAnotherTenant(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		for _, f := range []string{"tenants/2/cradle/devices/SN-1/#", "tenants/#", "tenants/+/cradle/devices/SN-1/commands"} {
			t.Run(v+"/"+f, func(t *testing.T) {
				s := e.startSub(t, "sn1", v, f, "-W", "10")
				err := s.wait(t, 15*time.Second)
				t.Logf("mosquitto_sub: %v: %s", err, strings.TrimSpace(s.out.String()))
				want := refusal{d1("SN-1"), mqttapi.ActionSubscribe, f}
				if !slices.Contains(e.rec.Refusals(), want) {
					t.Errorf("OnRefusal not called with %v; got %v", want, e.rec.Refusals())
				}
				if got := mqttapi.SubscriberCount(e.broker, 2, mqttapi.DeviceTopic("SN-1", mqttapi.TopicCommands)); got != 0 {
					t.Errorf("%d subscribers on tenant 2's SN-1 commands", got)
				}
			})
		}
	}
}
