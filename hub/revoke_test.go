package hub_test

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// holdSession stops one client's connection after the hub authenticated
// it and before CONNACK, until release is closed.
type holdSession struct {
	mqtt.HookBase
	clientID string
	held     chan struct{}
	release  chan struct{}
}

func (h *holdSession) ID() string { return "hold-session" }

func (h *holdSession) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablish}, []byte{b})
}

func (h *holdSession) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if cl.ID != h.clientID {
		return
	}
	close(h.held)
	<-h.release
}

// A device deleted after its CONNECT was authenticated, but before its
// session was live, is disconnected as soon as the session goes live: the
// delete's revocation found no live session to end.
func TestDeleteDuringConnect(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	hold := &holdSession{clientID: "d1", held: make(chan struct{}), release: make(chan struct{})}
	if err := hs.Hub().AddMQTTHook(hold); err != nil {
		t.Fatal(err)
	}
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	type dialed struct {
		d   *device
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		d, _, err := dial(t, hs, connOpts{
			clientID: "d1",
			username: iothub.Username(c.HostName, "d1", "", "dmctl-test/1"),
			password: token(t, hs, cs, time.Now().Add(time.Hour)),
		})
		done <- dialed{d, err}
	}()
	select {
	case <-hold.held:
	case <-ctx.Done():
		t.Fatal("the CONNECT never reached session establishment")
	}
	restCall(ctx, t, hs, http.MethodDelete, "/devices/d1", "")
	close(hold.release)
	var r dialed
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("the connect did not finish after the release")
	}
	if r.err != nil {
		return // refused outright: just as good
	}
	select {
	case <-r.d.lost:
	case <-ctx.Done():
		t.Fatal("the deleted device stayed connected")
	}
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
}
