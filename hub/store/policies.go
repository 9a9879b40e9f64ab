package store

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"sort"
	"strings"
)

// Rights is a set of shared access policy permissions.
type Rights uint8

// Permissions of a shared access policy.
const (
	RegistryRead Rights = 1 << iota
	RegistryWrite
	ServiceConnect
	DeviceConnect
)

// Has reports whether r includes every right in want.
func (r Rights) Has(want Rights) bool { return r&want == want }

// Any reports whether r includes at least one right in want.
func (r Rights) Any(want Rights) bool { return r&want != 0 }

func (r Rights) String() string {
	var parts []string
	for _, x := range []struct {
		r    Rights
		name string
	}{{RegistryRead, "RegistryRead"}, {RegistryWrite, "RegistryWrite"}, {ServiceConnect, "ServiceConnect"}, {DeviceConnect, "DeviceConnect"}} {
		if r&x.r != 0 {
			parts = append(parts, x.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Policy is a shared access policy: a named pair of keys with rights.
type Policy struct {
	Name         string `json:"name"`
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
	Rights       Rights `json:"rights"`
}

// defaultPolicies are created with fresh random keys when a store is first opened.
var defaultPolicies = []struct {
	Name   string
	Rights Rights
}{
	{"iothubowner", RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect},
	{"service", ServiceConnect},
	{"device", DeviceConnect},
	{"registryRead", RegistryRead},
	{"registryReadWrite", RegistryRead | RegistryWrite},
}

// Policy returns the named shared access policy (ErrPolicyNotFound).
func (s *Store) Policy(name string) (Policy, error) {
	p, ok := s.policies[name]
	if !ok {
		return Policy{}, fmt.Errorf("%w: %q", ErrPolicyNotFound, name)
	}
	return p, nil
}

// Policies returns every shared access policy, sorted by name.
func (s *Store) Policies() ([]Policy, error) {
	out := make([]Policy, 0, len(s.policies))
	for _, p := range s.policies {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// newKey returns 32 random bytes in standard base64.
func newKey() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("store: crypto/rand failed: " + err.Error())
	}
	return base64.StdEncoding.EncodeToString(b[:])
}
