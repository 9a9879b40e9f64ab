package service

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// resetHub answers twin reads with factoryResetTime "old" until the method
// was invoked and reports then "new" from the reads after the first,
// unless never is set.
func resetHub(t *testing.T, never bool, status int) (*Client, *recorder) {
	var invoked, reads atomic.Int32
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/methods"):
			invoked.Store(1)
			writeJSON(w, 200, map[string]any{"status": status, "payload": map[string]string{"message": "resetting"}})
		case r.Method == "GET":
			rt := "old"
			if invoked.Load() == 1 && reads.Add(1) > 1 && !never {
				rt = "new"
			}
			writeJSON(w, 200, map[string]any{"deviceId": "d", "properties": map[string]any{
				"desired": map[string]any{}, "reported": map[string]any{FactoryResetTimeProperty: rt, RebootTimeProperty: "unrelated"}}})
		default:
			w.WriteHeader(400)
		}
	})
	return c, rec
}

func TestFactoryResetConfirmed(t *testing.T) {
	c, rec := resetHub(t, false, 200)
	res, err := c.FactoryReset(testContext(t), "d", RebootOptions{PollInterval: time.Millisecond, WaitTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Confirmed || res.PreviousResetTime != "old" || res.ResetTime != "new" || res.Polls != 2 || res.Status != 200 {
		t.Errorf("result %+v", res)
	}
	reqs := rec.all()
	var body iothub.MethodRequest
	if err := json.Unmarshal(reqs[1].Body, &body); err != nil || reqs[1].Path != "/twins/d/methods" {
		t.Fatalf("second request %s %s: %v", reqs[1].Method, reqs[1].Path, err)
	}
	if body.MethodName != "factoryReset" || string(body.Payload) != "{}" {
		t.Errorf("invoked %q with %s, want factoryReset with {}", body.MethodName, body.Payload)
	}
}

func TestFactoryResetNotConfirmed(t *testing.T) {
	c, _ := resetHub(t, true, 200)
	res, err := c.FactoryReset(testContext(t), "d", RebootOptions{PollInterval: 10 * time.Millisecond, WaitTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrFactoryResetNotConfirmed) || errors.Is(err, ErrRebootNotConfirmed) {
		t.Fatalf("err = %v, want ErrFactoryResetNotConfirmed", err)
	}
	if !strings.Contains(err.Error(), `factoryResetTime still "old"`) || res == nil || res.Confirmed {
		t.Errorf("err %v, result %+v", err, res)
	}
}

func TestFactoryResetRefused(t *testing.T) {
	c, rec := resetHub(t, false, 409)
	res, err := c.FactoryReset(testContext(t), "d", RebootOptions{PollInterval: time.Millisecond})
	var dse *DeviceStatusError
	if !errors.As(err, &dse) || dse.Status != 409 || res == nil || res.Status != 409 {
		t.Fatalf("err = %v, result %+v", err, res)
	}
	if rec.count() != 2 {
		t.Errorf("%d requests, want 2 (baseline and invoke, no wait)", rec.count())
	}
}
