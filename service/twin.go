package service

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Twin reads a device twin (GET /twins/{id}); retried on 429/500/503.
func (c *Client) Twin(ctx context.Context, deviceID string) (*iothub.Twin, error) {
	resp, err := c.do(ctx, request{method: "GET", path: "/twins/" + seg(deviceID), retry: true})
	if err != nil {
		return nil, fmt.Errorf("get twin of device %q: %w", deviceID, err)
	}
	var t iothub.Twin
	if err := decode(resp, &t); err != nil {
		return nil, fmt.Errorf("get twin of device %q: %w", deviceID, err)
	}
	return &t, nil
}

// TwinPatch is a twin update: each part is a JSON object merged into the
// twin (a null member deletes the key); a nil part is left out.
type TwinPatch struct {
	Tags    json.RawMessage
	Desired json.RawMessage
}

// MarshalJSON renders {"tags":...,"properties":{"desired":...}}.
func (p TwinPatch) MarshalJSON() ([]byte, error) {
	type props struct {
		Desired json.RawMessage `json:"desired,omitempty"`
	}
	type body struct {
		Tags       json.RawMessage `json:"tags,omitempty"`
		Properties *props          `json:"properties,omitempty"`
	}
	b := body{Tags: p.Tags}
	if len(p.Desired) > 0 {
		b.Properties = &props{Desired: p.Desired}
	}
	return json.Marshal(b)
}

// UpdateTwin merges patch into the twin (PATCH /twins/{id}) if its etag is
// still etag ("" or "*": unconditionally) and returns the updated twin. A
// stale etag fails with ErrPreconditionFailed. Not retried.
func (c *Client) UpdateTwin(ctx context.Context, deviceID string, patch TwinPatch, etag string) (*iothub.Twin, error) {
	resp, err := c.do(ctx, request{
		method: "PATCH",
		path:   "/twins/" + seg(deviceID),
		body:   patch,
		header: map[string][]string{"If-Match": {ifMatch(etag)}},
	})
	if err != nil {
		return nil, fmt.Errorf("update twin of device %q: %w", deviceID, err)
	}
	var t iothub.Twin
	if err := decode(resp, &t); err != nil {
		return nil, fmt.Errorf("update twin of device %q: %w", deviceID, err)
	}
	return &t, nil
}
