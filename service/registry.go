package service

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"

	"github.com/dmctl/dmctl/internal/iothub"
)

// CreateDevice registers a device with SAS authentication; the hub generates
// its keys. An existing id fails with an *APIError of code 409001. Retried
// only when the hub throttles (429: the request was not run).
func (c *Client) CreateDevice(ctx context.Context, deviceID string) (*iothub.Device, error) {
	return c.CreateDeviceWith(ctx, deviceID, nil)
}

// CreateDeviceWith registers a device that authenticates as auth says
// (SASAuth, ThumbprintAuth, CAAuth); nil means SASAuth(). Errors and
// retries are CreateDevice's.
func (c *Client) CreateDeviceWith(ctx context.Context, deviceID string, auth *iothub.Authentication) (*iothub.Device, error) {
	if auth == nil {
		auth = SASAuth()
	}
	body := iothub.Device{DeviceID: deviceID, Status: "enabled", Authentication: auth}
	resp, err := c.do(ctx, request{method: "PUT", path: "/devices/" + seg(deviceID), body: createBody(body), retry: true, retryThrottledOnly: true})
	if err != nil {
		return nil, fmt.Errorf("create device %q: %w", deviceID, err)
	}
	var d iothub.Device
	if err := decode(resp, &d); err != nil {
		return nil, fmt.Errorf("create device %q: %w", deviceID, err)
	}
	return &d, nil
}

// createBody is the registry create request: only the members a new
// identity sets, as the official SDKs send it.
func createBody(d iothub.Device) any {
	return struct {
		DeviceID       string                 `json:"deviceId"`
		Status         string                 `json:"status"`
		Authentication *iothub.Authentication `json:"authentication"`
	}{d.DeviceID, d.Status, d.Authentication}
}

// Device reads a device identity (GET /devices/{id}); retried on 429/500/503.
func (c *Client) Device(ctx context.Context, deviceID string) (*iothub.Device, error) {
	resp, err := c.do(ctx, request{method: "GET", path: "/devices/" + seg(deviceID), retry: true})
	if err != nil {
		return nil, fmt.Errorf("get device %q: %w", deviceID, err)
	}
	var d iothub.Device
	if err := decode(resp, &d); err != nil {
		return nil, fmt.Errorf("get device %q: %w", deviceID, err)
	}
	return &d, nil
}

// Devices lists device identities (GET /devices), at most top of them when
// top > 0 (the hub caps a list at 1000).
func (c *Client) Devices(ctx context.Context, top int) ([]iothub.Device, error) {
	var q url.Values
	if top > 0 {
		q = url.Values{"top": {strconv.Itoa(top)}}
	}
	resp, err := c.do(ctx, request{method: "GET", path: "/devices", query: q, retry: true})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	var ds []iothub.Device
	if err := decode(resp, &ds); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return ds, nil
}

// DeleteDevice removes a device identity if its etag is still etag ("" or
// "*": unconditionally). Not retried.
func (c *Client) DeleteDevice(ctx context.Context, deviceID, etag string) error {
	_, err := c.do(ctx, request{
		method: "DELETE",
		path:   "/devices/" + seg(deviceID),
		header: map[string][]string{"If-Match": {ifMatch(etag)}},
	})
	if err != nil {
		return fmt.Errorf("delete device %q: %w", deviceID, err)
	}
	return nil
}

// KeyKind selects one of an identity's two symmetric keys.
type KeyKind int

const (
	PrimaryKey KeyKind = iota
	SecondaryKey
)

// ErrNoSymmetricKey: the identity does not authenticate with a symmetric key.
var ErrNoSymmetricKey = errors.New("service: the identity has no symmetric key (not a SAS identity)")

// DeviceConnectionString builds the device connection string for d with the
// chosen key and this client's HostName:
// "HostName=...;DeviceId=...;SharedAccessKey=...". It holds a secret: print
// it only on purpose. An X.509 device's is "HostName=...;DeviceId=...;x509=true"
// (its secret is the certificate's key, which the hub never sees).
func (c *Client) DeviceConnectionString(d *iothub.Device, which KeyKind) (string, error) {
	if d == nil {
		return "", fmt.Errorf("connection string for device: %w", ErrNoSymmetricKey)
	}
	cs, err := c.connectionString(d.DeviceID, "", d.Authentication, which)
	if err != nil {
		return "", fmt.Errorf("connection string for device %q: %w", d.DeviceID, err)
	}
	return cs, nil
}

// connectionString renders an identity's connection string for the key
// which, or with x509=true for a certificate identity.
func (c *Client) connectionString(deviceID, moduleID string, a *iothub.Authentication, which KeyKind) (string, error) {
	s := "HostName=" + c.cs.HostName + ";DeviceId=" + deviceID
	if moduleID != "" {
		s += ";ModuleId=" + moduleID
	}
	if a != nil && IsX509(a.Type) {
		return s + ";x509=true", nil
	}
	if a == nil || a.SymmetricKey == nil {
		return "", ErrNoSymmetricKey
	}
	key := a.SymmetricKey.PrimaryKey
	if which == SecondaryKey {
		key = a.SymmetricKey.SecondaryKey
	}
	if key == "" {
		return "", ErrNoSymmetricKey
	}
	return s + ";SharedAccessKey=" + key, nil
}

// CreateResult is the outcome of one device of CreateDevices: the created
// identity, or the error.
type CreateResult struct {
	DeviceID string
	Device   *iothub.Device
	Err      error
}

// DefaultCreateConcurrency bounds the creates CreateDevices has in flight
// when the caller does not say.
const DefaultCreateConcurrency = 8

// CreateDevices registers every id (as CreateDevice does) with at most
// concurrency requests in flight (DefaultCreateConcurrency when < 1) and
// returns one result per id, in the order of ids. It does not stop at a
// failure; once ctx ends, the ids not yet sent fail with ctx's error.
func (c *Client) CreateDevices(ctx context.Context, ids []string, concurrency int) []CreateResult {
	if concurrency < 1 {
		concurrency = DefaultCreateConcurrency
	}
	out := make([]CreateResult, len(ids))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(concurrency, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d, err := c.CreateDevice(ctx, ids[i])
				out[i] = CreateResult{DeviceID: ids[i], Device: d, Err: err}
			}
		}()
	}
	for i, id := range ids {
		if ctx.Err() != nil {
			out[i] = CreateResult{DeviceID: id, Err: fmt.Errorf("create device %q: %w", id, ctx.Err())}
			continue
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

// SequentialIDs names count devices prefix-NNNN from start on: the number
// is zero-padded to at least four digits, or to the width of the largest
// number when that is wider (prefix-0001 ... prefix-0100 for count 100,
// prefix-00001 ... prefix-12000 for count 12000).
func SequentialIDs(prefix string, start, count int) []string {
	if count <= 0 {
		return nil
	}
	width := max(4, len(strconv.Itoa(start+count-1)))
	ids := make([]string, count)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%0*d", prefix, width, start+i)
	}
	return ids
}
