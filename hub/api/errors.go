package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// failCode answers with the registry error envelope of an IoT Hub error
// code; the HTTP status is code/1000.
func (s *server) failCode(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("iothub-errorcode", iothub.ErrorName(code))
	writeRaw(w, iothub.HTTPStatus(code), iothub.RegistryErrorBody(code, msg, s.now()))
}

// failMethod answers with the direct-method error envelope.
func (s *server) failMethod(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("iothub-errorcode", iothub.ErrorName(code))
	writeRaw(w, iothub.HTTPStatus(code), iothub.MethodErrorBody(code, msg, s.now()))
}

// fail answers with a registry error envelope for conditions that have no
// numeric IoT Hub code (unknown route, wrong method).
func (s *server) fail(w http.ResponseWriter, status int, name, msg string) {
	w.Header().Set("iothub-errorcode", name)
	writeRaw(w, status, iothub.NamedRegistryErrorBody(name, msg, s.now()))
}

// storeError maps a store error to its REST answer.
func (s *server) storeError(w http.ResponseWriter, r *http.Request, id string, err error) {
	var ve *store.ValidationError
	switch {
	case errors.As(err, &ve):
		s.failCode(w, ve.Code, ve.Msg)
	case errors.Is(err, store.ErrNotFound):
		s.failCode(w, iothub.CodeDeviceNotFound, id)
	case errors.Is(err, store.ErrExists):
		s.failCode(w, iothub.CodeDeviceAlreadyExists, "A device with ID '"+id+"' is already registered.")
	case errors.Is(err, store.ErrModuleNotFound):
		s.failCode(w, iothub.CodeModuleNotFound, id)
	case errors.Is(err, store.ErrModuleExists):
		s.failCode(w, iothub.CodeModuleAlreadyExists, id)
	case errors.Is(err, store.ErrPrecondition):
		s.failCode(w, iothub.CodePreconditionFailed, "Precondition failed: "+strings.TrimPrefix(err.Error(), store.ErrPrecondition.Error()+": "))
	default:
		s.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("rest request failed")
		s.failCode(w, iothub.CodeServerError, "internal error in the local hub")
	}
}

// moduleError is storeError for the module mid of device id: the module
// errors name both.
func (s *server) moduleError(w http.ResponseWriter, r *http.Request, id, mid string, err error) {
	switch {
	case errors.Is(err, store.ErrModuleNotFound):
		s.failCode(w, iothub.CodeModuleNotFound, moduleNotFoundText(id, mid))
	case errors.Is(err, store.ErrModuleExists):
		s.failCode(w, iothub.CodeModuleAlreadyExists, fmt.Sprintf("A module with ID '%s' is already registered on device '%s'.", mid, id))
	default:
		s.storeError(w, r, id, err)
	}
}
