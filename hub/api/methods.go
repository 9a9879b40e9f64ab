package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
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
	body, ok := s.readBody(w, r)
	return ok && s.decodeJSON(w, body, v)
}

// readBody reads a request body of at most MaxBodySize bytes of UTF-8 JSON
// text. It answers the request itself and returns false on error.
func (s *server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.failCode(w, iothub.CodeMessageTooLarge, fmt.Sprintf("request body is over the limit of %d bytes", MaxBodySize))
			return nil, false
		}
		s.failCode(w, iothub.CodeIotHubFormatError, "cannot read the request body")
		return nil, false
	}
	// encoding/json would store bytes that are not UTF-8 as U+FFFD.
	if err := store.CheckJSONText(body); err != nil {
		var ve *store.ValidationError
		errors.As(err, &ve)
		s.failCode(w, ve.Code, ve.Msg)
		return nil, false
	}
	return body, true
}

// decodeJSON decodes one JSON value, numbers as json.Number, into v and
// answers the request itself on error.
func (s *server) decodeJSON(w http.ResponseWriter, body []byte, v any) bool {
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
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	// A method request has no member where json.Number would differ, so
	// the one-pass json.Unmarshal decodes it as decodeJSON does; only a
	// body it refuses goes through decodeJSON, for the same error answer.
	if json.Unmarshal(body, &req) != nil {
		req = iothub.MethodRequest{}
		if !s.decodeJSON(w, body, &req) {
			return
		}
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
	buf := resultBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	appendMethodResult(buf, status, body)
	writeRaw(w, http.StatusOK, buf.Bytes())
	if buf.Cap() <= maxPooledResult {
		resultBuffers.Put(buf)
	}
}

// resultBuffers hold the answers of direct methods while they are written.
var resultBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledResult keeps buffers of large answers out of the pool.
const maxPooledResult = 16 << 10

// appendMethodResult writes the JSON of iothub.MethodResult{status, body}
// as json.Marshal would (the payload compacted, with <, >, &, U+2028 and
// U+2029 escaped), checking and compacting body in one pass. A device
// answer that is not JSON text (also: not UTF-8) is passed on as null, as
// any other non-JSON answer.
func appendMethodResult(buf *bytes.Buffer, status int, body []byte) {
	buf.WriteString(`{"status":`)
	buf.Write(strconv.AppendInt(buf.AvailableBuffer(), int64(status), 10))
	buf.WriteString(`,"payload":`)
	start := buf.Len()
	if b := bytes.TrimSpace(body); len(b) == 0 || store.CheckJSONText(b) != nil || json.Compact(buf, b) != nil {
		buf.Truncate(start)
		buf.WriteString("null")
	} else if bytes.ContainsAny(buf.Bytes()[start:], "<>&\u2028\u2029") {
		var esc bytes.Buffer
		json.HTMLEscape(&esc, buf.Bytes()[start:])
		buf.Truncate(start)
		buf.Write(esc.Bytes())
	}
	buf.WriteByte('}')
}
