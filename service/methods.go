package service

import (
	"context"
	"fmt"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Direct-method timeout defaults and limits (IoT Hub's documented values).
const (
	DefaultResponseTimeout = 30 * time.Second
	MinResponseTimeout     = 5 * time.Second
	MaxMethodTimeout       = 300 * time.Second
	// MaxMethodPayload is the largest payload IoT Hub forwards (128 KB).
	MaxMethodPayload = iothub.MaxMethodPayload
)

// InvokeMethod calls a direct method on a device and returns the device's
// status and payload. The request is sent once and never retried: a lost
// answer is reported, not replayed. The HTTP call is bounded by the
// request's connect and response timeouts (30 s response when unset) plus a
// grace period; the hub itself answers 504 (ErrMethodTimeout) first.
//
// A device status of 400 or more is not an error here; see
// DeviceStatusError for callers that want one.
func (c *Client) InvokeMethod(ctx context.Context, deviceID string, req iothub.MethodRequest) (*iothub.MethodResult, error) {
	if deviceID == "" {
		return nil, fmt.Errorf("invoke %q: empty device id", req.MethodName)
	}
	return c.invoke(ctx, deviceID, "", req)
}

// InvokeModuleMethod is InvokeMethod for a module of a device (POST
// /twins/{id}/modules/{mid}/methods).
func (c *Client) InvokeModuleMethod(ctx context.Context, deviceID, moduleID string, req iothub.MethodRequest) (*iothub.MethodResult, error) {
	if err := needModule(deviceID, moduleID); err != nil {
		return nil, fmt.Errorf("invoke %q: %w", req.MethodName, err)
	}
	return c.invoke(ctx, deviceID, moduleID, req)
}

func (c *Client) invoke(ctx context.Context, deviceID, moduleID string, req iothub.MethodRequest) (*iothub.MethodResult, error) {
	if req.MethodName == "" {
		return nil, fmt.Errorf("invoke on %s: empty method name", identity(deviceID, moduleID))
	}
	wait := DefaultResponseTimeout
	if req.ResponseTimeoutInSeconds != nil {
		wait = time.Duration(*req.ResponseTimeoutInSeconds) * time.Second
	}
	if req.ConnectTimeoutInSeconds != nil {
		wait += time.Duration(*req.ConnectTimeoutInSeconds) * time.Second
	}
	resp, err := c.do(ctx, request{
		method:  "POST",
		path:    twinPath(deviceID, moduleID) + "/methods",
		body:    req,
		timeout: wait + invokeGrace,
	})
	if err != nil {
		return nil, fmt.Errorf("invoke %q on %s: %w", req.MethodName, identity(deviceID, moduleID), err)
	}
	var res iothub.MethodResult
	if err := decode(resp, &res); err != nil {
		return nil, fmt.Errorf("invoke %q on %s: %w", req.MethodName, identity(deviceID, moduleID), err)
	}
	return &res, nil
}
