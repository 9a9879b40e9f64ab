package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// Messages of the direct-method errors, as the real hub words them.
const (
	msgNotOnline = "The operation failed because the requested device isn't online or hasn't registered the direct method callback."
	msgTimeout   = "Timed out waiting for the response from device."
	// msgResponseTooLarge is the local hub's own wording.
	msgResponseTooLarge = "The device's response is over the 128 KB limit of a direct method payload."
)

// readJSON reads a bounded request body and decodes it into v (unknown
// members ignored). It answers the request itself and returns false on error.
func (s *server) readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.failCode(w, iothub.CodeMessageTooLarge, fmt.Sprintf("request body is over the limit of %d bytes", MaxBodySize))
			return false
		}
		s.failCode(w, iothub.CodeIotHubFormatError, "cannot read the request body")
		return false
	}
	// encoding/json would store bytes that are not UTF-8 as U+FFFD.
	if err := store.CheckJSONText(body); err != nil {
		var ve *store.ValidationError
		errors.As(err, &ve)
		s.failCode(w, ve.Code, ve.Msg)
		return false
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		s.failCode(w, iothub.CodeIotHubFormatError, "malformed JSON body: "+err.Error())
		return false
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		s.failCode(w, iothub.CodeIotHubFormatError, "malformed JSON body: data after the top-level value")
		return false
	}
	return true
}

// validMethodName rejects names that cannot travel in an MQTT topic level.
func validMethodName(n string) error {
	if n == "" {
		return errors.New("methodName is required")
	}
	if len(n) > 1024 {
		return errors.New("methodName is longer than 1024 characters")
	}
	for _, c := range n {
		if c < 0x20 || c == 0x7f || strings.ContainsRune("/#+?", c) {
			return fmt.Errorf("methodName %q contains %q, which is not allowed", n, c)
		}
	}
	return nil
}

// invoke serves POST /twins/{id}/methods.
func (s *server) invoke(w http.ResponseWriter, r *http.Request) {
	s.invokeOn(w, r, func() (string, bool) {
		id, ok := s.deviceID(w, r)
		if !ok {
			return "", false
		}
		if _, err := s.cfg.Store.DeviceStatus(id); err != nil {
			s.storeError(w, r, id, err)
			return "", false
		}
		return id, true
	})
}

// invokeModule serves POST /twins/{id}/modules/{mid}/methods: the method
// goes to the module's own connection (client id "{id}/{mid}").
func (s *server) invokeModule(w http.ResponseWriter, r *http.Request) {
	s.invokeOn(w, r, func() (string, bool) {
		id, mid, key, ok := s.moduleKey(w, r)
		if !ok {
			return "", false
		}
		if _, err := s.cfg.Store.Module(id, mid); err != nil {
			s.moduleError(w, r, id, mid, err)
			return "", false
		}
		return key, true
	})
}

// invokeOn validates a direct-method request, then resolves its target
// (a device id or a module key; target answers the request itself when
// there is none) and calls it.
func (s *server) invokeOn(w http.ResponseWriter, r *http.Request, target func() (string, bool)) {
	var req iothub.MethodRequest
	if !s.readJSON(w, r, &req) {
		return
	}
	if err := validMethodName(req.MethodName); err != nil {
		s.failCode(w, iothub.CodeArgumentInvalid, err.Error())
		return
	}
	respTimeout := iothub.DefaultMethodResponseTimeout
	if req.ResponseTimeoutInSeconds != nil {
		respTimeout = *req.ResponseTimeoutInSeconds
	}
	if respTimeout < iothub.MinMethodResponseTimeout || respTimeout > iothub.MaxMethodResponseTimeout {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("responseTimeoutInSeconds must be between %d and %d, not %d", iothub.MinMethodResponseTimeout, iothub.MaxMethodResponseTimeout, respTimeout))
		return
	}
	connTimeout := 0
	if req.ConnectTimeoutInSeconds != nil {
		connTimeout = *req.ConnectTimeoutInSeconds
	}
	if connTimeout < 0 || connTimeout > iothub.MaxMethodConnectTimeout {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("connectTimeoutInSeconds must be between 0 and %d, not %d", iothub.MaxMethodConnectTimeout, connTimeout))
		return
	}
	payload := []byte(req.Payload)
	if len(payload) > iothub.MaxMethodPayload {
		// The limit is on the JSON value, not on the client's layout:
		// measure (and forward) it without insignificant whitespace.
		var c bytes.Buffer
		if err := json.Compact(&c, payload); err == nil {
			payload = c.Bytes()
		}
	}
	if len(payload) > iothub.MaxMethodPayload {
		s.failCode(w, iothub.CodeMessageTooLarge, fmt.Sprintf("method payload is %d bytes, over the limit of %d bytes", len(payload), iothub.MaxMethodPayload))
		return
	}
	if len(bytes.TrimSpace(payload)) == 0 {
		// Absent and null payloads reach the device as the literal null,
		// which every device SDK accepts (an empty body makes the Node
		// device SDK answer 400 on its own).
		payload = []byte("null")
	}
	id, ok := target()
	if !ok {
		return
	}
	if s.cfg.Devices == nil {
		s.failMethod(w, iothub.CodeDeviceNotOnline, msgNotOnline)
		return
	}
	status, body, err := s.cfg.Devices.Invoke(r.Context(), id, req.MethodName, payload,
		time.Duration(connTimeout)*time.Second, time.Duration(respTimeout)*time.Second)
	switch {
	case err == nil:
	case errors.Is(err, hubapi.ErrDeviceNotOnline):
		s.failMethod(w, iothub.CodeDeviceNotOnline, msgNotOnline)
		return
	case errors.Is(err, hubapi.ErrTimeout):
		s.failMethod(w, iothub.CodeGatewayTimeout, msgTimeout)
		return
	case errors.Is(err, hubapi.ErrResponseTooLarge):
		// IoT Hub documents the 128 KB limit each way but no error for an
		// answer over it; the local hub answers as for a request over it.
		s.failMethod(w, iothub.CodeMessageTooLarge, msgResponseTooLarge)
		return
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The caller went away; nobody reads the answer.
		s.log.Debug().Str("device", id).Str("method", req.MethodName).Msg("direct method caller disconnected")
		return
	default:
		s.log.Error().Err(err).Str("device", id).Str("method", req.MethodName).Msg("direct method failed")
		s.failCode(w, iothub.CodeServerError, "the direct method could not be delivered")
		return
	}
	res := iothub.MethodResult{Status: status, Payload: json.RawMessage("null")}
	// A device answer that is not JSON text (also: not UTF-8) is passed on
	// as null, as any other non-JSON answer.
	if b := bytes.TrimSpace(body); len(b) > 0 && json.Valid(b) && store.CheckJSONText(b) == nil {
		res.Payload = b
	}
	writeJSON(w, http.StatusOK, res)
}
