package store

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/dmctl/dmctl/internal/iothub"
)

// DesiredChange is what a desired-properties update must push to the
// device: Patch is the body for $iothub/twin/PATCH/properties/desired/?$version=n
// (the patch as applied, nulls included, plus "$version").
type DesiredChange struct {
	Version int64
	Patch   []byte
}

func desiredChange(patch map[string]any, version int64) (*DesiredChange, error) {
	m := make(map[string]any, len(patch)+1)
	maps.Copy(m, patch)
	m["$version"] = version
	b, err := json.Marshal(m)
	if err != nil {
		return nil, invalid("desired: %v", err)
	}
	return &DesiredChange{Version: version, Patch: b}, nil
}

// twin renders the service view of r.
func (s *Store) twin(r *record) iothub.Twin {
	t := iothub.Twin{
		DeviceID:                  r.deviceID(),
		ModuleID:                  r.Mod,
		ModelID:                   r.ModelID,
		DeviceScope:               r.DeviceScope,
		ParentScopes:              slices.Clone(r.ParentScopes),
		ETag:                      twinETag(r.TwinVersion),
		DeviceETag:                identityETag(r.IdentityVer),
		Version:                   r.TwinVersion,
		Status:                    r.Status,
		StatusUpdateTime:          iothub.FormatTime(r.StatusUpdated),
		ConnectionState:           r.ConnState,
		LastActivityTime:          iothub.FormatTime(s.lastActivity(r)),
		CloudToDeviceMessageCount: r.C2DCount,
		AuthenticationType:        r.AuthType,
		X509Thumbprint:            thumbprints(r),
		Capabilities:              &iothub.Capabilities{IotEdge: r.IotEdge},
		Properties: iothub.TwinProperties{
			Desired:  section(r.Desired, r.DesiredVersion, true),
			Reported: section(r.Reported, r.ReportedVersion, false),
		},
	}
	if r.StatusReason != nil {
		v := *r.StatusReason
		t.StatusReason = &v
	}
	if len(r.Tags) > 0 {
		t.Tags = copyValue(r.Tags).(map[string]any)
	}
	if len(r.Configs) > 0 {
		t.Configurations = make(map[string]iothub.TwinConfiguration, len(r.Configs))
		for id, st := range r.Configs {
			t.Configurations[id] = iothub.TwinConfiguration{Status: st}
		}
	}
	return t
}

// newEntry publishes r with its device-side twin document.
func newEntry(r *record) (*entry, error) {
	desired := r.Desired.value().(map[string]any)
	desired["$version"] = r.DesiredVersion
	reported := r.Reported.value().(map[string]any)
	reported["$version"] = r.ReportedVersion
	b, err := json.Marshal(map[string]any{"desired": desired, "reported": reported})
	if err != nil {
		return nil, fmt.Errorf("store: render twin of %q: %w", r.ID, err)
	}
	return &entry{rec: r, devTwin: b}, nil
}

// Twin returns the service view of id's twin, with $metadata and $version in
// both property sections (ErrNotFound).
func (s *Store) Twin(id string) (iothub.Twin, error) {
	e, err := s.get(id)
	if err != nil {
		return iothub.Twin{}, err
	}
	return s.twin(e.rec), nil
}

// DeviceTwin returns the device-side twin document
// {"desired":{...,"$version":n},"reported":{...,"$version":m}} without
// $metadata. The slice is shared: callers must not modify it.
func (s *Store) DeviceTwin(id string) ([]byte, error) {
	e, err := s.get(id)
	if err != nil {
		return nil, err
	}
	return e.devTwin, nil
}

func checkTwinMatch(r *record, ifMatch string) error {
	if !ETagMatches(ifMatch, twinETag(r.TwinVersion)) {
		return fmt.Errorf("%w: twin of %q has etag %q", ErrPrecondition, r.ID, twinETag(r.TwinVersion))
	}
	return nil
}

// PatchTwin merges patch.Tags and patch.Properties.Desired into id's twin
// (JSON merge patch: null deletes). Reported properties in patch are
// ignored. ifMatch is "", "*" or the twin etag (ErrPrecondition). A change
// of the desired properties goes to the OnDesired subscriber before
// PatchTwin returns; the returned change is that same change (nil when the
// desired properties were not touched), for the caller's information.
func (s *Store) PatchTwin(id string, patch iothub.Twin, ifMatch string) (iothub.Twin, *DesiredChange, error) {
	return s.writeDesired(id, func() (iothub.Twin, *DesiredChange, error) { return s.patchTwin(id, patch, ifMatch) })
}

func (s *Store) patchTwin(id string, patch iothub.Twin, ifMatch string) (iothub.Twin, *DesiredChange, error) {
	tags := patch.Tags
	desired := withoutSystem(patch.Properties.Desired)
	if err := checkObject("tags", tags, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkObject("desired", desired, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	now := s.now().UTC()
	var change *DesiredChange
	e, err := s.mutate(id, func(r *record) error {
		if err := checkTwinMatch(r, ifMatch); err != nil {
			return err
		}
		if len(tags) == 0 && len(desired) == 0 {
			return errSkip
		}
		if len(tags) > 0 {
			nt := mergeMap(r.Tags, tags)
			if err := checkSize("tags", nt, MaxTagsSize); err != nil {
				return err
			}
			r.Tags = nt
		}
		if len(desired) > 0 {
			r.DesiredVersion++
			nd := merge(r.Desired, desired, now, r.DesiredVersion)
			if err := checkSize("desired properties", nd.value(), MaxPropertiesSize); err != nil {
				return err
			}
			c, err := desiredChange(desired, r.DesiredVersion)
			if err != nil {
				return err
			}
			r.Desired, change = nd, c
		}
		r.TwinVersion++
		return nil
	})
	if err != nil {
		return iothub.Twin{}, nil, err
	}
	return s.twin(e.rec), change, nil
}

// ReplaceTwin replaces the tags and desired properties of id's twin with
// those of twin (missing sections become empty; nulls are dropped). Reported
// properties are ignored. The desired change sent to the device is the
// difference between the old and the new desired properties, with nulls for
// removed members; it goes to the OnDesired subscriber before ReplaceTwin
// returns and is nil when desired did not change.
func (s *Store) ReplaceTwin(id string, twin iothub.Twin, ifMatch string) (iothub.Twin, *DesiredChange, error) {
	return s.writeDesired(id, func() (iothub.Twin, *DesiredChange, error) { return s.replaceTwin(id, twin, ifMatch) })
}

func (s *Store) replaceTwin(id string, twin iothub.Twin, ifMatch string) (iothub.Twin, *DesiredChange, error) {
	tags := stripNulls(twin.Tags)
	desired := stripNulls(withoutSystem(twin.Properties.Desired))
	if err := checkObject("tags", tags, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkObject("desired", desired, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkSize("tags", tags, MaxTagsSize); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkSize("desired properties", desired, MaxPropertiesSize); err != nil {
		return iothub.Twin{}, nil, err
	}
	now := s.now().UTC()
	var change *DesiredChange
	e, err := s.mutate(id, func(r *record) error {
		if err := checkTwinMatch(r, ifMatch); err != nil {
			return err
		}
		r.Tags = tags
		if d := diff(r.Desired, desired); len(d) > 0 {
			r.DesiredVersion++
			c, err := desiredChange(d, r.DesiredVersion)
			if err != nil {
				return err
			}
			r.Desired, change = merge(r.Desired, d, now, r.DesiredVersion), c
		}
		r.TwinVersion++
		return nil
	})
	if err != nil {
		return iothub.Twin{}, nil, err
	}
	return s.twin(e.rec), change, nil
}

// PatchReported merges a reported-properties patch sent by the device (a
// JSON object; null deletes; "$version" and "$metadata" members are
// ignored), bumps the reported $version and returns it. The change is
// committed before PatchReported returns. Invalid patches are
// *ValidationError.
func (s *Store) PatchReported(id string, patch []byte) (int64, error) {
	if len(patch) > MaxPatchSize {
		return 0, invalid("reported patch is %d bytes, over the limit of %d bytes", len(patch), MaxPatchSize)
	}
	m, err := DecodeObject(patch)
	if err != nil {
		return 0, err
	}
	m = withoutSystem(m)
	if err := checkObject("reported", m, 0, ""); err != nil {
		return 0, err
	}
	now := s.now().UTC()
	e, err := s.mutate(id, func(r *record) error {
		nr := merge(r.Reported, m, now, 0)
		if err := checkSize("reported properties", nr.value(), MaxPropertiesSize); err != nil {
			return err
		}
		r.Reported = nr
		r.ReportedVersion++
		r.TwinVersion++
		r.LastActivity = now
		return nil
	})
	if err != nil {
		return 0, err
	}
	return e.rec.ReportedVersion, nil
}

// ForEachTwin calls fn with the service view of every twin in device id
// order until fn returns false. It works on a snapshot taken at the start.
func (s *Store) ForEachTwin(fn func(iothub.Twin) bool) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	recs := make([]*record, 0, len(s.ids))
	for _, id := range s.ids {
		recs = append(recs, s.recs[id].rec)
	}
	s.mu.RUnlock()
	for _, r := range recs {
		if !fn(s.twin(r)) {
			break
		}
	}
	return nil
}
