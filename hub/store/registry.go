package store

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

const (
	stateConnected    = "Connected"
	stateDisconnected = "Disconnected"

	statusEnabled  = "enabled"
	statusDisabled = "disabled"

	authSAS = "sas"

	// MaxDeviceIDLength is the longest accepted device id, in characters.
	MaxDeviceIDLength = iothub.MaxIDLength
	// MaxList is the most devices Devices returns.
	MaxList = 1000

	minKeyBytes = 16
	maxKeyBytes = 64
)

// record is the stored form of one device: identity and twin.
// Records are never modified once published; writers change a clone.
//
// A module's record has ID "{deviceId}/{moduleId}" (its MQTT client id; a
// device id never contains '/') and Mod set; its Status is always enabled.
type record struct {
	ID             string    `json:"id"`
	Mod            string    `json:"mod,omitempty"`
	ManagedBy      string    `json:"managedBy,omitempty"`
	GenerationID   string    `json:"gen"`
	IdentityVer    int64     `json:"iver"`
	Status         string    `json:"status"`
	StatusReason   *string   `json:"statusReason,omitempty"`
	StatusUpdated  time.Time `json:"statusUpdated"`
	AuthType       string    `json:"authType"`
	PrimaryKey     string    `json:"pk,omitempty"`
	SecondaryKey   string    `json:"sk,omitempty"`
	PrimaryThumb   *string   `json:"pt,omitempty"`
	SecondaryThumb *string   `json:"st,omitempty"`
	IotEdge        bool      `json:"iotEdge,omitempty"`
	ConnState      string    `json:"conn"`
	ConnUpdated    time.Time `json:"connUpdated"`
	LastActivity   time.Time `json:"lastActivity"`
	C2DCount       int       `json:"c2d,omitempty"`
	DeviceScope    string    `json:"scope,omitempty"`
	ParentScopes   []string  `json:"parents,omitempty"`
	ModelID        string    `json:"modelId,omitempty"`

	TwinVersion     int64          `json:"tver"`
	Tags            map[string]any `json:"tags"`
	Desired         *node          `json:"desired"`
	DesiredVersion  int64          `json:"dver"`
	Reported        *node          `json:"reported"`
	ReportedVersion int64          `json:"rver"`

	// Configs is the status (iothub.ConfigurationTargeted or
	// ConfigurationApplied) of each configuration targeting the twin.
	Configs map[string]string `json:"cfgs,omitempty"`
}

// deviceID is the id of the device r is (or whose module r is).
func (r *record) deviceID() string {
	if r.Mod == "" {
		return r.ID
	}
	return r.ID[:len(r.ID)-len(r.Mod)-1]
}

// clone copies the record shallowly: nested twin values are shared, which is
// safe because they are never modified in place.
func (r *record) clone() *record {
	c := *r
	return &c
}

// identityETag renders the identity etag: base64 of the decimal counter ("MA==").
func identityETag(v int64) string {
	return base64.StdEncoding.EncodeToString([]byte(strconv.FormatInt(v, 10)))
}

// twinETag renders the twin etag: base64 of the 8-byte big-endian version.
func twinETag(v int64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(v))
	return base64.StdEncoding.EncodeToString(b[:])
}

// ETagMatches reports whether an If-Match header value admits current: empty
// and "*" match anything; quotes and a weak "W/" prefix are tolerated.
func ETagMatches(ifMatch, current string) bool {
	m := strings.TrimSpace(ifMatch)
	m = strings.TrimPrefix(m, "W/")
	if len(m) >= 2 && m[0] == '"' && m[len(m)-1] == '"' {
		m = m[1 : len(m)-1]
	}
	return m == "" || m == "*" || m == current
}

// ValidDeviceID checks IoT Hub's device id rules (iothub.CheckID).
func ValidDeviceID(id string) error {
	if err := iothub.CheckID(id); err != nil {
		return invalid("deviceId %q %v", id, err)
	}
	return nil
}

func validKey(name, k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		return invalid("%s is not valid base64", name)
	}
	if len(b) < minKeyBytes || len(b) > maxKeyBytes {
		return invalid("%s must decode to %d to %d bytes, not %d", name, minKeyBytes, maxKeyBytes, len(b))
	}
	return nil
}

// validThumbprint accepts what IoT Hub does: the hex SHA-1 (40 digits) or
// SHA-256 (64 digits) of a certificate, in either case, ':' separators allowed.
func validThumbprint(name, t string) error {
	h := strings.ReplaceAll(strings.TrimSpace(t), ":", "")
	if len(h) != 40 && len(h) != 64 {
		return invalid("%s must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint, not %d characters", name, len(h))
	}
	if _, err := hex.DecodeString(h); err != nil {
		return invalid("%s is not hexadecimal", name)
	}
	return nil
}

func newGenerationID() string {
	n, err := rand.Int(rand.Reader, big.NewInt(1e18))
	if err != nil {
		panic("store: crypto/rand failed: " + err.Error())
	}
	return fmt.Sprintf("63%016d", n.Int64()%1e16)
}

// applyIdentity copies the writable identity fields of d onto r. create
// reports whether r is new (then missing keys are generated).
func applyIdentity(r *record, d iothub.Device, now time.Time, create bool) error {
	status := d.Status
	if status == "" {
		status = r.Status
		if status == "" {
			status = statusEnabled
		}
	}
	if status != statusEnabled && status != statusDisabled {
		return invalid("status must be %q or %q, not %q", statusEnabled, statusDisabled, d.Status)
	}
	if status != r.Status && !create {
		r.StatusUpdated = now
	}
	r.Status = status
	if d.StatusReason != nil {
		reason := *d.StatusReason
		if len(reason) > 128 {
			return invalid("statusReason is longer than 128 characters")
		}
		r.StatusReason = &reason
	} else if create {
		r.StatusReason = nil
	}
	if d.Capabilities != nil {
		r.IotEdge = d.Capabilities.IotEdge
	}
	if err := applyScopes(r, d); err != nil {
		return err
	}
	a := d.Authentication
	if a == nil {
		if !create {
			return nil
		}
		a = &iothub.Authentication{Type: authSAS}
	}
	switch a.Type {
	case "", authSAS:
		pk, sk := "", ""
		if a.SymmetricKey != nil {
			pk, sk = a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey
		}
		if r.AuthType == authSAS {
			// Updates without keys keep the current ones.
			if pk == "" {
				pk = r.PrimaryKey
			}
			if sk == "" {
				sk = r.SecondaryKey
			}
		}
		if pk == "" {
			pk = newKey()
		}
		if sk == "" {
			sk = newKey()
		}
		if err := validKey("primaryKey", pk); err != nil {
			return err
		}
		if err := validKey("secondaryKey", sk); err != nil {
			return err
		}
		r.AuthType, r.PrimaryKey, r.SecondaryKey = authSAS, pk, sk
		r.PrimaryThumb, r.SecondaryThumb = nil, nil
	case "selfSigned", "certificateAuthority", "none":
		r.AuthType, r.PrimaryKey, r.SecondaryKey = a.Type, "", ""
		r.PrimaryThumb, r.SecondaryThumb = nil, nil
		if a.Type == "selfSigned" {
			if a.X509Thumbprint == nil || a.X509Thumbprint.PrimaryThumbprint == nil || *a.X509Thumbprint.PrimaryThumbprint == "" {
				return invalid("authentication type selfSigned needs x509Thumbprint.primaryThumbprint")
			}
			p := *a.X509Thumbprint.PrimaryThumbprint
			if err := validThumbprint("primaryThumbprint", p); err != nil {
				return err
			}
			r.PrimaryThumb = &p
			if s := a.X509Thumbprint.SecondaryThumbprint; s != nil && *s != "" {
				v := *s
				if err := validThumbprint("secondaryThumbprint", v); err != nil {
					return err
				}
				r.SecondaryThumb = &v
			}
		}
	default:
		return invalid("authentication type %q is not supported (use sas, selfSigned, certificateAuthority or none)", a.Type)
	}
	return nil
}

// device renders the identity of r.
func (s *Store) device(r *record) iothub.Device {
	d := iothub.Device{
		DeviceID:                   r.ID,
		GenerationID:               r.GenerationID,
		ETag:                       identityETag(r.IdentityVer),
		ConnectionState:            r.ConnState,
		Status:                     r.Status,
		ConnectionStateUpdatedTime: iothub.FormatTime(r.ConnUpdated),
		StatusUpdatedTime:          iothub.FormatTime(r.StatusUpdated),
		LastActivityTime:           iothub.FormatTime(s.lastActivity(r)),
		CloudToDeviceMessageCount:  r.C2DCount,
		Authentication:             &iothub.Authentication{Type: r.AuthType},
		Capabilities:               &iothub.Capabilities{IotEdge: r.IotEdge},
		DeviceScope:                r.DeviceScope,
		ParentScopes:               slices.Clone(r.ParentScopes),
	}
	if r.StatusReason != nil {
		v := *r.StatusReason
		d.StatusReason = &v
	}
	switch r.AuthType {
	case authSAS:
		d.Authentication.SymmetricKey = &iothub.SymmetricKey{PrimaryKey: r.PrimaryKey, SecondaryKey: r.SecondaryKey}
	default:
		d.Authentication.X509Thumbprint = thumbprints(r)
	}
	return d
}

// maxScopeLength bounds deviceScope and each parent scope.
const maxScopeLength = 512

// applyScopes stores deviceScope and parentScopes as given (an update that
// omits them keeps the current ones). An edge device without a scope gets
// its own, "ms-azure-iot-edge://{id}-{generationId}", as IoT Hub assigns.
func applyScopes(r *record, d iothub.Device) error {
	if d.DeviceScope != "" {
		if len(d.DeviceScope) > maxScopeLength {
			return invalid("deviceScope is longer than %d characters", maxScopeLength)
		}
		r.DeviceScope = d.DeviceScope
	}
	if d.ParentScopes != nil {
		for _, p := range d.ParentScopes {
			if p == "" || len(p) > maxScopeLength {
				return invalid("parentScopes must hold non-empty scopes of at most %d characters", maxScopeLength)
			}
		}
		r.ParentScopes = append([]string(nil), d.ParentScopes...)
	}
	if r.IotEdge && r.DeviceScope == "" {
		r.DeviceScope = "ms-azure-iot-edge://" + r.ID + "-" + r.GenerationID
	}
	return nil
}

func thumbprints(r *record) *iothub.X509Thumbprint {
	t := &iothub.X509Thumbprint{}
	if r.PrimaryThumb != nil {
		v := *r.PrimaryThumb
		t.PrimaryThumbprint = &v
	}
	if r.SecondaryThumb != nil {
		v := *r.SecondaryThumb
		t.SecondaryThumbprint = &v
	}
	return t
}

// CreateDevice registers d.DeviceID with a new twin. Empty or missing
// symmetric keys are generated. ErrExists if the id is taken.
func (s *Store) CreateDevice(d iothub.Device) (iothub.Device, error) {
	if err := ValidDeviceID(d.DeviceID); err != nil {
		return iothub.Device{}, err
	}
	now := s.now().UTC()
	r := newRecord(d.DeviceID, "", now)
	if err := applyIdentity(r, d, now, true); err != nil {
		return iothub.Device{}, err
	}
	e, err := newEntry(r)
	if err != nil {
		return iothub.Device{}, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	closed, exists := s.closed, s.recs[d.DeviceID] != nil
	s.mu.RUnlock()
	if closed {
		return iothub.Device{}, ErrClosed
	}
	if exists {
		return iothub.Device{}, fmt.Errorf("%w: %q", ErrExists, d.DeviceID)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return putRecord(tx, r) }); err != nil {
		return iothub.Device{}, err
	}
	s.mu.Lock()
	s.recs[r.ID] = e
	s.ids = insertID(s.ids, r.ID)
	s.mu.Unlock()
	return s.device(r), nil
}

// UpdateDevice changes status, statusReason, capabilities and authentication
// of an existing device. ifMatch is "", "*" or the identity etag
// (ErrPrecondition otherwise). Keys left empty keep their current value.
func (s *Store) UpdateDevice(d iothub.Device, ifMatch string) (iothub.Device, error) {
	if err := ValidDeviceID(d.DeviceID); err != nil {
		return iothub.Device{}, err
	}
	now := s.now().UTC()
	e, err := s.mutate(d.DeviceID, func(r *record) error {
		if !ETagMatches(ifMatch, identityETag(r.IdentityVer)) {
			return fmt.Errorf("%w: device %q has etag %q", ErrPrecondition, r.ID, identityETag(r.IdentityVer))
		}
		if err := applyIdentity(r, d, now, false); err != nil {
			return err
		}
		r.IdentityVer++
		return nil
	})
	if err != nil {
		return iothub.Device{}, err
	}
	return s.device(e.rec), nil
}

// Device returns the identity of id (ErrNotFound).
func (s *Store) Device(id string) (iothub.Device, error) {
	e, err := s.get(id)
	if err != nil {
		return iothub.Device{}, err
	}
	return s.device(e.rec), nil
}

// DeviceStatus returns the status ("enabled" or "disabled") of id
// (ErrNotFound): Device without building the whole identity, for the checks
// every message makes.
func (s *Store) DeviceStatus(id string) (string, error) {
	e, err := s.get(id)
	if err != nil {
		return "", err
	}
	return e.rec.Status, nil
}

// DeviceKeys returns the symmetric keys of id for authenticating the device;
// both are empty when the device does not use SAS authentication.
func (s *Store) DeviceKeys(id string) (primary, secondary string, err error) {
	e, err := s.get(id)
	if err != nil {
		return "", "", err
	}
	return e.rec.PrimaryKey, e.rec.SecondaryKey, nil
}

// DeleteDevice removes id, its twin and its modules. ifMatch is "", "*" or the identity etag.
func (s *Store) DeleteDevice(id, ifMatch string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur, err := s.get(id)
	if err != nil {
		return err
	}
	if !ETagMatches(ifMatch, identityETag(cur.rec.IdentityVer)) {
		return fmt.Errorf("%w: device %q has etag %q", ErrPrecondition, id, identityETag(cur.rec.IdentityVer))
	}
	s.mu.RLock()
	mods := moduleKeys(s.mods, id)
	s.mu.RUnlock()
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		for _, k := range mods {
			if err := b.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return b.Delete([]byte(id))
	}); err != nil {
		return fmt.Errorf("store: delete device %q: %w", id, err)
	}
	s.mu.Lock()
	delete(s.recs, id)
	s.ids = removeID(s.ids, id)
	for _, k := range mods {
		delete(s.recs, k)
		s.mods = removeID(s.mods, k)
	}
	s.mu.Unlock()
	s.takeTouched(id)
	for _, k := range mods {
		s.takeTouched(k)
	}
	return nil
}

// Devices lists up to top identities in device id order; top <= 0 or above
// MaxList means MaxList.
func (s *Store) Devices(top int) ([]iothub.Device, error) {
	if top <= 0 || top > MaxList {
		top = MaxList
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	ids := s.ids
	recs := make([]*record, 0, min(top, len(ids)))
	for _, id := range ids {
		if len(recs) == top {
			break
		}
		recs = append(recs, s.recs[id].rec)
	}
	s.mu.RUnlock()
	out := make([]iothub.Device, 0, len(recs))
	for _, r := range recs {
		out = append(out, s.device(r))
	}
	return out, nil
}

// Count returns the number of registered devices.
func (s *Store) Count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.ids)
}

// SetModelID records the IoT Plug and Play model id an identity (device or
// module key) announced when it connected; it shows in the twin as modelId.
// An empty modelID keeps the current one.
func (s *Store) SetModelID(id, modelID string) error {
	if modelID == "" {
		return nil
	}
	if len(modelID) > maxScopeLength {
		return invalid("modelId is longer than %d characters", maxScopeLength)
	}
	_, err := s.mutate(id, func(r *record) error {
		if r.ModelID == modelID {
			return errSkip
		}
		r.ModelID = modelID
		r.TwinVersion++
		return nil
	})
	return err
}

// SetConnected records a connection change of a device or module key durably: connectionState,
// connectionStateUpdatedTime and lastActivityTime.
func (s *Store) SetConnected(id string, connected bool) error {
	now := s.now().UTC()
	_, err := s.mutate(id, func(r *record) error {
		if connected {
			r.ConnState = stateConnected
		} else {
			r.ConnState = stateDisconnected
		}
		r.ConnUpdated = now
		r.LastActivity = now
		return nil
	})
	return err
}

// SetDisconnectedAll records that the connections of ids ended, in one
// write: what the hub does for every connection it closes at shutdown,
// where one transaction per connection would take seconds. Ids no longer
// in the registry are skipped.
func (s *Store) SetDisconnectedAll(ids []string) error {
	now := s.now().UTC()
	return s.mutateAll(ids, func(r *record) error {
		if r.ConnState == stateDisconnected {
			return errSkip
		}
		r.ConnState = stateDisconnected
		r.ConnUpdated = now
		r.LastActivity = now
		return nil
	})
}

// Touch records device activity (lastActivityTime). It is kept in memory and
// written with the device's next durable change or on Close. Unknown ids
// are ignored.
func (s *Store) Touch(id string) {
	now := s.now().UTC()
	s.mu.RLock()
	ok := s.recs[id] != nil && !s.closed
	s.mu.RUnlock()
	if !ok {
		return
	}
	s.tmu.Lock()
	s.touched[id] = now
	s.tmu.Unlock()
}
