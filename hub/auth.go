package hub

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// authenticate checks a CONNECT: client id, username and SAS password
// against the registry, and returns the device id and the token's expiry.
// The error text is safe to log.
func (b *broker) authenticate(cl *mqtt.Client, pk packets.Packet) (string, time.Time, error) {
	_, dev, mod, ok := iothub.ParseUsername(string(pk.Connect.Username))
	if !ok {
		return "", time.Time{}, errors.New("malformed username")
	}
	if iothub.ClientID(dev, mod) != cl.ID {
		return "", time.Time{}, fmt.Errorf("username names %q but the client id is %q", iothub.ClientID(dev, mod), cl.ID)
	}
	if mod != "" {
		return "", time.Time{}, errors.New("module identities are not supported")
	}
	d, err := b.s.store.Device(dev)
	if err != nil {
		if errors.Is(err, errStoreNotFound) {
			return "", time.Time{}, errors.New("unknown device")
		}
		return "", time.Time{}, fmt.Errorf("registry: %w", err)
	}
	if !strings.EqualFold(d.Status, "enabled") && d.Status != "" {
		return "", time.Time{}, errors.New("device is disabled")
	}
	if d.Authentication == nil || d.Authentication.Type != "sas" || d.Authentication.SymmetricKey == nil {
		return "", time.Time{}, errors.New("device does not use SAS authentication")
	}
	if !pk.Connect.PasswordFlag || len(pk.Connect.Password) == 0 {
		return "", time.Time{}, errors.New("no SAS token in password")
	}
	hosts := b.s.hosts()
	if hc, ok := cl.Net.Conn.(interface{ ServerName() string }); ok && hc.ServerName() != "" {
		hosts = append(hosts, hc.ServerName())
	}
	keys := d.Authentication.SymmetricKey
	tok, err := sas.Verify(string(pk.Connect.Password),
		sas.Audience{Hosts: hosts, Path: "devices/" + dev},
		b.s.now(), keys.PrimaryKey, keys.SecondaryKey)
	if err != nil {
		return "", time.Time{}, err
	}
	return dev, tok.Expiry, nil
}

// deviceTopic reports whether topic (or filter) lies in the device's own
// "devices/{id}/" space.
func deviceTopic(id, topic string) bool {
	return strings.HasPrefix(topic, "devices/"+id+"/")
}

// allowed is the ACL: a device may use IoT Hub's method and twin topics and
// its own devices/{id}/ space, nothing else.
func allowed(id, topic string) bool {
	return strings.HasPrefix(topic, "$iothub/methods/") ||
		strings.HasPrefix(topic, "$iothub/twin/") ||
		deviceTopic(id, topic)
}

// revoked disconnects cl if its device was disabled or deleted since it
// connected, as IoT Hub does, and reports whether it did.
func (b *broker) revoked(cl *mqtt.Client) bool {
	d, err := b.s.store.Device(cl.ID)
	var reason string
	switch {
	case errors.Is(err, errStoreNotFound):
		reason = "device deleted"
	case err == nil && d.Status != "" && !strings.EqualFold(d.Status, "enabled"):
		reason = "device disabled"
	default:
		return false
	}
	b.log.Info().Str("device", cl.ID).Str("reason", reason).Msg("disconnecting device")
	cl.Stop(errRevoked)
	return true
}

var errRevoked = errors.New("hub: device disabled or deleted")

// Revoke disconnects the device if it is connected although the registry no
// longer allows it (hubapi.Devices).
func (b *broker) Revoke(id string) {
	if cl, ok := b.current(id); ok {
		b.revoked(cl)
	}
}
