package service

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Twin reads a device twin (GET /twins/{id}); retried on 429/500/503.
func (c *Client) Twin(ctx context.Context, deviceID string) (*iothub.Twin, error) {
	return c.twin(ctx, deviceID, "")
}

// ModuleTwin reads a module twin (GET /twins/{id}/modules/{mid}); retried
// on 429/500/503.
func (c *Client) ModuleTwin(ctx context.Context, deviceID, moduleID string) (*iothub.Twin, error) {
	if err := needModule(deviceID, moduleID); err != nil {
		return nil, fmt.Errorf("get module twin: %w", err)
	}
	return c.twin(ctx, deviceID, moduleID)
}

func (c *Client) twin(ctx context.Context, deviceID, moduleID string) (*iothub.Twin, error) {
	resp, err := c.do(ctx, request{method: "GET", path: twinPath(deviceID, moduleID), retry: true})
	if err != nil {
		return nil, fmt.Errorf("get twin of %s: %w", identity(deviceID, moduleID), err)
	}
	var t iothub.Twin
	if err := decode(resp, &t); err != nil {
		return nil, fmt.Errorf("get twin of %s: %w", identity(deviceID, moduleID), err)
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
	return c.updateTwin(ctx, deviceID, "", patch, etag)
}

// UpdateModuleTwin is UpdateTwin for a module twin (PATCH
// /twins/{id}/modules/{mid}).
func (c *Client) UpdateModuleTwin(ctx context.Context, deviceID, moduleID string, patch TwinPatch, etag string) (*iothub.Twin, error) {
	if err := needModule(deviceID, moduleID); err != nil {
		return nil, fmt.Errorf("update module twin: %w", err)
	}
	return c.updateTwin(ctx, deviceID, moduleID, patch, etag)
}

func (c *Client) updateTwin(ctx context.Context, deviceID, moduleID string, patch TwinPatch, etag string) (*iothub.Twin, error) {
	resp, err := c.do(ctx, request{
		method: "PATCH",
		path:   twinPath(deviceID, moduleID),
		body:   patch,
		header: map[string][]string{"If-Match": {ifMatch(etag)}},
	})
	if err != nil {
		return nil, fmt.Errorf("update twin of %s: %w", identity(deviceID, moduleID), err)
	}
	var t iothub.Twin
	if err := decode(resp, &t); err != nil {
		return nil, fmt.Errorf("update twin of %s: %w", identity(deviceID, moduleID), err)
	}
	return &t, nil
}

// twinPath is /twins/{id}, or /twins/{id}/modules/{mid} for a module.
func twinPath(deviceID, moduleID string) string {
	if moduleID == "" {
		return "/twins/" + seg(deviceID)
	}
	return "/twins/" + seg(deviceID) + "/modules/" + seg(moduleID)
}

// identity names a device, or a module of one, in error messages.
func identity(deviceID, moduleID string) string {
	if moduleID == "" {
		return fmt.Sprintf("device %q", deviceID)
	}
	return fmt.Sprintf("module %q of device %q", moduleID, deviceID)
}
