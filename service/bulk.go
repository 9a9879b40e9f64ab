package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/dmctl/dmctl/internal/iothub"
)

// BulkDevices sends one bulk registry request (POST /devices) of 1 to
// iothub.MaxBulkDevices entries and returns IoT Hub's answer: 200 with
// isSuccessful, or 400 with the entries that failed in Errors. Both come
// back as a result with a nil error; BulkError turns an entry's error into
// an *APIError. A failure of the request as a whole (401, 429 after the
// retries, a 400 without per-device errors) is an error. Retried only when
// the hub throttles (429: nothing was run).
func (c *Client) BulkDevices(ctx context.Context, devices []iothub.ExportImportDevice) (*iothub.BulkRegistryOperationResult, error) {
	if len(devices) == 0 || len(devices) > iothub.MaxBulkDevices {
		return nil, fmt.Errorf("bulk registry operation: %d devices; one request takes 1 to %d", len(devices), iothub.MaxBulkDevices)
	}
	for i, d := range devices {
		if d.ID == "" || d.ImportMode == "" {
			return nil, fmt.Errorf("bulk registry operation: entry %d has no id or no importMode", i)
		}
	}
	resp, err := c.do(ctx, request{method: "POST", path: "/devices", body: devices, retry: true, retryThrottledOnly: true,
		answers: []int{http.StatusBadRequest}})
	if err != nil {
		return nil, fmt.Errorf("bulk registry operation on %d devices: %w", len(devices), err)
	}
	var res iothub.BulkRegistryOperationResult
	derr := json.Unmarshal(resp.body, &res)
	if resp.status == http.StatusBadRequest && (derr != nil || len(res.Errors) == 0) {
		// Refused as a whole: an ordinary error body.
		return nil, fmt.Errorf("bulk registry operation on %d devices: %w", len(devices),
			newAPIError(resp.status, resp.body, resp.header.Get("iothub-errorcode")))
	}
	if derr != nil {
		return nil, fmt.Errorf("bulk registry operation on %d devices: decode response: %w", len(devices), derr)
	}
	return &res, nil
}

// BulkError is the *APIError of one failed entry of a bulk request, so that
// errors.Is matches it against the sentinels (ErrDeviceAlreadyExists for
// "DeviceAlreadyExists"). Its HTTP status is the one the code implies.
func BulkError(e iothub.DeviceRegistryOperationError) *APIError {
	ae := &APIError{Name: e.ErrorCode, Message: Excerpt(e.ErrorStatus)}
	if code, ok := iothub.ErrorCodeByName(e.ErrorCode); ok {
		ae.Code, ae.Status = code, code/1000
	}
	return ae
}

// CreateDevicesBulk registers every id through the bulk registry API, one
// request per iothub.MaxBulkDevices ids and at most concurrency requests in
// flight (DefaultCreateConcurrency when < 1), and returns one result per id
// in the order of ids. auth nil means SAS: the client generates each
// device's keys and sends them, so the results hold the devices' keys
// without reading them back. Any other auth is sent for every device. A
// result's Device is the identity as sent (id, status, authentication); a
// device the hub refused has Err (BulkError: ErrDeviceAlreadyExists for one
// that exists). Once ctx ends, the requests not yet sent fail with ctx's
// error.
func (c *Client) CreateDevicesBulk(ctx context.Context, ids []string, auth *iothub.Authentication, concurrency int) []CreateResult {
	if concurrency < 1 {
		concurrency = DefaultCreateConcurrency
	}
	out := make([]CreateResult, len(ids))
	entries := make([]iothub.ExportImportDevice, len(ids))
	for i, id := range ids {
		a := auth
		if a == nil {
			a = &iothub.Authentication{Type: iothub.AuthSAS, SymmetricKey: &iothub.SymmetricKey{PrimaryKey: newKey(), SecondaryKey: newKey()}}
		}
		entries[i] = iothub.ExportImportDevice{ID: id, ImportMode: iothub.ImportCreate, Status: "enabled", Authentication: a}
		out[i] = CreateResult{DeviceID: id}
	}
	next := make(chan int) // the first index of a batch
	var wg sync.WaitGroup
	batches := (len(ids) + iothub.MaxBulkDevices - 1) / iothub.MaxBulkDevices
	for range min(concurrency, batches) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := range next {
				c.createBatch(ctx, entries[start:min(start+iothub.MaxBulkDevices, len(ids))], out[start:])
			}
		}()
	}
	for start := 0; start < len(ids); start += iothub.MaxBulkDevices {
		if ctx.Err() != nil {
			for i := start; i < min(start+iothub.MaxBulkDevices, len(ids)); i++ {
				out[i].Err = fmt.Errorf("create device %q: %w", ids[i], ctx.Err())
			}
			continue
		}
		next <- start
	}
	close(next)
	wg.Wait()
	return out
}

// createBatch sends one bulk create and fills out[i] for entries[i].
func (c *Client) createBatch(ctx context.Context, entries []iothub.ExportImportDevice, out []CreateResult) {
	res, err := c.BulkDevices(ctx, entries)
	failed := map[string]error{}
	if err == nil {
		for _, e := range res.Errors {
			failed[e.DeviceID] = fmt.Errorf("create device %q: %w", e.DeviceID, BulkError(e))
		}
		if !res.IsSuccessful && len(res.Errors) == 0 {
			err = errors.New("the hub reported the bulk create as failed but named no device")
		}
	}
	for i, e := range entries {
		switch {
		case err != nil:
			out[i].Err = err
		case failed[e.ID] != nil:
			out[i].Err = failed[e.ID]
		default:
			out[i].Device = &iothub.Device{DeviceID: e.ID, Status: e.Status, Authentication: e.Authentication}
		}
	}
}

// newKey is a random 256-bit symmetric key, base64, as IoT Hub generates.
func newKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// RegistryStatistics reads the device counts of the identity registry (GET
// /statistics/devices); retried on 429/500/503.
func (c *Client) RegistryStatistics(ctx context.Context) (*iothub.RegistryStatistics, error) {
	var s iothub.RegistryStatistics
	if err := c.getJSON(ctx, "/statistics/devices", &s); err != nil {
		return nil, fmt.Errorf("registry statistics: %w", err)
	}
	return &s, nil
}

// ServiceStatistics reads the hub's live counts (GET /statistics/service):
// the devices connected now. Retried on 429/500/503.
func (c *Client) ServiceStatistics(ctx context.Context) (*iothub.ServiceStatistics, error) {
	var s iothub.ServiceStatistics
	if err := c.getJSON(ctx, "/statistics/service", &s); err != nil {
		return nil, fmt.Errorf("service statistics: %w", err)
	}
	return &s, nil
}

// getJSON is a retried GET whose JSON answer goes into v.
func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, request{method: "GET", path: path, retry: true})
	if err != nil {
		return err
	}
	return decode(resp, v)
}
