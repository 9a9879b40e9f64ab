package api

import (
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/rs/zerolog"
)

// TestTokenReuse: a token the hub accepted once (and so remembers) is
// still refused once it expires, and a token that differs from it only in
// its signature is refused although the genuine one was just accepted.
func TestTokenReuse(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "hub.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := httptest.NewServer(New(Config{
		Store: st,
		Hosts: func() []string { return []string{hubHost} },
		Now:   clock,
		Log:   zerolog.Nop(),
	}))
	e := &env{t: t, store: st, srv: srv}
	t.Cleanup(func() {
		srv.Close()
		srv.Client().CloseIdleConnections()
		_ = st.Close()
	})
	if _, err := st.CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	owner, _ := st.Policy("iothubowner")
	tok, err := sas.Sign(owner.PrimaryKey, hubHost, "iothubowner", now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if r := e.do("GET", "/twins/d1", tok, ""); r.status != 200 {
			t.Fatalf("request %d with a valid token: %s, want 200", i+1, r)
		}
	}
	// Same token, another signature.
	i := strings.Index(tok, "sig=") + len("sig=")
	forged := tok[:i] + "A" + tok[i+1:]
	if forged[i] == tok[i] {
		forged = tok[:i] + "B" + tok[i+1:]
	}
	wantStyleA(t, e.do("GET", "/twins/d1", forged, ""), 401, "IotHubUnauthorizedAccess")

	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	wantStyleA(t, e.do("GET", "/twins/d1", tok, ""), 401, "IotHubUnauthorizedAccess")
}
