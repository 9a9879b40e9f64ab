package dashboard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// maxRows bounds the devices table.
const maxRows = 2000

type pages struct {
	login *template.Template
	byID  map[string]*template.Template
}

func loadPages() (*pages, error) {
	login, err := template.ParseFS(templateFS, "templates/login.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard: templates: %w", err)
	}
	p := &pages{login: login, byID: make(map[string]*template.Template)}
	for _, name := range []string{"devices", "device", "jobs", "configurations", "hub", "notfound"} {
		t, err := template.ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("dashboard: templates: %w", err)
		}
		p.byID[name] = t
	}
	return p, nil
}

// frame is what the layout needs; every page's data embeds it.
type frame struct {
	Page   string // devices, device, jobs, configurations, hub
	Title  string
	CSRF   string
	Device string // the device page's device
	Module string // and module
}

func (s *Server) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := s.pages.byID[name].ExecuteTemplate(&buf, "layout", data); err != nil {
		s.log.Error().Err(err).Str("page", name).Msg("dashboard: render page")
		http.Error(w, "cannot render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) renderLogin(w http.ResponseWriter, status int, msg string) {
	var buf bytes.Buffer
	if err := s.pages.login.Execute(&buf, struct{ Error string }{msg}); err != nil {
		http.Error(w, "cannot render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// deviceHref is the path of a device's (or module's) page.
func deviceHref(id, mid string) string {
	p := "/devices/" + url.PathEscape(id)
	if mid != "" {
		p += "/modules/" + url.PathEscape(mid)
	}
	return p
}

type link struct{ Text, Href string }

type deviceRow struct {
	ID, Href, Status, Connection, Activity, Tags string
	Modules                                      []link
}

type devicesData struct {
	frame
	Where       string
	FilterError string
	Rows        []deviceRow
	Total       int  // devices matching
	Truncated   bool // more than maxRows matched
}

// connection renders a connectionState as the page shows it.
func connection(state any) string {
	if s, _ := state.(string); strings.EqualFold(s, "Connected") {
		return "connected"
	}
	return "disconnected"
}

// activity renders an IoT Hub timestamp; "" when never set.
func activity(v any) string {
	s, _ := v.(string)
	if s == "" || s == iothub.NeverTime {
		return ""
	}
	return s
}

func compactJSON(v any) string {
	if v == nil {
		return ""
	}
	if m, ok := v.(map[string]any); ok && len(m) == 0 {
		return ""
	}
	return encodeJSON(v, "")
}

func prettyJSON(v any) string {
	if v == nil {
		v = map[string]any{}
	}
	return encodeJSON(v, "  ")
}

// encodeJSON renders v as the user wrote it: '<', '>' and '&' stay as they
// are (html/template escapes the page, and the browser shows the text).
func encodeJSON(v any, indent string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimRight(buf.String(), "\n")
}

func (s *Server) devicesPage(w http.ResponseWriter, r *http.Request, ss *session) {
	d := devicesData{frame: frame{Page: "devices", Title: "Devices", CSRF: ss.csrf}}
	d.Where = strings.TrimSpace(r.URL.Query().Get("where"))
	var q *query.Query
	if d.Where != "" {
		var err error
		q, err = query.Parse("SELECT * FROM devices WHERE " + d.Where)
		if err != nil {
			d.FilterError = filterError(err)
			s.render(w, http.StatusBadRequest, "devices", d)
			return
		}
	}
	modules := map[string][]link{}
	err := s.cfg.Store.ForEachModuleTwinDoc(func(doc map[string]any) bool {
		dev, _ := doc["deviceId"].(string)
		mid, _ := doc["moduleId"].(string)
		modules[dev] = append(modules[dev], link{Text: mid, Href: deviceHref(dev, mid)})
		return true
	})
	if err == nil {
		err = s.cfg.Store.ForEachTwinDoc(func(doc map[string]any) bool {
			if q != nil && !q.Match(doc) {
				return true
			}
			d.Total++
			if len(d.Rows) == maxRows {
				d.Truncated = true
				return true
			}
			id, _ := doc["deviceId"].(string)
			st, _ := doc["status"].(string)
			d.Rows = append(d.Rows, deviceRow{
				ID: id, Href: deviceHref(id, ""), Status: st,
				Connection: connection(doc["connectionState"]),
				Activity:   activity(doc["lastActivityTime"]),
				Tags:       compactJSON(doc["tags"]),
				Modules:    modules[id],
			})
			return true
		})
	}
	if err != nil {
		s.log.Error().Err(err).Msg("dashboard: list devices")
		http.Error(w, "cannot read the registry", http.StatusInternalServerError)
		return
	}
	s.render(w, http.StatusOK, "devices", d)
}

func filterError(err error) string {
	var se *query.SyntaxError
	if errors.As(err, &se) {
		return se.Error()
	}
	return "invalid condition: " + err.Error()
}

type deviceData struct {
	frame
	Heading      string
	Parent       *link // a module's device
	Status       string
	Connection   string
	Auth         string
	Activity     string
	Tags         string
	Desired      string
	Reported     string
	ETag         string
	Version      int64
	Edit         string
	Modules      []link
	Message      string // not found
	MethodsRoute string
}

// withoutMetadata drops the "$metadata" member of a property section (the
// page shows values and $version; the REST API has the timestamps).
func withoutMetadata(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != "$metadata" {
			out[k] = v
		}
	}
	return out
}

// withoutMeta drops the "$version" and "$metadata" members of a property
// section.
func withoutMeta(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}

func (s *Server) devicePage(w http.ResponseWriter, r *http.Request, ss *session) {
	id, mid := r.PathValue("id"), r.PathValue("mid")
	d := deviceData{frame: frame{Page: "device", Title: id, CSRF: ss.csrf, Device: id, Module: mid}, Heading: id}
	key := id
	if mid != "" {
		key = iothub.ClientID(id, mid)
		d.Title, d.Heading = id+"/"+mid, mid
		d.Parent = &link{Text: id, Href: deviceHref(id, "")}
	}
	twin, err := s.cfg.Store.Twin(key)
	if err != nil {
		nf := frame{Page: "notfound", Title: "Not found", CSRF: ss.csrf}
		msg := fmt.Sprintf("There is no device %q.", id)
		if mid != "" {
			msg = fmt.Sprintf("There is no module %q on device %q.", mid, id)
		}
		if !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrModuleNotFound) {
			s.log.Error().Err(err).Msg("dashboard: read twin")
			msg = "The twin cannot be read."
		}
		s.render(w, http.StatusNotFound, "notfound", struct {
			frame
			Message string
		}{nf, msg})
		return
	}
	d.Status, d.Connection, d.Auth = twin.Status, connection(twin.ConnectionState), twin.AuthenticationType
	d.Activity = activity(twin.LastActivityTime)
	if twin.Tags == nil {
		twin.Tags = map[string]any{}
	}
	d.Tags = prettyJSON(twin.Tags)
	d.Desired = prettyJSON(withoutMetadata(twin.Properties.Desired))
	d.Reported = prettyJSON(withoutMetadata(twin.Properties.Reported))
	d.ETag, d.Version = twin.ETag, twin.Version
	d.Edit = prettyJSON(map[string]any{
		"tags":       twin.Tags,
		"properties": map[string]any{"desired": withoutMeta(twin.Properties.Desired)},
	})
	if mid == "" {
		if ms, err := s.cfg.Store.Modules(id); err == nil {
			for _, m := range ms {
				d.Modules = append(d.Modules, link{Text: m.ModuleID, Href: deviceHref(id, m.ModuleID)})
			}
		}
	}
	s.render(w, http.StatusOK, "device", d)
}

type jobsData struct {
	frame
	Snapshot
}

func (s *Server) jobsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	snap, err := s.snapshot()
	if err != nil {
		s.log.Error().Err(err).Msg("dashboard: read jobs")
		http.Error(w, "cannot read the jobs", http.StatusInternalServerError)
		return
	}
	s.render(w, http.StatusOK, "jobs", jobsData{frame{Page: "jobs", Title: "Jobs", CSRF: ss.csrf}, snap})
}

func (s *Server) configurationsPage(w http.ResponseWriter, r *http.Request, ss *session) {
	snap, err := s.snapshot()
	if err != nil {
		s.log.Error().Err(err).Msg("dashboard: read configurations")
		http.Error(w, "cannot read the configurations", http.StatusInternalServerError)
		return
	}
	s.render(w, http.StatusOK, "configurations", jobsData{frame{Page: "configurations", Title: "Configurations", CSRF: ss.csrf}, snap})
}

// JobView is a job as the jobs page and stream show it.
type JobView struct {
	JobID     string `json:"jobId"`
	Type      string `json:"type"`
	Status    string `json:"status"`
	Created   string `json:"created"`
	Devices   int    `json:"devices"`
	Succeeded int    `json:"succeeded"`
	Failed    int    `json:"failed"`
	Running   int    `json:"running"`
	Pending   int    `json:"pending"`
	Percent   int    `json:"percent"` // devices done (succeeded or failed)
	Counts    string `json:"counts"`
}

// ConfigurationView is a configuration as its page and the stream show it.
type ConfigurationView struct {
	ID              string `json:"id"`
	Priority        int    `json:"priority"`
	TargetCondition string `json:"targetCondition"`
	Targeted        int64  `json:"targeted"`
	Applied         int64  `json:"applied"`
	Percent         int    `json:"percent"` // applied of targeted
}

// Snapshot is what /stream/jobs sends.
type Snapshot struct {
	Jobs           []JobView           `json:"jobs"`
	Configurations []ConfigurationView `json:"configurations"`
}

// maxJobs bounds the jobs listed: the newest ones.
const maxJobs = 200

func percent(part, whole int64) int {
	if whole <= 0 {
		return 0
	}
	return int(min(100, part*100/whole))
}

func (s *Server) snapshot() (Snapshot, error) {
	snap := Snapshot{Jobs: []JobView{}, Configurations: []ConfigurationView{}}
	jobs, err := s.cfg.Store.Jobs()
	if err != nil {
		return snap, err
	}
	slices.Reverse(jobs) // newest first
	for _, j := range jobs[:min(len(jobs), maxJobs)] {
		st := j.DeviceJobStatistics
		v := JobView{
			JobID: j.JobID, Type: j.Type, Status: j.Status, Created: iothub.FormatTime(j.CreatedTime),
			Devices: st.DeviceCount, Succeeded: st.SucceededCount, Failed: st.FailedCount,
			Running: st.RunningCount, Pending: st.PendingCount,
		}
		v.Percent = percent(int64(st.Finished()), int64(st.DeviceCount))
		if st.DeviceCount == 0 && iothub.JobTerminal(j.Status) {
			v.Percent = 100
		}
		v.Counts = fmt.Sprintf("%d/%d done · %d succeeded · %d failed · %d running · %d pending",
			st.Finished(), st.DeviceCount, st.SucceededCount, st.FailedCount, st.RunningCount, st.PendingCount)
		snap.Jobs = append(snap.Jobs, v)
	}
	cfgs, err := s.cfg.Store.Configurations(0)
	if err != nil {
		return snap, err
	}
	for _, c := range cfgs {
		v := ConfigurationView{ID: c.ID, Priority: c.Priority, TargetCondition: c.TargetCondition}
		if c.SystemMetrics != nil {
			v.Targeted = c.SystemMetrics.Results[iothub.MetricTargetedCount]
			v.Applied = c.SystemMetrics.Results[iothub.MetricAppliedCount]
		}
		v.Percent = percent(v.Applied, v.Targeted)
		snap.Configurations = append(snap.Configurations, v)
	}
	return snap, nil
}

type hubData struct {
	frame
	MaskedCS  string
	CAFile    string
	Listeners []Listener
	Counts    []count
}

type count struct {
	Name  string
	Value int
}

// maskKey replaces the SharedAccessKey of a connection string with dots.
func maskKey(cs string) string {
	parts := strings.Split(cs, ";")
	for i, p := range parts {
		if k, _, ok := strings.Cut(p, "="); ok && k == "SharedAccessKey" {
			parts[i] = k + "=••••••••••••"
		}
	}
	return strings.Join(parts, ";")
}

func (s *Server) hubPage(w http.ResponseWriter, r *http.Request, ss *session) {
	d := hubData{frame: frame{Page: "hub", Title: "Hub", CSRF: ss.csrf}, CAFile: s.cfg.CAFile, Listeners: s.cfg.Listeners()}
	if s.cfg.OwnerConnectionString != nil {
		d.MaskedCS = maskKey(s.cfg.OwnerConnectionString())
	}
	st := s.cfg.Store
	connected := 0
	if stats, err := st.ServiceStatistics(); err == nil {
		connected = int(stats.ConnectedDeviceCount)
	}
	jobs, _ := st.Jobs()
	cfgs, _ := st.Configurations(0)
	last := s.cfg.Events.Last()
	_, lost := s.cfg.Events.Since(0, 1)
	d.Counts = []count{
		{"devices", st.Count()}, {"connected", connected}, {"modules", st.ModuleCount()},
		{"jobs", len(jobs)}, {"configurations", len(cfgs)}, {"events kept", int(last - lost)},
	}
	s.render(w, http.StatusOK, "hub", d)
}
