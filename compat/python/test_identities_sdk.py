"""Module identities, X.509 devices and bulk registry operations with the
official Python SDKs: azure-iot-hub (IoTHubRegistryManager) and
azure-iot-device (IoTHubModuleClient, IoTHubDeviceClient with X509)."""

import os
import time
import uuid

import pytest
from msrest.exceptions import HttpOperationError

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, MethodResponse, X509
from azure.iot.device.common.pipeline.pipeline_exceptions import PipelineNotRunning
from azure.iot.hub.models import (
    AuthenticationMechanism,
    CloudToDeviceMethod,
    ExportImportDevice,
    SymmetricKey,
    Twin,
    TwinProperties,
)

from conftest import WAIT, Waiter, new_key


def status_of(excinfo):
    return excinfo.value.response.status_code


@pytest.fixture
def shutdown_later():
    clients = []
    yield clients.append
    for client in clients:
        try:
            client.shutdown()
        except PipelineNotRunning:
            pass


def wait_module_answers(registry, device_id, module_id, payload):
    """Invokes echo until the module answers: the SDK subscribes to methods
    after the handler is set, asynchronously."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return registry.invoke_device_module_method(
                device_id,
                module_id,
                CloudToDeviceMethod(method_name="echo", payload=payload, response_timeout_in_seconds=5),
            )
        except HttpOperationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_module_identity_twin_and_method(registry, device, hostname, ca_pem, shutdown_later):
    module_id = "py-module"
    key = new_key()
    created = registry.create_module_with_sas(device["id"], module_id, "compat", key, new_key())
    assert created.module_id == module_id
    assert created.device_id == device["id"]
    assert created.managed_by == "compat"
    assert created.authentication.symmetric_key.primary_key == key
    assert created.etag

    with pytest.raises(HttpOperationError) as taken:
        registry.create_module_with_sas(device["id"], module_id, None, new_key(), new_key())
    assert status_of(taken) == 409

    got = registry.get_module(device["id"], module_id)
    assert got.module_id == module_id and got.connection_state == "Disconnected"
    assert [m.module_id for m in registry.get_modules(device["id"])] == [module_id]

    twin = registry.get_module_twin(device["id"], module_id)
    assert twin.device_id == device["id"] and twin.module_id == module_id
    patched = registry.update_module_twin(
        device["id"], module_id, Twin(properties=TwinProperties(desired={"level": 2})), twin.etag
    )
    assert patched.properties.desired["level"] == 2

    cs = "HostName=%s;DeviceId=%s;ModuleId=%s;SharedAccessKey=%s" % (hostname, device["id"], module_id, key)
    client = IoTHubModuleClient.create_from_connection_string(
        cs, server_verification_cert=ca_pem, connection_retry=False
    )
    shutdown_later(client)
    client.connect()
    calls = Waiter()

    def handler(request):
        calls.put((request.name, request.payload))
        client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"module": module_id, "echo": request.payload})
        )

    client.on_method_request_received = handler
    result = wait_module_answers(registry, device["id"], module_id, {"n": 1})
    assert result.status == 200
    assert result.payload == {"module": module_id, "echo": {"n": 1}}
    calls.wait_for("echo call on the module", lambda c: c[0] == "echo")
    assert registry.get_module(device["id"], module_id).connection_state == "Connected"

    client.patch_twin_reported_properties({"moduleFirmware": "2.0"})
    assert client.get_twin()["desired"]["level"] == 2
    assert registry.get_module_twin(device["id"], module_id).properties.reported["moduleFirmware"] == "2.0"
    # The device's own twin is another twin.
    assert "moduleFirmware" not in registry.get_twin(device["id"]).properties.reported

    client.shutdown()
    registry.delete_module(device["id"], module_id)
    with pytest.raises(HttpOperationError) as gone:
        registry.get_module(device["id"], module_id)
    assert status_of(gone) == 404


def test_x509_self_signed_device(registry, hostname, ca_pem, shutdown_later):
    device_id = os.environ["X509_DEVICE_ID"]
    created = registry.create_device_with_x509(device_id, os.environ["X509_THUMBPRINT"], None, "enabled")
    try:
        assert created.authentication.type == "selfSigned"
        assert created.authentication.x509_thumbprint.primary_thumbprint == os.environ["X509_THUMBPRINT"]
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(os.environ["X509_CERT_FILE"], os.environ["X509_KEY_FILE"]),
            hostname=hostname,
            device_id=device_id,
            server_verification_cert=ca_pem,
            connection_retry=False,
        )
        shutdown_later(client)
        client.connect()
        client.patch_twin_reported_properties({"x509": "python"})
        assert client.get_twin()["reported"]["x509"] == "python"
        assert registry.get_twin(device_id).properties.reported["x509"] == "python"
        client.shutdown()
    finally:
        registry.delete_device(device_id)


def test_x509_module(registry, device, hostname, ca_pem, shutdown_later):
    module_id = "py-x509-module"
    created = registry.create_module_with_x509(
        device["id"], module_id, None, os.environ["X509_MODULE_THUMBPRINT"], None
    )
    assert created.authentication.type == "selfSigned"
    client = IoTHubModuleClient.create_from_x509_certificate(
        x509=X509(os.environ["X509_MODULE_CERT_FILE"], os.environ["X509_MODULE_KEY_FILE"]),
        hostname=hostname,
        device_id=device["id"],
        module_id=module_id,
        server_verification_cert=ca_pem,
        connection_retry=False,
    )
    shutdown_later(client)
    client.connect()
    client.patch_twin_reported_properties({"x509Module": True})
    assert registry.get_module_twin(device["id"], module_id).properties.reported["x509Module"] is True
    client.shutdown()


def sas_auth():
    return AuthenticationMechanism(
        type="sas", symmetric_key=SymmetricKey(primary_key=new_key(), secondary_key=new_key())
    )


def test_bulk_create_update_delete(registry):
    tag = uuid.uuid4().hex[:8]
    ids = ["py-bulk-%s-%d" % (tag, i) for i in range(3)]
    result = registry.bulk_create_or_update_devices(
        [ExportImportDevice(id=i, import_mode="create", status="enabled", authentication=sas_auth()) for i in ids]
    )
    try:
        assert result.is_successful is True, result.errors
        assert result.errors == []
        assert [registry.get_device(i).status for i in ids] == ["enabled"] * 3

        # A duplicate create fails for that device alone, with IoT Hub's code.
        fresh = "py-bulk-%s-3" % tag
        ids.append(fresh)
        dup = registry.bulk_create_or_update_devices(
            [
                ExportImportDevice(id=ids[0], import_mode="create", authentication=sas_auth()),
                ExportImportDevice(id=fresh, import_mode="create", authentication=sas_auth()),
            ]
        )
        assert dup.is_successful is False
        assert [(e.device_id, e.error_code) for e in dup.errors] == [(ids[0], "DeviceAlreadyExists")]
        assert dup.errors[0].error_status

        etag = registry.get_device(ids[1]).etag
        updated = registry.bulk_create_or_update_devices(
            [
                ExportImportDevice(id=ids[0], import_mode="update", status="disabled", authentication=sas_auth()),
                ExportImportDevice(
                    id=ids[1], import_mode="updateIfMatchETag", e_tag=etag, status="disabled", authentication=sas_auth()
                ),
            ]
        )
        assert updated.is_successful is True, updated.errors
        assert [registry.get_device(i).status for i in ids[:2]] == ["disabled", "disabled"]

        stale = registry.bulk_create_or_update_devices(
            [ExportImportDevice(id=ids[1], import_mode="updateIfMatchETag", e_tag=etag, status="enabled", authentication=sas_auth())]
        )
        assert stale.is_successful is False
        assert [e.device_id for e in stale.errors] == [ids[1]]
        assert registry.get_device(ids[1]).status == "disabled"

        deleted = registry.bulk_create_or_update_devices([ExportImportDevice(id=i, import_mode="delete") for i in ids])
        assert deleted.is_successful is True, deleted.errors
        for i in ids:
            with pytest.raises(HttpOperationError) as gone:
                registry.get_device(i)
            assert status_of(gone) == 404
    finally:
        for i in ids:
            try:
                registry.delete_device(i)
            except HttpOperationError:
                pass
