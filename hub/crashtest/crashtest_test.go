package crashtest_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Traffic shape. Every loop is bounded; the kill comes once each cycle has
// reached a random number of acknowledgements, long before the bounds.
const (
	cycles         = 3
	restWorkers    = 4
	mqttDevices    = 3
	restPerWorker  = 200   // devices registered (and twin-patched) per worker per cycle
	patchesPerConn = 20000 // reported patches per device per cycle
	patchWindow    = 4     // reported patches in flight per device
	minAcks        = 30    // each kind of traffic reaches minAcks + rand(maxExtraAcks) before the kill
	maxExtraAcks   = 60
)

// ledger is every acknowledged write of every cycle so far.
type ledger struct {
	regs     []regAck
	twins    []twinAck
	reported map[string][]reportedAck
}

func TestKilledHubKeepsAcknowledgedWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := buildDmctl(ctx, t)

	work := t.TempDir()
	data := filepath.Join(work, "data")
	readyFile := filepath.Join(work, "ready.json")

	start := time.Now()
	p := startHub(ctx, t, bin, data, "127.0.0.1:0", readyFile)
	port := p.port(t)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	hostName := "localhost:" + strconv.Itoa(port)

	cs := connectionString(ctx, t, bin, data, listen)
	svc, err := sas.ParseService(cs)
	if err != nil {
		t.Fatalf("dmctl hub connection-string printed something that is not a service connection string: %v", err)
	}
	if svc.HostName != hostName || svc.SharedAccessKeyName != "iothubowner" {
		t.Fatalf("connection string: HostName=%q SharedAccessKeyName=%q, want %q and iothubowner", svc.HostName, svc.SharedAccessKeyName, hostName)
	}
	caPEM := readCA(t, data, p)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no certificate", filepath.Join(data, "ca.pem"))
	}

	devs := registerMQTTDevices(ctx, t, p.ready.Addr, pool, svc)
	l := &ledger{reported: map[string][]reportedAck{}}
	for n := 1; n <= cycles; n++ {
		cy := runCycle(ctx, t, p, pool, svc, devs, n)
		l.regs = append(l.regs, cy.regs...)
		l.twins = append(l.twins, cy.twins...)
		for id, acks := range cy.reported {
			l.reported[id] = append(l.reported[id], acks...)
		}

		p = startHub(ctx, t, bin, data, listen, readyFile)
		if p.ready.Addr != listen {
			t.Fatalf("restarted hub listens on %s, want %s", p.ready.Addr, listen)
		}
		if got := connectionString(ctx, t, bin, data, listen); got != cs {
			// Both are secrets: compare, never print them.
			t.Errorf("cycle %d: the owner connection string changed across the restart", n)
		}
		if got := readCA(t, data, p); !bytes.Equal(got, caPEM) {
			t.Errorf("cycle %d: %s changed across the restart", n, filepath.Join(data, "ca.pem"))
		}

		survivors := verify(ctx, t, p.ready.Addr, pool, svc, devs, l, cy)
		t.Logf("cycle %d: acknowledged %d registrations, %d twin patches, %d reported patches; "+
			"of the writes in flight at the kill, %s",
			n, len(cy.regs), len(cy.twins), cy.mqttAcks.Load(), survivors)
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("in total %d registrations, %d twin patches and %d reported patches acknowledged and found after %d kills (%v)",
		len(l.regs), len(l.twins), countReported(l), cycles, time.Since(start).Round(time.Millisecond))
}

// readCA reads the CA certificate from the data folder and checks that the
// ready file, if it names a CA file, names the same certificate.
func readCA(t *testing.T, data string, p *hubProc) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(data, "ca.pem"))
	if err != nil {
		t.Fatalf("hub CA: %v", err)
	}
	if p.ready.CAFile != "" {
		rb, err := os.ReadFile(p.ready.CAFile)
		if err != nil {
			t.Fatalf("CA file named by the ready file: %v", err)
		}
		if !bytes.Equal(rb, b) {
			t.Fatalf("the ready file's CA file %s differs from %s", p.ready.CAFile, filepath.Join(data, "ca.pem"))
		}
	}
	return b
}

// registerMQTTDevices creates the devices that patch reported properties.
func registerMQTTDevices(ctx context.Context, t *testing.T, addr string, pool *x509.CertPool, svc *sas.ConnectionString) []*mqttDevice {
	t.Helper()
	rc, err := newRESTClient(addr, pool, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	var devs []*mqttDevice
	for i := range mqttDevices {
		id := fmt.Sprintf("crash-mqtt-%d", i)
		st, b, err := rc.do(ctx, http.MethodPut, "/devices/"+id, "", registerBody(id))
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		if st != http.StatusOK {
			t.Fatalf("register %s: HTTP %d: %s", id, st, b)
		}
		var d iothub.Device
		if err := json.Unmarshal(b, &d); err != nil || d.Authentication == nil || d.Authentication.SymmetricKey == nil {
			t.Fatalf("register %s: answer without keys (%v)", id, err)
		}
		devs = append(devs, &mqttDevice{id: id, key: d.Authentication.SymmetricKey.PrimaryKey, nextRID: 1})
	}
	return devs
}

// runCycle drives REST and MQTT traffic at the hub, kills it with SIGKILL
// once enough writes were acknowledged, and returns what was acknowledged.
func runCycle(ctx context.Context, t *testing.T, p *hubProc, pool *x509.CertPool, svc *sas.ConnectionString, devs []*mqttDevice, n int) *cycle {
	t.Helper()
	cy := newCycle(n)
	tctx, tcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var conns []*mqttConn
	var workersDone chan struct{} // closed once every worker has returned
	rc, err := newRESTClient(p.ready.Addr, pool, svc)
	if err != nil {
		t.Fatal(err)
	}
	// Runs before any t.Fatal returns, so no worker outlives the cycle.
	defer func() {
		tcancel()
		// Bounded: a worker stuck past the deadline is reported, not waited for.
		idle := make(chan struct{})
		go func() {
			wg.Wait()
			if workersDone != nil {
				<-workersDone
			}
			close(idle)
		}()
		select {
		case <-idle:
		case <-time.After(testwait.Timeout):
			t.Errorf("cycle %d: traffic workers still running %v after the cycle ended", n, testwait.Timeout)
		}
		for _, mc := range conns {
			mc.c.Disconnect(0)
		}
		rc.close()
	}()

	for _, d := range devs {
		mc, err := dialDevice(p.ready.Addr, pool, svc.HostName, d, cy, patchWindow)
		if err != nil {
			t.Fatalf("cycle %d: %v\nhub output:\n%s", n, err, tail(p.out, 4000))
		}
		conns = append(conns, mc)
	}

	cy.restRunning.Store(restWorkers)
	cy.mqttRunning.Store(int32(len(conns)))
	for w := range restWorkers {
		wg.Go(func() { restWorker(tctx, rc, cy, w, restPerWorker) })
	}
	for _, mc := range conns {
		wg.Go(func() { mc.patchLoop(tctx, patchesPerConn) })
	}
	workersDone = make(chan struct{})
	go func() {
		wg.Wait()
		close(workersDone)
	}()

	wantREST := int64(minAcks + rand.IntN(maxExtraAcks+1))
	wantMQTT := int64(minAcks + rand.IntN(maxExtraAcks+1))
	for cy.restAcks.Load() < wantREST || cy.mqttAcks.Load() < wantMQTT {
		if ps := cy.problemList(); len(ps) > 0 {
			t.Fatalf("traffic failed before the kill:\n%s\nhub output:\n%s", join(ps), tail(p.out, 4000))
		}
		select {
		case <-cy.progress:
		case <-workersDone:
			t.Fatalf("cycle %d: traffic ended before the kill (%d REST, %d MQTT acknowledgements)\n%s",
				n, cy.restAcks.Load(), cy.mqttAcks.Load(), join(cy.problemList()))
		case <-ctx.Done():
			t.Fatalf("cycle %d: %v with %d REST and %d MQTT acknowledgements", n, ctx.Err(), cy.restAcks.Load(), cy.mqttAcks.Load())
		}
	}

	cy.killed.Store(true)
	restLeft, mqttLeft := cy.restRunning.Load(), cy.mqttRunning.Load()
	p.crash(t)
	if restLeft == 0 || mqttLeft == 0 {
		t.Fatalf("cycle %d: the kill came after a kind of traffic had ended (REST workers running: %d, MQTT: %d); raise the bounds",
			n, restLeft, mqttLeft)
	}
	tcancel()
	testwait.Group(t, &wg, "the traffic workers to stop after the kill")
	for _, mc := range conns {
		mc.c.Disconnect(0)
	}
	conns = nil
	if ps := cy.problemList(); len(ps) > 0 {
		t.Fatalf("unexpected answers during traffic:\n%s", join(ps))
	}
	return cy
}

func (cy *cycle) problemList() []string {
	cy.mu.Lock()
	defer cy.mu.Unlock()
	return slices.Clone(cy.problems)
}

// verify checks through REST that every acknowledged write of every cycle
// so far is on the restarted hub. It returns a note on the writes that were
// in flight at the last kill (they may or may not have survived).
func verify(ctx context.Context, t *testing.T, addr string, pool *x509.CertPool, svc *sas.ConnectionString, devs []*mqttDevice, l *ledger, last *cycle) string {
	t.Helper()
	rc, err := newRESTClient(addr, pool, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	var bad findings
	defer bad.report(t)

	for _, a := range l.regs {
		var d iothub.Device
		if err := rc.getJSON(ctx, "/devices/"+a.id, &d); err != nil {
			bad.add("acknowledged registration lost: %v", err)
			continue
		}
		if d.DeviceID != a.id {
			bad.add("GET /devices/%s: deviceId %q", a.id, d.DeviceID)
		}
		if k := d.Authentication; k == nil || k.SymmetricKey == nil ||
			k.SymmetricKey.PrimaryKey != a.primary || k.SymmetricKey.SecondaryKey != a.secondary {
			bad.add("device %s: keys differ from the ones its acknowledged registration returned", a.id)
		}
	}

	for _, a := range l.twins {
		var tw iothub.Twin
		if err := rc.getJSON(ctx, "/twins/"+a.id, &tw); err != nil {
			bad.add("twin of an acknowledged patch lost: %v", err)
			continue
		}
		if !numberIs(tw.Tags["seq"], int64(a.seq)) {
			bad.add("twin %s: acknowledged tags.seq=%d, found %v", a.id, a.seq, tw.Tags["seq"])
		}
		if !numberIs(tw.Properties.Desired["seq"], int64(a.seq)) {
			bad.add("twin %s: acknowledged properties.desired.seq=%d, found %v", a.id, a.seq, tw.Properties.Desired["seq"])
		}
		if tw.Version < a.version {
			bad.add("twin %s: version %d, below the acknowledged %d", a.id, tw.Version, a.version)
		}
	}

	type devCheck struct {
		d   *mqttDevice
		rep map[string]any
	}
	var devRep []devCheck
	var presentSent, inFlight int
	for _, d := range devs {
		var tw iothub.Twin
		if err := rc.getJSON(ctx, "/twins/"+d.id, &tw); err != nil {
			bad.add("twin of MQTT device lost: %v", err)
			continue
		}
		if tw.ConnectionState != "Disconnected" {
			bad.add("twin %s: connectionState %q after the restart, before the device reconnected", d.id, tw.ConnectionState)
		}
		rep := tw.Properties.Reported
		checkReported(&bad, "REST", d.id, rep, l.reported[d.id], d.nextRID-1)
		devRep = append(devRep, devCheck{d, rep})
		acked := map[int64]bool{}
		for _, a := range last.reported[d.id] {
			acked[a.rid] = true
		}
		seq := numberOr(rep["seq"])
		for _, rid := range last.sent[d.id] {
			if !acked[rid] {
				inFlight++
				if float64(rid) <= seq {
					presentSent++
				}
			}
		}
	}

	// The device side sees the same reported properties (after the
	// connection-state checks above: this connects the devices).
	for _, dc := range devRep {
		got, err := deviceTwin(ctx, addr, pool, svc.HostName, dc.d)
		if err != nil {
			bad.add("device-side twin GET after the restart: %v", err)
			continue
		}
		if !numberIs(got["$version"], int64(numberOr(dc.rep["$version"]))) {
			bad.add("twin %s: reported $version %v over MQTT, %v over REST", dc.d.id, got["$version"], dc.rep["$version"])
		}
		checkReported(&bad, "MQTT", dc.d.id, got, l.reported[dc.d.id], dc.d.nextRID-1)
	}

	var presentReg int
	for _, id := range last.unsureReg {
		st, _, err := rc.do(ctx, http.MethodGet, "/devices/"+id, "", nil)
		if err != nil {
			bad.add("GET /devices/%s: %v", id, err)
		} else if st == http.StatusOK {
			presentReg++
		}
	}
	return fmt.Sprintf("%d/%d unanswered registrations and %d/%d unanswered reported patches were kept",
		presentReg, len(last.unsureReg), presentSent, inFlight)
}

// checkReported checks a device's reported properties (as read over via)
// against its acknowledged patches: the hub applies a device's patches in
// order, so each key holds the latest acknowledged value written to it or a
// later one, and $version is at least the highest acknowledged one.
func checkReported(bad *findings, via, id string, rep map[string]any, acks []reportedAck, lastSent int64) {
	var maxVersion, maxRID int64
	slotMax := map[int64]reportedAck{}
	if via == "REST" { // the answers themselves: check once
		byRID := slices.SortedFunc(slices.Values(acks), func(a, b reportedAck) int { return cmp.Compare(a.rid, b.rid) })
		for i := 1; i < len(byRID); i++ {
			if a, b := byRID[i-1], byRID[i]; b.version <= a.version {
				bad.add("twin %s: $rid %d acknowledged with $version %d, not above $version %d of the earlier $rid %d",
					id, b.rid, b.version, a.version, a.rid)
			}
		}
	}
	for _, a := range acks {
		maxVersion = max(maxVersion, a.version)
		maxRID = max(maxRID, a.rid)
		if s := a.rid % reportedSlots; a.rid > slotMax[s].rid {
			slotMax[s] = a
		}
	}
	if v, ok := rep["$version"]; !ok || !numberAtLeast(v, maxVersion) {
		bad.add("twin %s (%s): reported $version %v, below the highest acknowledged %d", id, via, rep["$version"], maxVersion)
	}
	if !inRange(rep["seq"], maxRID, lastSent, -1) {
		bad.add("twin %s (%s): reported seq %v, acknowledged up to %d", id, via, rep["seq"], maxRID)
	}
	for s, a := range slotMax {
		k := fmt.Sprintf("k%d", s)
		if !inRange(rep[k], a.rid, lastSent, s) {
			bad.add("twin %s (%s): acknowledged reported %s=%d ($version %d) lost, found %v", id, via, k, a.rid, a.version, rep[k])
		}
	}
}

// inRange reports whether v is an integer in [lo, hi] that is slot modulo
// reportedSlots (any integer if slot < 0).
func inRange(v any, lo, hi, slot int64) bool {
	f, ok := v.(float64)
	if !ok || f != float64(int64(f)) {
		return false
	}
	n := int64(f)
	return n >= lo && n <= hi && (slot < 0 || n%reportedSlots == slot)
}

func countReported(l *ledger) int {
	n := 0
	for _, acks := range l.reported {
		n += len(acks)
	}
	return n
}

// numberIs reports whether a JSON-decoded value is the integer want.
func numberIs(v any, want int64) bool {
	f, ok := v.(float64)
	return ok && f == float64(want)
}

// numberOr returns a JSON-decoded number, or -1 for anything else.
func numberOr(v any) float64 {
	if f, ok := v.(float64); ok {
		return f
	}
	return -1
}

func numberAtLeast(v any, want int64) bool {
	f, ok := v.(float64)
	return ok && f >= float64(want)
}

func join(ps []string) string {
	var b bytes.Buffer
	for _, p := range ps {
		b.WriteString("  ")
		b.WriteString(p)
		b.WriteByte('\n')
	}
	return b.String()
}

// findings collects verification failures by kind and reports a few of each,
// so that a hub that loses everything does not flood the log.
type findings struct {
	kinds []string
	msgs  map[string][]string
}

const shownPerKind = 5

func (f *findings) add(format string, args ...any) {
	if f.msgs == nil {
		f.msgs = map[string][]string{}
	}
	if _, ok := f.msgs[format]; !ok {
		f.kinds = append(f.kinds, format)
	}
	f.msgs[format] = append(f.msgs[format], fmt.Sprintf(format, args...))
}

func (f *findings) report(t *testing.T) {
	t.Helper()
	for _, k := range f.kinds {
		ms := f.msgs[k]
		for _, m := range ms[:min(len(ms), shownPerKind)] {
			t.Error(m)
		}
		if len(ms) > shownPerKind {
			t.Errorf("... and %d more like that", len(ms)-shownPerKind)
		}
	}
}
