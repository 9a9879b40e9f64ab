"""azure-iot-device (IoTHubDeviceClient) against the hub."""

import time

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse
from azure.iot.device.common.pipeline.pipeline_exceptions import PipelineNotRunning
from azure.iot.device.exceptions import ConnectionFailedError, CredentialError
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from conftest import WAIT, Waiter, new_key


def answer_methods(client, calls):
    """Answers every direct method with 200 and {"echo": <payload>}."""

    def handler(request):
        calls.put((request.name, request.payload))
        client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"echo": request.payload})
        )

    client.on_method_request_received = handler


def wait_subscribed(registry, device_id, method="ping"):
    """Invokes until the device answers: the SDK subscribes to methods after
    the handler is set, asynchronously."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return registry.invoke_device_method(
                device_id,
                CloudToDeviceMethod(method_name=method, payload={"n": 1}, response_timeout_in_seconds=5),
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def connect(ca_pem):
    clients = []

    def make(cs, **kwargs):
        client = IoTHubDeviceClient.create_from_connection_string(
            cs, server_verification_cert=ca_pem, connection_retry=False, **kwargs
        )
        clients.append(client)
        client.connect()
        return client

    yield make
    for client in clients:
        try:
            client.shutdown()
        except PipelineNotRunning:
            pass  # the test shut it down itself


def test_methods_twin_and_desired(registry, device, connect):
    client = connect(device["cs"])
    deadline = time.monotonic() + WAIT
    while registry.get_device(device["id"]).connection_state != "Connected":
        assert time.monotonic() < deadline, "the hub does not show the device connected"
        time.sleep(0.1)

    calls = Waiter()
    answer_methods(client, calls)
    result = wait_subscribed(registry, device["id"])
    assert result.status == 200
    assert result.payload == {"echo": {"n": 1}}
    calls.wait_for("ping call", lambda c: c[0] == "ping")

    client.patch_twin_reported_properties({"firmware": "1.2.3"})
    twin = client.get_twin()
    assert twin["reported"]["firmware"] == "1.2.3"
    assert registry.get_twin(device["id"]).properties.reported["firmware"] == "1.2.3"

    patches = Waiter()
    client.on_twin_desired_properties_patch_received = patches.put
    # The SDK subscribes when the handler is set; repeat the write until a
    # notification arrives.
    deadline = time.monotonic() + WAIT
    n = 0
    while not patches.items and time.monotonic() < deadline:
        n += 1
        registry.update_twin(device["id"], Twin(properties=TwinProperties(desired={"interval": n})), "*")
        time.sleep(0.3)
    patch = patches.wait_for("desired-properties patch")
    assert "interval" in patch and "$version" in patch

    client.send_message(Message('{"temperature": 21.5}', content_encoding="utf-8", content_type="application/json"))
    tagged = Message("hello")
    tagged.custom_properties["alert"] = "high"
    tagged.message_id = "m-1"
    client.send_message(tagged)

    client.shutdown()
    deadline = time.monotonic() + WAIT
    while registry.get_device(device["id"]).connection_state != "Disconnected":
        assert time.monotonic() < deadline, "the hub still shows the device connected after shutdown"
        time.sleep(0.1)


def test_websockets(registry, device, connect):
    client = connect(device["cs"], websockets=True)
    calls = Waiter()
    answer_methods(client, calls)
    assert wait_subscribed(registry, device["id"]).status == 200
    assert client.get_twin()["desired"]["$version"] >= 1


def test_token_renewal(registry, device, connect):
    # The SDK renews 120 s before expiry: a 125 s token is renewed after 5 s.
    client = connect(device["cs"], sastoken_ttl=125)
    states = Waiter()
    client.on_connection_state_change = lambda: states.put(client.connected)
    calls = Waiter()
    answer_methods(client, calls)
    assert wait_subscribed(registry, device["id"]).status == 200
    states.wait_for("a reconnect with a renewed token", lambda connected: connected, timeout=30)
    assert wait_subscribed(registry, device["id"], "after-renewal").status == 200


def test_wrong_key_is_refused(device, ca_pem):
    bad = "HostName=%s;DeviceId=%s;SharedAccessKey=%s" % (
        device["cs"].split(";")[0].split("=", 1)[1],
        device["id"],
        new_key(),
    )
    client = IoTHubDeviceClient.create_from_connection_string(
        bad, server_verification_cert=ca_pem, connection_retry=False
    )
    try:
        with pytest.raises((CredentialError, ConnectionFailedError)):
            client.connect()
    finally:
        client.shutdown()
