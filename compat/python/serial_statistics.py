"""Registry and service statistics with azure-iot-hub. The counts are the
whole hub's, so compat/python_test.go runs this file on its own, while no
other test changes the registry or connects devices (pytest collects it
only when named: it does not match test_*.py)."""

import time
import uuid

from azure.iot.device import IoTHubDeviceClient
from azure.iot.hub.models import AuthenticationMechanism, ExportImportDevice, SymmetricKey

from conftest import WAIT, new_key


def registry_counts(registry):
    s = registry.get_device_registry_statistics()
    return (s.total_device_count, s.enabled_device_count, s.disabled_device_count)


def wait_connected_count(registry, want):
    deadline = time.monotonic() + WAIT
    while True:
        got = registry.get_service_statistics().connected_device_count
        if got == want:
            return
        assert time.monotonic() < deadline, "connectedDeviceCount stayed %s, want %s" % (got, want)
        time.sleep(0.1)


def test_device_registry_statistics(registry):
    devices = registry.get_devices(max_number_of_devices=1000)
    enabled = sum(1 for d in devices if d.status == "enabled")
    assert registry_counts(registry) == (len(devices), enabled, len(devices) - enabled)

    tag = uuid.uuid4().hex[:8]
    ids = ["py-stats-%s-%d" % (tag, i) for i in range(3)]
    before = registry_counts(registry)
    auth = AuthenticationMechanism(type="sas", symmetric_key=SymmetricKey(primary_key=new_key(), secondary_key=new_key()))
    result = registry.bulk_create_or_update_devices(
        [
            ExportImportDevice(id=i, import_mode="create", status="disabled" if n == 2 else "enabled", authentication=auth)
            for n, i in enumerate(ids)
        ]
    )
    assert result.is_successful is True, result.errors
    try:
        assert registry_counts(registry) == (before[0] + 3, before[1] + 2, before[2] + 1)
    finally:
        registry.bulk_create_or_update_devices([ExportImportDevice(id=i, import_mode="delete") for i in ids])
    assert registry_counts(registry) == before


def test_service_statistics_count_a_connected_device(registry, device, ca_pem):
    before = registry.get_service_statistics().connected_device_count
    client = IoTHubDeviceClient.create_from_connection_string(
        device["cs"], server_verification_cert=ca_pem, connection_retry=False
    )
    try:
        client.connect()
        wait_connected_count(registry, before + 1)
    finally:
        client.shutdown()
    wait_connected_count(registry, before)
