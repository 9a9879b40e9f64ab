package hub

import (
	"bytes"
	"unicode/utf8"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/internal/iothub"
	mqtt "github.com/mochi-mqtt/server/v2"
)

func (b *broker) twinGet(cl *mqtt.Client, rid string) {
	body, err := b.s.store.DeviceTwin(cl.ID)
	if err != nil {
		b.twinError(cl, rid, err)
		return
	}
	b.reply(cl, iothub.TwinResponseTopic(200, rid, 0), body)
}

func (b *broker) twinPatch(cl *mqtt.Client, rid string, body []byte) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' || !jsonValid(trimmed) {
		b.reply(cl, iothub.TwinResponseTopic(400, rid, 0),
			twinErrorBody(iothub.CodeArgumentInvalid, "reported properties must be a JSON object"))
		return
	}
	// JSON is UTF-8 (RFC 8259): invalid bytes are refused, not stored
	// as U+FFFD.
	if !utf8.Valid(trimmed) {
		b.reply(cl, iothub.TwinResponseTopic(400, rid, 0),
			twinErrorBody(iothub.CodeArgumentInvalid, "reported properties are not valid UTF-8"))
		return
	}
	version, err := b.s.store.PatchReported(cl.ID, trimmed)
	if err != nil {
		b.twinError(cl, rid, err)
		return
	}
	e := events.Event{Kind: events.ReportedPatch, Version: version}
	e.SetBody(trimmed)
	b.record(cl.ID, e) // before the answer: a device that has its 204 finds the event
	b.reply(cl, iothub.TwinResponseTopic(204, rid, version), nil)
}

// twinError answers a twin request with IoT Hub's error code in the body
// (the Node SDK ignores the status in the topic and looks for errorCode).
func (b *broker) twinError(cl *mqtt.Client, rid string, err error) {
	code, msg := storeErrorCode(err)
	if code == iothub.CodeServerError {
		b.log.Error().Err(err).Func(ident(cl.ID)).Msg("twin request failed")
	}
	b.reply(cl, iothub.TwinResponseTopic(iothub.HTTPStatus(code), rid, 0), twinErrorBody(code, msg))
}

func (b *broker) reply(cl *mqtt.Client, topic string, body []byte) {
	ok, err := b.send(cl, topic, body)
	switch {
	case err != nil:
		b.log.Debug().Err(err).Func(ident(cl.ID)).Msg("write twin response")
	case !ok:
		b.log.Debug().Func(ident(cl.ID)).Str("topic", topic).Msg("twin response dropped: client is not subscribed")
	}
}
