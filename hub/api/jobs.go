package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// jobRequest is the body of PUT /jobs/v2/{id} as the service SDKs send it.
type jobRequest struct {
	JobID                     json.RawMessage   `json:"jobId"` // the Node SDK allows a number
	Type                      string            `json:"type"`
	QueryCondition            *string           `json:"queryCondition"`
	CloudToDeviceMethod       *jobMethodRequest `json:"cloudToDeviceMethod"`
	UpdateTwin                *jobTwinRequest   `json:"updateTwin"`
	StartTime                 *string           `json:"startTime"`
	MaxExecutionTimeInSeconds *int64            `json:"maxExecutionTimeInSeconds"`
}

type jobMethodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds *int            `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  *int            `json:"connectTimeoutInSeconds"`
	// TimeoutInSeconds is the member's name in the first jobs API; used
	// when responseTimeoutInSeconds is absent.
	TimeoutInSeconds *int `json:"timeoutInSeconds"`
}

type jobTwinRequest struct {
	Tags       map[string]any `json:"tags"`
	Properties struct {
		Desired map[string]any `json:"desired"`
	} `json:"properties"`
}

// jobStatusAliases maps status filter values of the SDKs and the REST
// specification onto the statuses jobs have here.
var jobStatusAliases = map[string]string{
	"finished": iothub.JobCompleted, // the Node SDK's JobStatus type
	"enqueued": iothub.JobQueued,
}

var jobStatuses = []string{iothub.JobQueued, iothub.JobScheduled, iothub.JobRunning, iothub.JobCompleted,
	iothub.JobFailed, iothub.JobCancelled, "unknown"}

func (s *server) jobsEnabled(w http.ResponseWriter) bool {
	if s.cfg.Jobs == nil {
		s.fail(w, http.StatusNotFound, "NotFound", "jobs are not enabled on this hub (it runs without a jobs engine)")
		return false
	}
	return true
}

// jobError maps an error of the jobs engine to its REST answer.
func (s *server) jobError(w http.ResponseWriter, r *http.Request, id string, err error) {
	var ve *store.ValidationError
	switch {
	case errors.As(err, &ve):
		s.failCode(w, ve.Code, ve.Msg)
	case errors.Is(err, store.ErrJobNotFound):
		s.failCode(w, iothub.CodeJobNotFound, "Job with ID '"+id+"' does not exist.")
	case errors.Is(err, store.ErrJobExists):
		s.failCode(w, iothub.CodeJobAlreadyExists, "A job with ID '"+id+"' already exists.")
	case errors.Is(err, store.ErrClosed):
		s.failCode(w, iothub.CodeServiceUnavailable, "the local hub is shutting down")
	case r.Context().Err() != nil:
		// The caller went away; nobody reads the answer.
	default:
		s.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("jobs request failed")
		s.failCode(w, iothub.CodeServerError, "internal error in the local hub")
	}
}

// putJob serves PUT /jobs/v2/{id}. Twin-update jobs need RegistryWrite or
// ServiceConnect (as PATCH /twins does); direct-method jobs need
// ServiceConnect (as POST /twins/{id}/methods does).
func (s *server) putJob(w http.ResponseWriter, r *http.Request) {
	if !s.jobsEnabled(w) {
		return
	}
	id := r.PathValue("id")
	var req jobRequest
	if !s.readJSON(w, r, &req) {
		return
	}
	if body := strings.TrimSpace(string(req.JobID)); body != "" && body != "null" {
		var bodyID string
		if err := json.Unmarshal(req.JobID, &bodyID); err != nil {
			bodyID = body // a number
		}
		if bodyID != id {
			s.failCode(w, iothub.CodeArgumentInvalid, "jobId in the body ("+quote(bodyID)+") does not match the jobId in the path ("+quote(id)+")")
			return
		}
	}
	job := iothub.JobResponse{JobID: id, Type: req.Type}
	if req.QueryCondition != nil {
		job.QueryCondition = *req.QueryCondition
	}
	if req.StartTime != nil {
		t, err := iothub.ParseTime(*req.StartTime)
		if err != nil {
			s.failCode(w, iothub.CodeArgumentInvalid, "startTime: "+err.Error())
			return
		}
		job.StartTime = t
	}
	if req.MaxExecutionTimeInSeconds != nil {
		job.MaxExecutionTimeInSeconds = *req.MaxExecutionTimeInSeconds
	}
	switch req.Type {
	case iothub.JobTypeDeviceMethod:
		p, _ := r.Context().Value(ctxKey{}).(*principal)
		if p == nil || !p.rights.Has(store.ServiceConnect) {
			s.log.Debug().Str("path", r.URL.Path).Msg("rest request refused: direct-method jobs need ServiceConnect")
			s.unauthorized(w)
			return
		}
		if m := req.CloudToDeviceMethod; m != nil {
			jm := &iothub.JobMethod{MethodName: m.MethodName, Payload: m.Payload}
			switch {
			case m.ResponseTimeoutInSeconds != nil:
				jm.ResponseTimeoutInSeconds = *m.ResponseTimeoutInSeconds
			case m.TimeoutInSeconds != nil:
				jm.ResponseTimeoutInSeconds = *m.TimeoutInSeconds
			}
			if m.ConnectTimeoutInSeconds != nil {
				jm.ConnectTimeoutInSeconds = *m.ConnectTimeoutInSeconds
			}
			job.CloudToDeviceMethod = jm
		}
	case iothub.JobTypeUpdateTwin:
		if t := req.UpdateTwin; t != nil {
			job.UpdateTwin = &iothub.JobTwin{Tags: t.Tags, Properties: iothub.JobTwinProperties{Desired: t.Properties.Desired}}
		}
	}
	created, err := s.cfg.Jobs.Create(r.Context(), job)
	if err != nil {
		s.jobError(w, r, id, err)
		return
	}
	writeJSON(w, http.StatusOK, created)
}

// getJob serves GET /jobs/v2/{id}.
func (s *server) getJob(w http.ResponseWriter, r *http.Request) {
	if !s.jobsEnabled(w) {
		return
	}
	id := r.PathValue("id")
	j, err := s.cfg.Jobs.Get(r.Context(), id)
	if err != nil {
		s.jobError(w, r, id, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

// cancelJob serves POST /jobs/v2/{id}/cancel.
func (s *server) cancelJob(w http.ResponseWriter, r *http.Request) {
	if !s.jobsEnabled(w) {
		return
	}
	id := r.PathValue("id")
	j, err := s.cfg.Jobs.Cancel(r.Context(), id)
	if err != nil {
		s.jobError(w, r, id, err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

// listJobs serves GET /jobs/v2/query?jobType=&jobStatus= with
// x-ms-max-item-count / x-ms-continuation paging; the body is a plain array.
func (s *server) listJobs(w http.ResponseWriter, r *http.Request) {
	if !s.jobsEnabled(w) {
		return
	}
	q := r.URL.Query()
	jobType, status := q.Get("jobType"), q.Get("jobStatus")
	switch jobType {
	case "", iothub.JobTypeDeviceMethod, iothub.JobTypeUpdateTwin:
	default:
		s.failCode(w, iothub.CodeArgumentInvalid, "jobType must be "+iothub.JobTypeDeviceMethod+" or "+iothub.JobTypeUpdateTwin+", not "+quote(jobType))
		return
	}
	if a, ok := jobStatusAliases[status]; ok {
		status = a
	}
	if status != "" && !slices.Contains(jobStatuses, status) {
		s.failCode(w, iothub.CodeArgumentInvalid, "jobStatus must be one of "+strings.Join(jobStatuses, ", ")+", not "+quote(status))
		return
	}
	pageSize, offset, ok := s.paging(w, r, "jobs\x00"+jobType+"\x00"+status)
	if !ok {
		return
	}
	all, err := s.cfg.Jobs.List(r.Context(), jobType, status)
	if err != nil {
		s.jobError(w, r, "", err)
		return
	}
	offset = min(offset, len(all))
	end := min(offset+pageSize, len(all))
	page := all[offset:end]
	if page == nil {
		page = []iothub.JobResponse{}
	}
	w.Header().Set("x-ms-item-type", "jobResponse")
	if end < len(all) {
		w.Header().Set("x-ms-continuation", makeToken("jobs\x00"+jobType+"\x00"+status, end))
	}
	writeJSON(w, http.StatusOK, page)
}

// paging reads x-ms-max-item-count and x-ms-continuation for a result
// identified by key. It answers the request itself and returns false on error.
func (s *server) paging(w http.ResponseWriter, r *http.Request, key string) (pageSize, offset int, ok bool) {
	pageSize = DefaultPageSize
	if v := r.Header.Get("x-ms-max-item-count"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			s.failCode(w, iothub.CodeArgumentInvalid, "x-ms-max-item-count must be a positive integer")
			return 0, 0, false
		}
		pageSize = min(n, MaxPageSize)
	}
	if v := r.Header.Get("x-ms-continuation"); v != "" {
		off, err := parseToken(v, key)
		if err != nil {
			s.failCode(w, iothub.CodeArgumentInvalid, err.Error())
			return 0, 0, false
		}
		offset = off
	}
	return pageSize, offset, true
}
