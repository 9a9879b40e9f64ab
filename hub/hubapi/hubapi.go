// Package hubapi holds the contracts between the parts of the local hub:
// the device side (the MQTT broker) as the REST API and the jobs engine
// call it, and the jobs engine as the REST API serves it. It sits below
// hub/api and hub/jobs so that neither imports the other.
package hubapi

import (
	"context"
	"errors"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Devices is the device side of the hub.
//
// Every method takes an identity: a device id, or a module key
// "{deviceId}/{moduleId}" (store.ModuleKey, the module's MQTT client id),
// which names the module's own connection. A device id never contains '/'.
type Devices interface {
	// Invoke sends a direct method to the connected device or module and
	// waits for its answer. The REST API passes the device id for
	// POST /twins/{id}/methods and the module key for
	// POST /twins/{id}/modules/{mid}/methods.
	// Errors: ErrDeviceNotOnline (not connected or not subscribed within
	// connectTimeout), ErrTimeout, ErrResponseTooLarge.
	Invoke(ctx context.Context, identity, method string, payload []byte, connectTimeout, responseTimeout time.Duration) (status int, body []byte, err error)
	// Revoke disconnects the device or module now if it is connected but
	// no longer allowed to be (deleted, or disabled in the registry, or a
	// module whose device is); otherwise it does nothing. For a device id
	// it checks every connected module of that device as well. The REST
	// API calls it for a device after the device is deleted or disabled,
	// and for a module after it is deleted.
	Revoke(identity string)
}

// Errors a Devices implementation returns from Invoke.
var (
	ErrDeviceNotOnline = errors.New("device not online")
	ErrTimeout         = errors.New("device did not answer in time")
	// ErrResponseTooLarge: the device answered with a payload over IoT
	// Hub's 128 KB limit (iothub.MaxMethodPayload); the answer is dropped.
	ErrResponseTooLarge = errors.New("device's method response is over the limit of 131072 bytes")
)

// Jobs is the hub's jobs engine (IoT Hub jobs v2) as the REST handlers need
// it. Errors: *store.ValidationError (bad job, HTTP 400), store.ErrJobExists
// (409104), store.ErrJobNotFound (404002), store.ErrClosed (503).
type Jobs interface {
	// Create validates, stores and schedules a job. The caller sets JobID,
	// Type, QueryCondition, CloudToDeviceMethod or UpdateTwin, StartTime
	// (zero: now) and MaxExecutionTimeInSeconds (0: the default); the other
	// fields are the engine's. It returns the stored job.
	Create(ctx context.Context, job iothub.JobResponse) (iothub.JobResponse, error)
	// Get returns a job with its current statistics.
	Get(ctx context.Context, id string) (iothub.JobResponse, error)
	// Cancel stops a job that has not finished and returns it; a finished
	// job is returned unchanged.
	Cancel(ctx context.Context, id string) (iothub.JobResponse, error)
	// List returns the jobs of a type and status ("" matches any), oldest first.
	List(ctx context.Context, jobType, status string) ([]iothub.JobResponse, error)
}
