package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/dmctl/dmctl/internal/iothub"
)

// configurationPath is /configurations/{id}.
func configurationPath(id string) string { return "/configurations/" + seg(id) }

// CreateConfiguration adds an automatic device management configuration
// (PUT /configurations/{id}, no If-Match) and returns it as the hub stored
// it, with its etag and creation time. An existing id fails with
// ErrConfigurationExists. Retried only when the hub throttles.
func (c *Client) CreateConfiguration(ctx context.Context, cfg iothub.Configuration) (iothub.Configuration, error) {
	if cfg.ID == "" {
		return iothub.Configuration{}, errors.New("create configuration: empty configuration id")
	}
	cfg.ETag = ""
	return c.putConfiguration(ctx, "create", cfg, nil)
}

// UpdateConfiguration replaces configuration cfg.ID if its etag is still
// etag ("" or "*": unconditionally). A stale etag fails with
// ErrPreconditionFailed, a missing configuration with
// ErrConfigurationNotFound. Retried only when the hub throttles.
func (c *Client) UpdateConfiguration(ctx context.Context, cfg iothub.Configuration, etag string) (iothub.Configuration, error) {
	if cfg.ID == "" {
		return iothub.Configuration{}, errors.New("update configuration: empty configuration id")
	}
	cfg.ETag = ""
	return c.putConfiguration(ctx, "update", cfg, http.Header{"If-Match": {ifMatch(etag)}})
}

func (c *Client) putConfiguration(ctx context.Context, verb string, cfg iothub.Configuration, header http.Header) (iothub.Configuration, error) {
	resp, err := c.do(ctx, request{method: "PUT", path: configurationPath(cfg.ID), body: cfg, header: header,
		retry: true, retryThrottledOnly: true})
	if err != nil {
		return iothub.Configuration{}, fmt.Errorf("%s configuration %q: %w", verb, cfg.ID, configurationError(err))
	}
	var out iothub.Configuration
	if err := decode(resp, &out); err != nil {
		return iothub.Configuration{}, fmt.Errorf("%s configuration %q: %w", verb, cfg.ID, err)
	}
	return out, nil
}

// Configuration reads one configuration with its metrics (GET
// /configurations/{id}); retried on 429/500/503. A missing one fails with
// ErrConfigurationNotFound.
func (c *Client) Configuration(ctx context.Context, id string) (iothub.Configuration, error) {
	if id == "" {
		return iothub.Configuration{}, errors.New("get configuration: empty configuration id")
	}
	resp, err := c.do(ctx, request{method: "GET", path: configurationPath(id), retry: true})
	if err != nil {
		return iothub.Configuration{}, fmt.Errorf("get configuration %q: %w", id, configurationError(err))
	}
	var out iothub.Configuration
	if err := decode(resp, &out); err != nil {
		return iothub.Configuration{}, fmt.Errorf("get configuration %q: %w", id, err)
	}
	return out, nil
}

// Configurations lists the hub's configurations (GET /configurations), at
// most top of them when top > 0; retried on 429/500/503.
func (c *Client) Configurations(ctx context.Context, top int) ([]iothub.Configuration, error) {
	var q url.Values
	if top > 0 {
		q = url.Values{"top": {strconv.Itoa(top)}}
	}
	resp, err := c.do(ctx, request{method: "GET", path: "/configurations", query: q, retry: true})
	if err != nil {
		return nil, fmt.Errorf("list configurations: %w", err)
	}
	var out []iothub.Configuration
	if err := decode(resp, &out); err != nil {
		return nil, fmt.Errorf("list configurations: %w", err)
	}
	return out, nil
}

// DeleteConfiguration removes a configuration if its etag is still etag
// ("" or "*": unconditionally). Desired properties it applied stay as they
// are. Not retried.
func (c *Client) DeleteConfiguration(ctx context.Context, id, etag string) error {
	if id == "" {
		return errors.New("delete configuration: empty configuration id")
	}
	_, err := c.do(ctx, request{method: "DELETE", path: configurationPath(id),
		header: http.Header{"If-Match": {ifMatch(etag)}}})
	if err != nil {
		return fmt.Errorf("delete configuration %q: %w", id, configurationError(err))
	}
	return nil
}

// TestConfigurationQueries asks the hub to check a target condition and
// custom metric queries without creating anything (POST
// /configurations/testQueries). Invalid queries are not an error: the
// response names them. Retried on 429/500/503 (it changes nothing).
func (c *Client) TestConfigurationQueries(ctx context.Context, in iothub.ConfigurationQueriesTestInput) (iothub.ConfigurationQueriesTestResponse, error) {
	resp, err := c.do(ctx, request{method: "POST", path: "/configurations/testQueries", body: in, retry: true})
	if err != nil {
		return iothub.ConfigurationQueriesTestResponse{}, fmt.Errorf("test configuration queries: %w", err)
	}
	var out iothub.ConfigurationQueriesTestResponse
	if err := decode(resp, &out); err != nil {
		return iothub.ConfigurationQueriesTestResponse{}, fmt.Errorf("test configuration queries: %w", err)
	}
	return out, nil
}

// configurationError names a 404 or 409 on a /configurations/{id} path for
// what it is: IoT Hub documents no numeric code of its own for a missing or
// existing configuration, and the one it may send (404001, 409001) would
// otherwise read as a device's.
func configurationError(err error) error {
	var ae *APIError
	if !errors.As(err, &ae) {
		return err
	}
	switch ae.Status {
	case http.StatusNotFound:
		named := *ae
		named.Name = nameConfigurationNotFound
		if named.Code == iothub.CodeDeviceNotFound {
			named.Code = 0
		}
		return &named
	case http.StatusConflict:
		named := *ae
		named.Name = nameConfigurationExists
		if named.Code == iothub.CodeDeviceAlreadyExists {
			named.Code = 0
		}
		return &named
	}
	return err
}
