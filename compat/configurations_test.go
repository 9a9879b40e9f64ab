package compat

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// TestOfficialConfigurations: azure-iothub's addConfiguration,
// getConfiguration, getConfigurations, updateConfiguration (with its etag,
// a stale one, and forced) and removeConfiguration, and what they do to the
// twins of three devices: desired properties, configurations.[[id]].status
// in queries, the system and custom metrics, priorities on an overlapping
// device, and a removal that stops applying without rolling back.
func TestOfficialConfigurations(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b, c := registerDevice(t, "sdk-cfg-a"), registerDevice(t, "sdk-cfg-b"), registerDevice(t, "sdk-cfg-c")
	prefix := newID("cfg")
	t.Cleanup(func() {
		if t.Failed() {
			dumpHubLog(t, prefix)
		}
	})
	r := runProc(t, ctx, "configuration_sdk.js", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("configuration_sdk.js", "--prefix", prefix, "--devices", a.id+","+b.id+","+c.id)...)
	reportChecks(t, "configuration_sdk.js", r)

	// The configurations the script removed are gone for a plain REST client too.
	for _, id := range []string{prefix + "-low", prefix + "-high", prefix + "-probe"} {
		status, body, err := rest(ctx, "GET", "/configurations/"+url.PathEscape(id), nil, nil)
		if err != nil || status != http.StatusNotFound {
			t.Errorf("GET /configurations/%s after removeConfiguration: HTTP %d %s %v, want 404", id, status, body, err)
		}
	}
}
