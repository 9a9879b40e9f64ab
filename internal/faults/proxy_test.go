package faults_test

import (
	"strings"
	"testing"

	"github.com/dmctl/dmctl/internal/faults"
)

func TestBadInput(t *testing.T) {
	if _, err := faults.Start("bad", "no-port"); err == nil || !strings.Contains(err.Error(), `upstream "no-port"`) {
		t.Fatalf("Start with an upstream without port: %v, want an error naming it", err)
	}
	p, err := faults.Start("p", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, c := range []struct {
		tx   faults.Toxic
		want string
	}{
		{faults.Toxic{Type: "latency", Stream: faults.Upstream}, "needs a name and a type"},
		{faults.Toxic{Name: "x", Stream: faults.Upstream}, "needs a name and a type"},
		{faults.Toxic{Name: "x", Type: "latency", Stream: "sideways"}, `stream "sideways"`},
		{faults.Toxic{Name: "x", Type: "no_such_toxic", Stream: faults.Upstream}, "add toxic x"},
	} {
		if err := p.Add(c.tx); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Add(%+v): %v, want an error containing %q", c.tx, err, c.want)
		}
	}
	if err := p.Remove(t.Context(), "never_added"); err == nil || !strings.Contains(err.Error(), "never_added") {
		t.Errorf("Remove of a toxic never added: %v, want an error naming it", err)
	}
	p.Close()
	if err := p.ResetAll(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("ResetAll after Close: %v, want an error saying the proxy is closed", err)
	}
}
