package mqttapi_test

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle/internal/mqttapi"
	"cradle/internal/testkit"
)

var versions = []string{"mqttv311", "mqttv5"}

// client returns the connection arguments of mosquitto_pub/_sub for the
// certificate pair name (none when empty).
func (e *env) client(name, version, id string) []string {
	a := []string{"-h", "127.0.0.1", "-p", e.port, "--cafile", e.ca.file(), "-V", version, "-i", id}
	if name != "" {
		a = append(a, "--cert", filepath.Join(e.dir, name+".pem"), "--key", filepath.Join(e.dir, name+".key"))
	}
	return a
}

// pub runs mosquitto_pub and returns its output and error.
func (e *env) pub(t *testing.T, cert, version, topic, msg string, extra ...string) (string, error) {
	t.Helper()
	testkit.NeedProgram(t, "mosquitto_pub")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	args := append(e.client(cert, version, "pub-"+cert), "-t", topic, "-m", msg)
	args = append(args, extra...)
	out, err := exec.CommandContext(ctx, "mosquitto_pub", args...).CombinedOutput()
	return string(out), err
}

// sub is a running mosquitto_sub.
type sub struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

// startSub starts mosquitto_sub; it is killed at the end of the test.
func (e *env) startSub(t *testing.T, cert, version, topic string, extra ...string) *sub {
	t.Helper()
	testkit.NeedProgram(t, "mosquitto_sub")
	args := append(e.client(cert, version, "sub-"+cert), "-t", topic, "-v")
	args = append(args, extra...)
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

// wait waits for the process to exit and returns its error, failing after d.
func (s *sub) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(d):
		t.Fatalf("mosquitto_sub still running after %v; output:\n%s", d, s.out.String())
		return nil
	}
}

func (s *sub) exited() bool {
	select {
	case err := <-s.done:
		s.done <- err
		return true
	default:
		return false
	}
}

func TestDevicePublishesOwnTelemetry(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			topic := mqttapi.DeviceTopic("SN-1", mqttapi.TopicTelemetry)
			if out, err := e.pub(t, "sn1", v, topic, "temp=21.5 "+v, "-q", "1"); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, out)
			}
			want := message{d1("SN-1"), topic, "temp=21.5 " + v}
			waitFor(t, 5*time.Second, "OnMessage", func() bool { return slices.Contains(e.rec.Messages(), want) })
		})
	}
	if r := e.rec.Refusals(); len(r) != 0 {
		t.Errorf("refusals: %v", r)
	}
}

func TestDeviceCannotPublishToAnotherDevice(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		for _, qos := range []string{"0", "1"} {
			t.Run(v+"/qos"+qos, func(t *testing.T) {
				other := mqttapi.DeviceTopic("SN-2", mqttapi.TopicCommands)
				watcher := e.startSub(t, "sn2", "mqttv5", other)
				waitFor(t, 5*time.Second, "SN-2 subscribed", func() bool { return mqttapi.SubscriberCount(e.broker, 1, other) == 1 })
				out, err := e.pub(t, "sn1", v, other, "reboot", "-q", qos)
				t.Logf("mosquitto_pub: err %v, output %q", err, out)
				want := refusal{d1("SN-1"), mqttapi.ActionPublish, other}
				waitFor(t, 5*time.Second, "OnRefusal", func() bool { return slices.Contains(e.rec.Refusals(), want) })
				for _, m := range e.rec.Messages() {
					if m.Topic == other {
						t.Errorf("OnMessage saw a refused publish: %v", m)
					}
				}
				// The server's own publish after the refused one reaches
				// SN-2, so anything refused would have arrived before it.
				if err := e.broker.Publish(d1("SN-2"), mqttapi.TopicCommands, []byte("marker"), 1); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 5*time.Second, "marker", func() bool { return strings.Contains(watcher.out.String(), "marker") })
				if got := watcher.out.String(); strings.Contains(got, "reboot") {
					t.Errorf("SN-2 received SN-1's publish:\n%s", got)
				}
			})
		}
	}
}

func TestDeviceCannotSubscribeOutsideItsTopics(t *testing.T) {
	e := newEnv(t, nil)
	filters := []string{
		"cradle/#",
		"#",
		"+/devices/#",
		"cradle/devices/+/commands",
		"cradle/devices/#",
		"cradle/devices/SN-2/#",
		"cradle/devices/SN-2/commands",
		"$SYS/#",
	}
	for _, v := range versions {
		for _, f := range filters {
			t.Run(v+"/"+f, func(t *testing.T) {
				s := e.startSub(t, "sn1", v, f, "-W", "10")
				err := s.wait(t, 15*time.Second)
				want := refusal{d1("SN-1"), mqttapi.ActionSubscribe, f}
				if !slices.Contains(e.rec.Refusals(), want) {
					t.Errorf("OnRefusal not called with %v; got %v", want, e.rec.Refusals())
				}
				t.Logf("mosquitto_sub: %v: %s", err, strings.TrimSpace(s.out.String()))
				if !strings.Contains(s.out.String(), "denied") {
					t.Errorf("mosquitto_sub does not report the subscription denied:\n%s", s.out.String())
				}
				if got := mqttapi.SubscriberCount(e.broker, 1, "cradle/devices/SN-2/commands"); got != 0 {
					t.Errorf("%d subscribers on SN-2's commands", got)
				}
			})
		}
	}
}

func TestServerPublishReachesOnlyTheDevice(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			mine := mqttapi.DeviceTopic("SN-1", mqttapi.TopicCommands)
			sn1 := e.startSub(t, "sn1", v, mine, "-C", "1", "-q", "1")
			sn2 := e.startSub(t, "sn2", v, "cradle/devices/SN-2/#", "-q", "1")
			waitFor(t, 5*time.Second, "subscriptions", func() bool {
				return mqttapi.SubscriberCount(e.broker, 1, mine) == 1 &&
					mqttapi.SubscriberCount(e.broker, 1, "cradle/devices/SN-2/commands") == 1
			})
			if err := e.broker.Publish(d1("SN-1"), mqttapi.TopicCommands, []byte("ping-"+v), 1); err != nil {
				t.Fatal(err)
			}
			if err := sn1.wait(t, 10*time.Second); err != nil {
				t.Fatalf("SN-1's mosquitto_sub: %v\n%s", err, sn1.out.String())
			}
			if got, want := strings.TrimSpace(sn1.out.String()), mine+" ping-"+v; got != want {
				t.Errorf("SN-1 received %q, want %q", got, want)
			}
			// A marker to SN-2 after the command proves SN-2's
			// subscription works and that the command did not arrive first.
			if err := e.broker.Publish(d1("SN-2"), mqttapi.TopicCommands, []byte("marker"), 1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "marker", func() bool { return strings.Contains(sn2.out.String(), "marker") })
			if got := sn2.out.String(); strings.Contains(got, "ping") {
				t.Errorf("SN-2 received SN-1's command:\n%s", got)
			}
		})
	}
}

func TestRefusedAtTLS(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		for _, cert := range []string{"", "foreign-sn1"} {
			name := cert
			if name == "" {
				name = "no-certificate"
			}
			t.Run(v+"/"+name, func(t *testing.T) {
				out, err := e.pub(t, cert, v, mqttapi.DeviceTopic("SN-1", mqttapi.TopicTelemetry), "x")
				if err == nil {
					t.Fatalf("mosquitto_pub succeeded:\n%s", out)
				}
				t.Logf("mosquitto_pub: %v: %s", err, strings.TrimSpace(out))
			})
		}
	}
	if m := e.rec.Messages(); len(m) != 0 {
		t.Errorf("OnMessage saw %v", m)
	}
	if s := e.broker.Stats(); s.Refused != 0 {
		t.Errorf("Check refused %d connections; TLS should have refused them all", s.Refused)
	}
}

func TestRevokedRefusedAtConnect(t *testing.T) {
	e := newEnv(t, nil)
	e.rec.revoke(d1("SN-3"))
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			out, err := e.pub(t, "sn3", v, mqttapi.DeviceTopic("SN-3", mqttapi.TopicTelemetry), "x")
			if err == nil {
				t.Fatalf("mosquitto_pub succeeded:\n%s", out)
			}
			if !strings.Contains(strings.ToLower(out), "not author") {
				t.Errorf("mosquitto_pub output does not say not authorised:\n%s", out)
			}
		})
	}
	if s := e.broker.Stats(); s.Refused != uint64(len(versions)) {
		t.Errorf("Stats.Refused = %d, want %d", s.Refused, len(versions))
	}
	if m := e.rec.Messages(); len(m) != 0 {
		t.Errorf("OnMessage saw %v", m)
	}
}

func TestDisconnectWithinOneSecond(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			topic := mqttapi.DeviceTopic("SN-1", mqttapi.TopicCommands)
			s := e.startSub(t, "sn1", v, topic)
			other := e.startSub(t, "sn2", v, mqttapi.DeviceTopic("SN-2", mqttapi.TopicCommands))
			waitFor(t, 5*time.Second, "sessions", func() bool {
				return mqttapi.SubscriberCount(e.broker, 1, topic) == 1 && e.broker.Sessions(d1("SN-2")) == 1
			})
			if n := e.broker.Sessions(d1("SN-1")); n != 1 {
				t.Fatalf("Sessions(SN-1) = %d, want 1", n)
			}
			// Revocation: Check now refuses SN-1, then its session is closed.
			e.rec.revoke(d1("SN-1"))
			refused := e.broker.Stats().Refused
			start := time.Now()
			if n := e.broker.Disconnect(d1("SN-1")); n != 1 {
				t.Fatalf("Disconnect closed %d sessions, want 1", n)
			}
			closed := time.Since(start)
			s.wait(t, 5*time.Second)
			exited := time.Since(start)
			t.Logf("%s: connection closed %v, mosquitto_sub exited %v after Disconnect: %s", v, closed, exited, strings.TrimSpace(s.out.String()))
			if closed > time.Second {
				t.Errorf("Disconnect took %v, want ≤ 1s", closed)
			}
			if v == "mqttv5" && exited > time.Second {
				// MQTT 5 clients get DISCONNECT "not authorized" and stop.
				t.Errorf("mosquitto_sub ran %v after Disconnect, want ≤ 1s", exited)
			}
			// An MQTT 3.1.1 client only sees its connection closed and
			// tries again (after mosquitto's 1 s reconnect delay): the
			// revoked device is then refused by Check.
			if v == "mqttv311" && e.broker.Stats().Refused != refused+1 {
				t.Errorf("mosquitto_sub exited without reconnecting and being refused")
			}
			if n := e.broker.Sessions(d1("SN-1")); n != 0 {
				t.Errorf("Sessions(SN-1) = %d after Disconnect", n)
			}
			if other.exited() || e.broker.Sessions(d1("SN-2")) != 1 {
				t.Errorf("SN-2's session was closed too")
			}
			if n := e.broker.Disconnect(d1("SN-1")); n != 0 {
				t.Errorf("second Disconnect closed %d sessions", n)
			}
			e.rec.mu.Lock()
			delete(e.rec.revoked, d1("SN-1"))
			e.rec.mu.Unlock()
		})
	}
}

func TestOversizePayloadRejectedConnectionKept(t *testing.T) {
	e := newEnv(t, func(c *mqttapi.Config) { c.MaxPayload = 1024 })
	topic := mqttapi.DeviceTopic("SN-1", mqttapi.TopicTelemetry)
	for i, v := range versions {
		t.Run(v, func(t *testing.T) {
			// One connection: an oversize message then a small one
			// (-l sends each stdin line as a message).
			testkit.NeedProgram(t, "mosquitto_pub")
			args := append(e.client("sn1", v, "pub-big"), "-t", topic, "-l", "-q", "1")
			cmd := exec.CommandContext(t.Context(), "mosquitto_pub", args...)
			cmd.Stdin = strings.NewReader(strings.Repeat("x", 2000) + "\nsmall-" + v + "\n")
			out, err := cmd.CombinedOutput()
			t.Logf("mosquitto_pub: err %v, output %q", err, out)
			waitFor(t, 5*time.Second, "the small message", func() bool {
				return slices.Contains(e.rec.Messages(), message{d1("SN-1"), topic, "small-" + v})
			})
			for _, m := range e.rec.Messages() {
				if len(m.Payload) > 1024 {
					t.Errorf("OnMessage got a %d-byte payload", len(m.Payload))
				}
			}
			if got := e.broker.Stats().Oversize; got != uint64(i+1) {
				t.Errorf("Stats.Oversize = %d, want %d", got, i+1)
			}
		})
	}
}

func TestWillOutsideOwnTopicsRefused(t *testing.T) {
	e := newEnv(t, nil)
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			other := mqttapi.DeviceTopic("SN-2", mqttapi.TopicCommands)
			s := e.startSub(t, "sn1", v, mqttapi.DeviceTopic("SN-1", "#"), "--will-topic", other, "--will-payload", "reboot", "-W", "5")
			if err := s.wait(t, 10*time.Second); err == nil {
				t.Errorf("mosquitto_sub with a foreign will topic exited 0:\n%s", s.out.String())
			}
			want := refusal{d1("SN-1"), mqttapi.ActionWill, other}
			if !slices.Contains(e.rec.Refusals(), want) {
				t.Errorf("OnRefusal not called with %v; got %v", want, e.rec.Refusals())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a process to write while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// OnSubscribe runs once the subscription is in place: what it publishes to
// the device reaches it (the server sends the desired configuration or the
// pending commands this way).
func TestOnSubscribeDeliversToTheNewSubscriber(t *testing.T) {
	var e *env
	var got sync.Map
	e = newEnv(t, func(c *mqttapi.Config) {
		c.OnSubscribe = func(d mqttapi.Device, filter string) {
			got.Store(d.String()+" "+filter, true)
			if err := e.broker.Publish(d, strings.TrimPrefix(filter, mqttapi.TopicRoot+d.Serial+"/"), []byte("hello "+d.Serial), 1); err != nil {
				t.Error(err)
			}
		}
	})
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			mine := mqttapi.DeviceTopic("SN-1", mqttapi.TopicTwinDesired)
			sub := e.startSub(t, "sn1", v, mine, "-C", "1", "-q", "1")
			if err := sub.wait(t, 10*time.Second); err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, sub.out.String())
			}
			if got, want := strings.TrimSpace(sub.out.String()), mine+" hello SN-1"; got != want {
				t.Errorf("received %q, want %q", got, want)
			}
			if _, ok := got.Load("1/SN-1 " + mine); !ok {
				t.Errorf("OnSubscribe was not told of SN-1's subscription to %s", mine)
			}
		})
	}
}
