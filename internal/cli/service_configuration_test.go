package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// fakeConfigHub answers the configuration REST calls from a map and
// records the request bodies.
type fakeConfigHub struct {
	mu     sync.Mutex
	cfgs   map[string]iothub.Configuration
	bodies []string
	cs, ca string
}

func newFakeConfigHub(t *testing.T) *fakeConfigHub {
	f := &fakeConfigHub{cfgs: map[string]iothub.Configuration{}}
	srv := httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	f.ca = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	f.cs = "HostName=" + srv.Listener.Addr().String() + ";SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleQ=="
	return f
}

func (f *fakeConfigHub) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bodies = append(f.bodies, string(body))
	w.Header().Set("Content-Type", "application/json")
	id, one := strings.CutPrefix(r.URL.Path, "/configurations/")
	notFound := func() {
		w.WriteHeader(404)
		io.WriteString(w, `{"Message":"ErrorCode:ConfigurationNotFound;no configuration"}`)
	}
	switch {
	case r.Method == "GET" && r.URL.Path == "/configurations":
		out := []iothub.Configuration{}
		for _, c := range f.cfgs {
			out = append(out, c)
		}
		json.NewEncoder(w).Encode(out)
	case r.Method == "POST" && id == "testQueries":
		io.WriteString(w, `{"targetConditionError":"","customMetricQueryErrors":{"bad":"syntax error at SELEC"}}`)
	case r.Method == "PUT" && one:
		if _, ok := f.cfgs[id]; ok {
			w.WriteHeader(409)
			io.WriteString(w, `{"Message":"ErrorCode:ConfigurationAlreadyExists;exists"}`)
			return
		}
		var c iothub.Configuration
		json.Unmarshal(body, &c)
		c.ETag, c.CreatedTimeUtc = "MQ==", "2026-01-02T03:04:05Z"
		c.SystemMetrics = &iothub.ConfigurationMetrics{Results: map[string]int64{iothub.MetricTargetedCount: 3, iothub.MetricAppliedCount: 2}}
		f.cfgs[id] = c
		json.NewEncoder(w).Encode(c)
	case r.Method == "GET" && one:
		c, ok := f.cfgs[id]
		if !ok {
			notFound()
			return
		}
		json.NewEncoder(w).Encode(c)
	case r.Method == "DELETE" && one:
		if _, ok := f.cfgs[id]; !ok {
			notFound()
			return
		}
		delete(f.cfgs, id)
		w.WriteHeader(204)
	default:
		w.WriteHeader(400)
	}
}

func (f *fakeConfigHub) run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	argv := append([]string{"dmctl", "service", "configuration"}, args...)
	argv = append(argv, "--connection-string", f.cs, "--ca-file", f.ca)
	code := Main(ctx, argv, strings.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestConfigurationCommands(t *testing.T) {
	f := newFakeConfigHub(t)
	want := `{"id":"fw","schemaVersion":"1.0","labels":{"campaign":"spring"},"content":{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.0"}}},"targetCondition":"tags.site='lab'","priority":10,"metrics":{"results":null,"queries":{"current":"SELECT deviceId FROM devices"}}}`
	// Both az shapes of --content and --metrics send the same configuration.
	for i, shape := range []struct{ content, metrics, stdin string }{
		{`{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.0"}}}`, `{"queries":{"current":"SELECT deviceId FROM devices"}}`, ""},
		{`@-`, `{"metrics":{"queries":{"current":"SELECT deviceId FROM devices"}}}`, `{"id": "ignored", "content": {"deviceContent": {"properties.desired.firmware": {"fwVersion": "2.0"}}}, "priority": 3}`},
	} {
		code, out, errOut := f.run(t, shape.stdin, "create", "--id", "fw", "--target-condition", "tags.site='lab'", "--priority", "10",
			"--labels", `{"campaign":"spring"}`, "--content", shape.content, "--metrics", shape.metrics)
		if code != 0 {
			t.Fatalf("shape %d: exit %d\n%s%s", i, code, out, errOut)
		}
		f.mu.Lock()
		got := strings.TrimSpace(f.bodies[len(f.bodies)-1])
		delete(f.cfgs, "fw")
		f.mu.Unlock()
		if got != want {
			t.Errorf("shape %d sent\n%s\nwant\n%s", i, got, want)
		}
		if !strings.Contains(out, "Configuration ID:") || !strings.Contains(out, "ETag:") {
			t.Errorf("shape %d: create printed\n%s", i, out)
		}
	}

	if code, _, errOut := f.run(t, "", "create", "--id", "fw", "--target-condition", "*", "--content", `{"moduleContent":{"properties.desired.x":1}}`); code != 0 {
		t.Fatalf("create: exit %d: %s", code, errOut)
	}
	code, _, errOut := f.run(t, "", "create", "--id", "fw", "--target-condition", "*", "--content", `{"moduleContent":{"properties.desired.x":1}}`)
	if code != exitFailure || !strings.Contains(errOut, "configuration already exists") || !strings.Contains(errOut, "dmctl: hint: the id is taken") {
		t.Errorf("create of an existing id: exit %d\n%s", code, errOut)
	}

	code, out, _ := f.run(t, "", "show", "--id", "fw")
	for _, line := range []string{`^Priority: +0$`, `^Target condition: +\*$`, `^Metric targetedCount: +3$`, `^Metric appliedCount: +2$`, `^Module content properties\.desired\.x: +1$`} {
		if code != 0 || !regexp.MustCompile("(?m)"+line).MatchString(out) {
			t.Errorf("show: exit %d, lacks %q:\n%s", code, line, out)
		}
	}
	code, out, _ = f.run(t, "", "list")
	if code != 0 || !strings.Contains(out, "ID  PRIORITY  TARGETED  APPLIED  TARGET CONDITION") || !regexp.MustCompile(`(?m)^fw +0 +3 +2 +\*$`).MatchString(out) {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, _ = f.run(t, "", "list", "-o", "json")
	var list []iothub.Configuration
	if err := json.Unmarshal([]byte(out), &list); err != nil || code != 0 || len(list) != 1 || list[0].ID != "fw" {
		t.Errorf("list -o json: exit %d, %v\n%s", code, err, out)
	}

	code, out, errOut = f.run(t, "", "test-query", "--target-condition", "tags.a=1", "--metrics", `{"queries":{"bad":"SELEC"}}`)
	if code != exitUsage || !regexp.MustCompile(`(?m)^Target condition: +valid$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^Metric bad: +invalid: syntax error at SELEC$`).MatchString(out) ||
		!strings.Contains(errOut, `the hub refused metric "bad"`) {
		t.Errorf("test-query: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	if code, out, _ = f.run(t, "", "delete", "--id", "fw"); code != 0 || out != "Deleted configuration fw.\n" {
		t.Errorf("delete: exit %d, %q", code, out)
	}
	for _, cmd := range []string{"show", "delete"} {
		code, _, errOut = f.run(t, "", cmd, "--id", "fw")
		if code != exitDeviceNotFound || !strings.Contains(errOut, "configuration not found") || !strings.Contains(errOut, "'dmctl service configuration list'") {
			t.Errorf("%s of a deleted configuration: exit %d\n%s", cmd, code, errOut)
		}
	}
}
