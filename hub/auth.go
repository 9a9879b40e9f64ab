package hub

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// Identities: the broker keys every connection by its MQTT client id, which
// is the store key of the identity: "{deviceId}" for a device,
// "{deviceId}/{moduleId}" for a module (a device id never holds '/').

// splitKey returns the device and module id of an identity key; mod is ""
// for a device.
func splitKey(key string) (dev, mod string) {
	dev, mod, _ = strings.Cut(key, "/")
	return dev, mod
}

// ident adds the identity of key to a log event: "device", and "module"
// for a module.
func ident(key string) func(*zerolog.Event) {
	return func(e *zerolog.Event) {
		dev, mod := splitKey(key)
		e.Str("device", dev)
		if mod != "" {
			e.Str("module", mod)
		}
	}
}

// kind is "device" or "module", for log messages.
func kind(key string) string {
	if _, mod := splitKey(key); mod != "" {
		return "module"
	}
	return "device"
}

// describe names an identity in error messages: `device "d1"` or
// `module "m1" of device "d1"`.
func describe(key string) string {
	dev, mod := splitKey(key)
	if mod == "" {
		return fmt.Sprintf("device %q", dev)
	}
	return fmt.Sprintf("module %q of device %q", mod, dev)
}

// grant is what a successful CONNECT authentication yields.
type grant struct {
	// until is when the credential ends (SAS expiry, certificate
	// notAfter); the hub disconnects the client then.
	until time.Time
	// credential names what was presented, for the log ("SAS token",
	// "certificate").
	credential string
	// modelID is the IoT Plug and Play model the client announced in its
	// username ("" for none).
	modelID string
}

// authenticate checks a CONNECT against the registry: the username must
// name this hub (one of its hosts, port ignored), client id and username
// must name the same device or module, its device must exist and
// be enabled, and the credential must be the one its authentication type
// asks for: a SAS token in the password (sas), or no password and a TLS
// client certificate (selfSigned, certificateAuthority). Every refusal is
// CONNACK 5 (not authorized). The error text is safe to log.
func (b *broker) authenticate(cl *mqtt.Client, pk packets.Packet) (grant, error) {
	username := string(pk.Connect.Username)
	if !validText(username) {
		return grant{}, errors.New("username is not valid UTF-8 or holds NUL")
	}
	host, dev, mod, ok := iothub.ParseUsername(username)
	if !ok {
		return grant{}, errors.New("malformed username")
	}
	if !b.s.answersTo(host) {
		return grant{}, fmt.Errorf("username names host %q, which is not this hub", host)
	}
	key := iothub.ClientID(dev, mod)
	if key != cl.ID {
		return grant{}, fmt.Errorf("username names %q but the client id is %q", key, cl.ID)
	}
	auth, err := b.registered(dev, mod)
	if err != nil {
		return grant{}, err
	}
	g := grant{modelID: iothub.UsernameModelID(username)}
	password := pk.Connect.PasswordFlag && len(pk.Connect.Password) > 0
	switch auth.Type {
	case iothub.AuthSAS:
		if !password {
			return grant{}, errors.New("no SAS token in password")
		}
		if auth.SymmetricKey == nil {
			return grant{}, errors.New("identity has no symmetric keys")
		}
		// The audience is compared with the names the hub answers to,
		// never with what the client asked for (its TLS server name).
		hosts := b.s.hosts()
		path := "devices/" + dev
		if mod != "" {
			path += "/modules/" + mod
		}
		keys := auth.SymmetricKey
		tok, err := sas.Verify(string(pk.Connect.Password),
			sas.Audience{Hosts: hosts, Path: path},
			b.s.now(), keys.PrimaryKey, keys.SecondaryKey)
		if err != nil {
			return grant{}, err
		}
		g.until, g.credential = tok.Expiry, "SAS token"
	case iothub.AuthSelfSigned, iothub.AuthCertificateAuthority:
		if password {
			return grant{}, fmt.Errorf("identity authenticates with an X.509 certificate (%s), not with a password", auth.Type)
		}
		until, err := b.s.verifyClientCert(auth, dev, mod, peerCertificates(cl))
		if err != nil {
			return grant{}, err
		}
		g.until, g.credential = until, "certificate"
	default:
		return grant{}, fmt.Errorf("identity has authentication type %q, which cannot connect", auth.Type)
	}
	return g, nil
}

// registered returns the authentication of a device (mod "") or module,
// provided the identity exists and its device is enabled.
func (b *broker) registered(dev, mod string) (*iothub.Authentication, error) {
	d, err := b.s.store.Device(dev)
	if err != nil {
		if errors.Is(err, errStoreNotFound) {
			return nil, errors.New("unknown device")
		}
		return nil, fmt.Errorf("registry: %w", err)
	}
	if !enabled(d.Status) {
		return nil, errors.New("device is disabled")
	}
	auth := d.Authentication
	if mod != "" {
		m, err := b.s.store.Module(dev, mod)
		if err != nil {
			if errors.Is(err, store.ErrModuleNotFound) {
				return nil, errors.New("unknown module")
			}
			return nil, fmt.Errorf("registry: %w", err)
		}
		auth = m.Authentication
	}
	if auth == nil {
		return nil, errors.New("identity has no authentication")
	}
	return auth, nil
}

// answersTo reports whether host (with or without a port) is one of the
// names the hub answers to (hosts), ignoring case.
func (s *Server) answersTo(host string) bool {
	host = bareHost(host)
	for _, h := range s.hosts() {
		if strings.EqualFold(bareHost(h), host) {
			return true
		}
	}
	return false
}

// bareHost drops a port and IPv6 brackets: "[::1]:8883" -> "::1".
func bareHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

func enabled(status string) bool {
	return status == "" || strings.EqualFold(status, "enabled")
}

// ownSpace is the topic space of an identity: "devices/{id}/" for a
// device, "devices/{id}/modules/{mid}/" for a module.
func ownSpace(key string) string {
	dev, mod := splitKey(key)
	if mod == "" {
		return "devices/" + dev + "/"
	}
	return "devices/" + dev + "/modules/" + mod + "/"
}

// allowed is the ACL for publishes and subscriptions alike: an identity may
// use IoT Hub's method and twin topics (the hub binds them to its own twin
// and calls) and its own topic space. A device's space excludes its
// modules' ("devices/{id}/modules/..."); a module has only its own.
// Wildcards inside the own space are harmless: the hub delivers to a
// connection only what is meant for its identity.
func allowed(key, topic string) bool {
	if strings.HasPrefix(topic, "$iothub/methods/") || strings.HasPrefix(topic, "$iothub/twin/") {
		return true
	}
	space := ownSpace(key)
	if !strings.HasPrefix(topic, space) {
		return false
	}
	_, mod := splitKey(key)
	return mod != "" || !strings.HasPrefix(topic, space+"modules/")
}

// isTelemetry reports whether topic is the identity's device-to-cloud
// topic: "{space}messages/events/" with optional properties.
func isTelemetry(key, topic string) bool {
	rest, ok := cutSpace(key, topic)
	return ok && (rest == "messages/events" || strings.HasPrefix(rest, "messages/events/"))
}

// cutSpace is strings.CutPrefix(topic, ownSpace(key)) without building the
// space: it runs several times on every publish.
func cutSpace(key, topic string) (string, bool) {
	dev, mod := splitKey(key)
	rest, ok := strings.CutPrefix(topic, "devices/")
	if ok {
		rest, ok = strings.CutPrefix(rest, dev)
	}
	if ok && mod != "" {
		if rest, ok = strings.CutPrefix(rest, "/modules/"); ok {
			rest, ok = strings.CutPrefix(rest, mod)
		}
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, "/")
	}
	if !ok {
		return topic, false
	}
	return rest, true
}

// revocation says why the identity key may no longer be connected, or ""
// if it may. Store errors other than not-found leave it connected.
func (b *broker) revocation(key string) string {
	dev, mod := splitKey(key)
	status, err := b.s.store.DeviceStatus(dev)
	switch {
	case errors.Is(err, errStoreNotFound):
		return "device deleted"
	case err == nil && !enabled(status):
		return "device disabled"
	case err != nil || mod == "":
		return ""
	}
	if _, err := b.s.store.Module(dev, mod); errors.Is(err, store.ErrModuleNotFound) {
		return "module deleted"
	}
	return ""
}

// revoked disconnects cl if its identity was deleted, or its device
// disabled, since it connected, as IoT Hub does, and reports whether it
// did.
func (b *broker) revoked(cl *mqtt.Client) bool {
	reason := b.revocation(cl.ID)
	if reason == "" {
		return false
	}
	b.log.Info().Func(ident(cl.ID)).Str("reason", reason).Msg("disconnecting " + kind(cl.ID))
	cl.Stop(fmt.Errorf("%w: %s", errRevoked, reason)) // the reason becomes the Disconnected event's
	return true
}

var errRevoked = errors.New("hub: identity disabled or deleted")

// Revoke disconnects the identity (a device id or a module key
// "{deviceId}/{moduleId}") if it is connected although the registry no
// longer allows it (hubapi.Devices). For a device id it also checks every
// connected module of that device, so that deleting or disabling a device
// disconnects its modules.
func (b *broker) Revoke(id string) {
	for _, cl := range b.clientsOf(id) {
		b.revoked(cl)
	}
}

// clientsOf returns the live client of key and, when key is a device id,
// the live clients of its modules.
func (b *broker) clientsOf(key string) []*mqtt.Client {
	_, mod := splitKey(key)
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*mqtt.Client
	for k, sess := range b.sessions {
		if k != key && (mod != "" || !strings.HasPrefix(k, key+"/")) {
			continue
		}
		if sess.live && !sess.cl.Closed() {
			out = append(out, sess.cl)
		}
	}
	return out
}
