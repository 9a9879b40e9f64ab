package crashtest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// tlsConfig trusts only the hub's CA; the hub's certificate names localhost.
func tlsConfig(pool *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// restClient calls the hub's REST API as the iothubowner policy.
type restClient struct {
	base  string // https://addr
	token string // SAS for the hub
	hc    *http.Client
	tr    *http.Transport
}

func newRESTClient(addr string, pool *x509.CertPool, svc *sas.ConnectionString) (*restClient, error) {
	tok, err := sas.Sign(svc.SharedAccessKey, svc.Resource(), svc.SharedAccessKeyName, time.Now().Add(time.Hour))
	if err != nil {
		return nil, fmt.Errorf("sign service token: %w", err)
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsConfig(pool),
		MaxIdleConnsPerHost: 16,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return &restClient{
		base:  "https://" + addr,
		token: tok,
		tr:    tr,
		hc:    &http.Client{Transport: tr},
	}, nil
}

// close drops the client's idle connections.
func (c *restClient) close() { c.tr.CloseIdleConnections() }

// do sends one request with a JSON body (nil for none) and returns the
// status and body. err is a transport error: no HTTP answer was read.
func (c *restClient) do(ctx context.Context, method, path, ifMatch string, body any) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path+"?api-version="+iothub.APIVersion, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

// getJSON GETs path and decodes a 200 answer into v.
func (c *restClient) getJSON(ctx context.Context, path string, v any) error {
	st, b, err := c.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if st != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d: %s", path, st, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", path, err)
	}
	return nil
}

// registerBody is the Node SDK's create-device body: empty keys ask the hub
// to generate them.
func registerBody(id string) map[string]any {
	return map[string]any{
		"deviceId": id,
		"authentication": map[string]any{
			"type":         "sas",
			"symmetricKey": map[string]any{"primaryKey": "", "secondaryKey": ""},
		},
	}
}

// reportedSlots is the number of reported keys a device cycles through:
// patch $rid=N writes seq=N and k<N mod reportedSlots>=N, so the reported
// document stays small however many patches there are.
const reportedSlots = 50

// patchInterval is the least time between two reported patches of a device.
const patchInterval = 2 * time.Millisecond

// mqttDevice is a device whose reported properties the test patches over
// MQTT. nextRID runs on across cycles, so every patch has its own $rid and
// value.
type mqttDevice struct {
	id      string
	key     string
	nextRID int64
}

// mqttConn is one device connection during one cycle.
type mqttConn struct {
	dev   *mqttDevice
	cycle *cycle
	c     paho.Client
	slots chan struct{} // one per patch awaiting its answer

	mu          sync.Mutex
	outstanding map[int64]bool // rid -> published, not answered
}

// connectDevice connects dev over MQTT/TLS with its SAS and subscribes to
// twin responses with handler. lost is called if the connection drops.
func connectDevice(addr string, pool *x509.CertPool, hostName string, dev *mqttDevice, handler paho.MessageHandler, lost func(error)) (paho.Client, error) {
	pw, err := sas.Sign(dev.key, hostName+"/devices/"+dev.id, "", time.Now().Add(time.Hour))
	if err != nil {
		return nil, fmt.Errorf("sign device token: %w", err)
	}
	opts := paho.NewClientOptions().
		AddBroker("tls://" + addr).
		SetClientID(dev.id).
		SetUsername(hostName + "/" + dev.id + "/?api-version=" + iothub.APIVersion).
		SetPassword(pw).
		SetTLSConfig(tlsConfig(pool)).
		SetProtocolVersion(4).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetKeepAlive(60 * time.Second).
		SetConnectTimeout(5 * time.Second).
		SetWriteTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost(err) })
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		c.Disconnect(0)
		return nil, fmt.Errorf("device %s: connect did not finish", dev.id)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("device %s: connect (return code %d): %w", dev.id, tok.(*paho.ConnectToken).ReturnCode(), err)
	}
	st := c.Subscribe(iothub.TwinResFilter, 0, handler)
	if !st.WaitTimeout(10*time.Second) || st.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("device %s: subscribe %s: %v", dev.id, iothub.TwinResFilter, st.Error())
	}
	if q := st.(*paho.SubscribeToken).Result()[iothub.TwinResFilter]; q == 0x80 {
		c.Disconnect(0)
		return nil, fmt.Errorf("device %s: subscription to %s refused", dev.id, iothub.TwinResFilter)
	}
	return c, nil
}

// dialDevice connects dev for one cycle of reported patches.
func dialDevice(addr string, pool *x509.CertPool, hostName string, dev *mqttDevice, cy *cycle, window int) (*mqttConn, error) {
	mc := &mqttConn{dev: dev, cycle: cy, slots: make(chan struct{}, window), outstanding: map[int64]bool{}}
	c, err := connectDevice(addr, pool, hostName, dev, mc.onResponse, func(err error) {
		if !cy.killed.Load() {
			cy.problem("device %s: connection lost while the hub was running: %v", dev.id, err)
		}
	})
	if err != nil {
		return nil, err
	}
	mc.c = c
	return mc, nil
}

// deviceTwin connects dev, asks for its twin over MQTT (protocol.md §3.6)
// and disconnects. It returns the reported section.
func deviceTwin(ctx context.Context, addr string, pool *x509.CertPool, hostName string, dev *mqttDevice) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msgs := make(chan paho.Message, 4)
	lost := make(chan error, 1)
	c, err := connectDevice(addr, pool, hostName, dev,
		func(_ paho.Client, m paho.Message) {
			select {
			case msgs <- m:
			default:
			}
		},
		func(err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if err != nil {
		return nil, err
	}
	defer c.Disconnect(0)
	const rid = "crashtest-get"
	tok := c.Publish(iothub.TwinGetTopic(rid), 0, false, " ")
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("device %s: publish twin GET: %v", dev.id, tok.Error())
	}
	for {
		select {
		case m := <-msgs:
			status, r, _, ok := iothub.ParseTwinResponseTopic(m.Topic())
			if !ok || r != rid {
				return nil, fmt.Errorf("device %s: unexpected message on %q", dev.id, m.Topic())
			}
			if status != 200 {
				return nil, fmt.Errorf("device %s: twin GET answered %d: %s", dev.id, status, m.Payload())
			}
			var doc struct {
				Reported map[string]any `json:"reported"`
			}
			if err := json.Unmarshal(m.Payload(), &doc); err != nil {
				return nil, fmt.Errorf("device %s: twin GET body: %w", dev.id, err)
			}
			return doc.Reported, nil
		case err := <-lost:
			return nil, fmt.Errorf("device %s: connection lost waiting for the twin: %v", dev.id, err)
		case <-ctx.Done():
			return nil, fmt.Errorf("device %s: no twin GET answer: %w", dev.id, ctx.Err())
		}
	}
}

// onResponse records a 204 answer as an acknowledged reported patch.
func (mc *mqttConn) onResponse(_ paho.Client, m paho.Message) {
	status, rid, version, ok := iothub.ParseTwinResponseTopic(m.Topic())
	if !ok {
		mc.cycle.problem("device %s: unparsable twin response topic %q", mc.dev.id, m.Topic())
		return
	}
	var n int64
	if _, err := fmt.Sscan(rid, &n); err != nil {
		mc.cycle.problem("device %s: twin response for unknown $rid %q", mc.dev.id, rid)
		return
	}
	mc.mu.Lock()
	was := mc.outstanding[n]
	delete(mc.outstanding, n)
	mc.mu.Unlock()
	if !was {
		mc.cycle.problem("device %s: twin response for $rid %d, which has no patch waiting", mc.dev.id, n)
		return
	}
	<-mc.slots
	switch {
	case status != 204:
		mc.cycle.problem("device %s: reported patch $rid=%d answered %d: %s", mc.dev.id, n, status, m.Payload())
	case version <= 0:
		mc.cycle.problem("device %s: 204 for $rid=%d without $version: %q", mc.dev.id, n, m.Topic())
	default:
		mc.cycle.ackReported(mc.dev.id, n, version)
	}
}

// patchLoop publishes up to max reported patches {"seq":N,"k<slot>":N},
// with at most cap(slots) awaiting their answer, until ctx ends or the
// connection fails.
func (mc *mqttConn) patchLoop(ctx context.Context, max int) {
	defer mc.cycle.mqttRunning.Add(-1)
	// Pacing keeps a hub that answers without writing from flooding its
	// own store, so the REST traffic still flows when the kill comes.
	pace := time.NewTicker(patchInterval)
	defer pace.Stop()
	for range max {
		select {
		case <-pace.C:
		case <-ctx.Done():
			return
		}
		select {
		case mc.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		rid := mc.dev.nextRID
		mc.dev.nextRID++
		mc.mu.Lock()
		mc.outstanding[rid] = true
		mc.mu.Unlock()
		mc.cycle.sentReported(mc.dev.id, rid)
		body := fmt.Sprintf(`{"seq":%d,"k%d":%d}`, rid, rid%reportedSlots, rid)
		tok := mc.c.Publish(iothub.TwinPatchReportedTopic(fmt.Sprint(rid)), 0, false, body)
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return
		}
		if err := tok.Error(); err != nil {
			if !mc.cycle.killed.Load() {
				mc.cycle.problem("device %s: publish $rid=%d while the hub was running: %v", mc.dev.id, rid, err)
			}
			return
		}
	}
}

// cycle is the state of one traffic-and-kill cycle, shared by its workers.
type cycle struct {
	n        int
	killed   atomic.Bool // set just before SIGKILL
	restAcks atomic.Int64
	mqttAcks atomic.Int64
	// workers still running, so the kill can check that it hits both kinds
	// of traffic
	restRunning atomic.Int32
	mqttRunning atomic.Int32
	progress    chan struct{} // nudged on every acknowledgement

	mu        sync.Mutex
	problems  []string
	regs      []regAck
	twins     []twinAck
	reported  map[string][]reportedAck
	sent      map[string][]int64 // device -> reported rids published
	unsureReg []string           // registrations sent without an answer
}

type regAck struct {
	id, primary, secondary string
}

type twinAck struct {
	id      string
	seq     int
	version int64
}

type reportedAck struct {
	rid, version int64
}

func newCycle(n int) *cycle {
	return &cycle{
		n:        n,
		progress: make(chan struct{}, 1),
		reported: map[string][]reportedAck{},
		sent:     map[string][]int64{},
	}
}

func (cy *cycle) nudge() {
	select {
	case cy.progress <- struct{}{}:
	default:
	}
}

func (cy *cycle) problem(format string, args ...any) {
	cy.mu.Lock()
	cy.problems = append(cy.problems, fmt.Sprintf("cycle %d: ", cy.n)+fmt.Sprintf(format, args...))
	cy.mu.Unlock()
	cy.nudge()
}

func (cy *cycle) ackReg(a regAck) {
	cy.mu.Lock()
	cy.regs = append(cy.regs, a)
	cy.mu.Unlock()
	cy.restAcks.Add(1)
	cy.nudge()
}

func (cy *cycle) ackTwin(a twinAck) {
	cy.mu.Lock()
	cy.twins = append(cy.twins, a)
	cy.mu.Unlock()
	cy.restAcks.Add(1)
	cy.nudge()
}

func (cy *cycle) ackReported(id string, rid, version int64) {
	cy.mu.Lock()
	cy.reported[id] = append(cy.reported[id], reportedAck{rid: rid, version: version})
	cy.mu.Unlock()
	cy.mqttAcks.Add(1)
	cy.nudge()
}

func (cy *cycle) sentReported(id string, rid int64) {
	cy.mu.Lock()
	cy.sent[id] = append(cy.sent[id], rid)
	cy.mu.Unlock()
}

func (cy *cycle) unsure(id string) {
	cy.mu.Lock()
	cy.unsureReg = append(cy.unsureReg, id)
	cy.mu.Unlock()
}

// restWorker registers devices and patches each one's twin once, up to max
// devices, until ctx ends or the hub stops answering.
func restWorker(ctx context.Context, rc *restClient, cy *cycle, w, max int) {
	defer cy.restRunning.Add(-1)
	for i := range max {
		if ctx.Err() != nil {
			return
		}
		id := fmt.Sprintf("crash-c%d-w%d-%03d", cy.n, w, i)
		st, b, err := rc.do(ctx, http.MethodPut, "/devices/"+id, "", registerBody(id))
		if err != nil {
			cy.unsure(id)
			if !cy.killed.Load() && ctx.Err() == nil {
				cy.problem("PUT /devices/%s while the hub was running: %v", id, err)
			}
			return
		}
		if st/100 != 2 {
			cy.problem("PUT /devices/%s: HTTP %d: %s", id, st, b)
			return
		}
		var d iothub.Device
		if err := json.Unmarshal(b, &d); err != nil || d.Authentication == nil || d.Authentication.SymmetricKey == nil ||
			d.Authentication.SymmetricKey.PrimaryKey == "" {
			cy.problem("PUT /devices/%s: answer without generated keys (%v)", id, err)
			return
		}
		cy.ackReg(regAck{id: id, primary: d.Authentication.SymmetricKey.PrimaryKey, secondary: d.Authentication.SymmetricKey.SecondaryKey})

		patch := map[string]any{
			"tags":       map[string]any{"seq": i, "cycle": cy.n, "worker": w},
			"properties": map[string]any{"desired": map[string]any{"seq": i}},
		}
		st, b, err = rc.do(ctx, http.MethodPatch, "/twins/"+id, `"*"`, patch)
		if err != nil {
			if !cy.killed.Load() && ctx.Err() == nil {
				cy.problem("PATCH /twins/%s while the hub was running: %v", id, err)
			}
			return
		}
		if st/100 != 2 {
			cy.problem("PATCH /twins/%s: HTTP %d: %s", id, st, b)
			return
		}
		var tw iothub.Twin
		if err := json.Unmarshal(b, &tw); err != nil {
			cy.problem("PATCH /twins/%s: decode answer: %v", id, err)
			return
		}
		cy.ackTwin(twinAck{id: id, seq: i, version: tw.Version})
	}
}
