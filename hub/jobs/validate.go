package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// normalize validates a job from a client and fills the engine's fields.
func (e *Engine) normalize(in iothub.JobResponse) (iothub.JobResponse, error) {
	if err := ValidJobID(in.JobID); err != nil {
		return iothub.JobResponse{}, err
	}
	cond := strings.TrimSpace(in.QueryCondition)
	if cond == "" {
		return iothub.JobResponse{}, invalid("queryCondition is required (a WHERE clause body such as deviceId = 'd1')")
	}
	if _, err := ParseCondition(cond); err != nil {
		return iothub.JobResponse{}, err
	}
	j := iothub.JobResponse{JobID: in.JobID, QueryCondition: in.QueryCondition, Type: in.Type}
	switch in.Type {
	case iothub.JobTypeDeviceMethod:
		m, err := normalizeMethod(in.CloudToDeviceMethod)
		if err != nil {
			return iothub.JobResponse{}, err
		}
		j.CloudToDeviceMethod = m
	case iothub.JobTypeUpdateTwin:
		t := in.UpdateTwin
		if t == nil || (len(t.Tags) == 0 && len(t.Properties.Desired) == 0) {
			return iothub.JobResponse{}, invalid("updateTwin must carry tags or properties.desired")
		}
		if err := store.ValidateTwinPatch(twinPatch(t)); err != nil {
			return iothub.JobResponse{}, err
		}
		j.UpdateTwin = &iothub.JobTwin{Tags: t.Tags, Properties: iothub.JobTwinProperties{Desired: t.Properties.Desired}}
	case "":
		return iothub.JobResponse{}, invalid("type is required (%s or %s)", iothub.JobTypeDeviceMethod, iothub.JobTypeUpdateTwin)
	default:
		return iothub.JobResponse{}, invalid("type %q is not supported (use %s or %s)", in.Type, iothub.JobTypeDeviceMethod, iothub.JobTypeUpdateTwin)
	}
	switch {
	case in.MaxExecutionTimeInSeconds < 0:
		return iothub.JobResponse{}, invalid("maxExecutionTimeInSeconds must be positive, not %d", in.MaxExecutionTimeInSeconds)
	case in.MaxExecutionTimeInSeconds == 0:
		j.MaxExecutionTimeInSeconds = DefaultMaxExecutionTime
	case in.MaxExecutionTimeInSeconds > maxExecutionCap:
		return iothub.JobResponse{}, invalid("maxExecutionTimeInSeconds is over the limit of %d", maxExecutionCap)
	default:
		j.MaxExecutionTimeInSeconds = in.MaxExecutionTimeInSeconds
	}
	now := e.now().UTC()
	j.CreatedTime = now
	j.StartTime = in.StartTime.UTC()
	if in.StartTime.IsZero() {
		j.StartTime = now
	}
	j.Status = iothub.JobQueued
	if j.StartTime.After(now) {
		j.Status = iothub.JobScheduled
	}
	return j, nil
}

func normalizeMethod(in *iothub.JobMethod) (*iothub.JobMethod, error) {
	if in == nil {
		return nil, invalid("cloudToDeviceMethod is required for %s jobs", iothub.JobTypeDeviceMethod)
	}
	if err := validMethodName(in.MethodName); err != nil {
		return nil, err
	}
	m := *in
	if m.ResponseTimeoutInSeconds == 0 {
		m.ResponseTimeoutInSeconds = defaultResponseTimeout
	}
	if m.ResponseTimeoutInSeconds < iothub.MinMethodResponseTimeout || m.ResponseTimeoutInSeconds > iothub.MaxMethodResponseTimeout {
		return nil, invalid("responseTimeoutInSeconds must be between %d and %d, not %d",
			iothub.MinMethodResponseTimeout, iothub.MaxMethodResponseTimeout, m.ResponseTimeoutInSeconds)
	}
	if m.ConnectTimeoutInSeconds < 0 || m.ConnectTimeoutInSeconds > iothub.MaxMethodConnectTimeout {
		return nil, invalid("connectTimeoutInSeconds must be between 0 and %d, not %d", iothub.MaxMethodConnectTimeout, m.ConnectTimeoutInSeconds)
	}
	p := bytes.TrimSpace(m.Payload)
	if len(p) > iothub.MaxMethodPayload {
		return nil, &store.ValidationError{Code: iothub.CodeMessageTooLarge,
			Msg: fmt.Sprintf("method payload is %d bytes, over the limit of %d bytes", len(p), iothub.MaxMethodPayload)}
	}
	if len(p) == 0 {
		p = []byte("null")
	}
	if !json.Valid(p) {
		return nil, invalid("cloudToDeviceMethod.payload is not valid JSON")
	}
	m.Payload = append(json.RawMessage(nil), p...)
	return &m, nil
}

// ValidJobID checks IoT Hub's jobId rules (iothub.ValidJobID). Errors are
// *store.ValidationError.
func ValidJobID(id string) error {
	if err := iothub.ValidJobID(id); err != nil {
		return invalid("%v", err)
	}
	return nil
}

func validMethodName(n string) error {
	if n == "" {
		return invalid("cloudToDeviceMethod.methodName is required")
	}
	if len(n) > 1024 {
		return invalid("methodName is longer than 1024 characters")
	}
	for _, c := range n {
		if c < 0x20 || c == 0x7f || strings.ContainsRune("/#+?", c) {
			return invalid("methodName %q contains %q, which is not allowed", n, c)
		}
	}
	return nil
}

const conditionPrefix = "SELECT * FROM devices WHERE ("

// ParseCondition parses a job's queryCondition: the body of a WHERE clause
// over devices. Errors are *store.ValidationError.
func ParseCondition(cond string) (*query.Query, error) {
	q, err := query.Parse(conditionPrefix + cond + ")")
	if err != nil {
		var se *query.SyntaxError
		if errors.As(err, &se) {
			pos := min(max(se.Pos-len(conditionPrefix), 1), len([]rune(cond))+1)
			return nil, invalid("queryCondition: syntax error at position %d: %s", pos, se.Msg)
		}
		return nil, invalid("queryCondition: %v", err)
	}
	if q.Collection() != query.CollectionDevices || !q.IsSelectAll() || q.Top() != 0 {
		return nil, invalid("queryCondition must be the body of a WHERE clause over devices")
	}
	return q, nil
}

func invalid(format string, args ...any) error {
	return &store.ValidationError{Code: iothub.CodeArgumentInvalid, Msg: fmt.Sprintf(format, args...)}
}

func code(c int) string { return strconv.Itoa(c) }
