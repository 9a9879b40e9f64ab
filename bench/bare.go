package main

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// bareBroker measures (b3): a request and a response as raw QoS 0 MQTT
// publishes between two paho clients through a bare mochi-mqtt broker (the
// library the hub embeds) over TLS with the hub's certificate, no hooks but
// allow-all auth. Four TLS hops, like the direct-method path.
func (p *inproc) bareBroker(ctx context.Context) {
	cfg := p.cfg
	row := latencyRow{Key: "b3", Path: "(b3) broker library alone: request + response as raw QoS 0 publishes between two paho clients via a bare mochi-mqtt broker (TLS, same certificate)"}
	defer func() { p.res.Latency = append(p.res.Latency, row) }()
	cfg.progress("latency (b3): bare mochi-mqtt broker, %d round trips", cfg.Calls)
	err := func() error {
		cert, err := tls.LoadX509KeyPair(filepath.Join(p.dir, "server.pem"), filepath.Join(p.dir, "server-key.pem"))
		if err != nil {
			return err
		}
		caps := mochi.NewDefaultServerCapabilities()
		caps.MaximumQos = 1
		srv := mochi.New(&mochi.Options{
			Capabilities:             caps,
			ClientNetReadBufferSize:  1024,
			ClientNetWriteBufferSize: 1024,
			Logger:                   slog.New(slog.DiscardHandler),
		})
		if err := srv.AddHook(new(allowAll), nil); err != nil {
			return err
		}
		ln := listeners.NewTCP(listeners.Config{ID: "bench", Address: "127.0.0.1:0",
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
		if err := srv.AddListener(ln); err != nil {
			return err
		}
		if err := srv.Serve(); err != nil {
			return err
		}
		defer srv.Close()
		addr := ln.Address()

		connect := func(id string) (paho.Client, error) {
			opts := paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(id).
				SetTLSConfig(&tls.Config{RootCAs: p.h.CAPool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}).
				SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false)
			c := paho.NewClient(opts)
			if err := waitToken(c.Connect()); err != nil {
				return nil, err
			}
			return c, nil
		}
		responder, err := connect("responder")
		if err != nil {
			return err
		}
		defer responder.Disconnect(0)
		requester, err := connect("requester")
		if err != nil {
			return err
		}
		defer requester.Disconnect(0)
		if err := waitToken(responder.Subscribe("bench/req", 0, func(c paho.Client, m paho.Message) {
			c.Publish("bench/res", 0, false, m.Payload())
		})); err != nil {
			return err
		}
		got := make(chan struct{}, 1)
		if err := waitToken(requester.Subscribe("bench/res", 0, func(paho.Client, paho.Message) {
			select {
			case got <- struct{}{}:
			default:
			}
		})); err != nil {
			return err
		}
		d, err := sample(cfg.Warmup, cfg.Calls, func() error {
			if err := waitToken(requester.Publish("bench/req", 0, false, []byte(benchPayload))); err != nil {
				return err
			}
			select {
			case <-got:
				return nil
			case <-time.After(5 * time.Second):
				return errors.New("no response within 5 s")
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		row.summary = summarize(d)
		return err
	}()
	if err != nil {
		row.Err = err.Error()
	}
}

// allowAll lets every client connect, publish and subscribe.
type allowAll struct{ mochi.HookBase }

func (allowAll) ID() string { return "allow-all" }

func (allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }
