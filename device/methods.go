package device

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
)

// MethodFunc handles one direct method. payload is valid JSON (the literal
// null when the service sent none). The result is marshalled to JSON as the
// response body; a nil result becomes null.
type MethodFunc func(ctx context.Context, payload json.RawMessage) (status int, result any)

// Mux routes direct methods to handlers by exact (case-sensitive) name.
// Unknown methods get 404 and payloads that are not JSON get 400, both with a
// JSON body that names the method. The zero value is ready to use.
type Mux struct {
	mu       sync.RWMutex
	handlers map[string]MethodFunc
	// builtin, when set, serves the names no Handle registered: a device's
	// own methods, so that each of a fleet's devices keeps no table of them.
	builtin func(name string) (MethodFunc, bool)
}

// Handle registers f for the method name, replacing any earlier handler.
func (m *Mux) Handle(name string, f MethodFunc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.handlers == nil {
		m.handlers = make(map[string]MethodFunc)
	}
	m.handlers[name] = f
}

// errorBody is the JSON body of every error answer the mux produces itself.
type errorBody struct {
	Error  string `json:"error"`
	Method string `json:"method,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Dispatch runs the handler for name and returns the status and JSON body to
// send back. A handler that panics yields 500.
func (m *Mux) Dispatch(ctx context.Context, name string, payload []byte) (status int, body []byte) {
	m.mu.RLock()
	f, ok := m.handlers[name]
	m.mu.RUnlock()
	if !ok && m.builtin != nil {
		f, ok = m.builtin(name)
	}
	if !ok {
		return marshalResult(http.StatusNotFound, errorBody{Error: "method not found", Method: name})
	}
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 {
		// The hub forwards an absent or null service payload as an empty body.
		payload = []byte("null")
	}
	if !json.Valid(payload) {
		return marshalResult(http.StatusBadRequest, errorBody{Error: "payload is not valid JSON", Method: name})
	}
	defer func() {
		if r := recover(); r != nil {
			status, body = marshalResult(http.StatusInternalServerError,
				errorBody{Error: "method handler failed", Method: name, Detail: fmt.Sprint(r)})
		}
	}()
	st, result := f(ctx, json.RawMessage(payload))
	return marshalResult(st, result)
}

func marshalResult(status int, result any) (int, []byte) {
	if raw, ok := result.(json.RawMessage); ok && json.Valid(raw) {
		return status, raw
	}
	b, err := json.Marshal(result)
	if err != nil {
		b, _ = json.Marshal(errorBody{Error: "method result is not representable as JSON", Detail: err.Error()})
		return http.StatusInternalServerError, b
	}
	return status, b
}
