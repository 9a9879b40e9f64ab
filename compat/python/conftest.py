"""Shared fixtures for the Python SDK tests. compat/python_test.go runs
pytest with the hub's owner connection string in IOTHUB_CONNECTION_STRING
(HostName without a port: the SDKs use 8883 and 443), the hub's CA in
IOTHUB_CA_FILE and REQUESTS_CA_BUNDLE, and a prefix for device ids in
DEVICE_PREFIX."""

import base64
import os
import secrets
import threading

import pytest
from azure.iot.hub import IoTHubRegistryManager

WAIT = 15  # seconds any single wait in these tests may take


def new_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Waiter:
    """Collects values that SDK callbacks hand over from their threads."""

    def __init__(self):
        self._cond = threading.Condition()
        self.items = []

    def put(self, item):
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, what, pred=lambda item: True, timeout=WAIT):
        with self._cond:
            ok = self._cond.wait_for(lambda: any(pred(i) for i in self.items), timeout)
        assert ok, "no %s within %ss (got %r)" % (what, timeout, self.items)
        return next(i for i in self.items if pred(i))


@pytest.fixture(scope="session")
def service_cs():
    return os.environ["IOTHUB_CONNECTION_STRING"]


@pytest.fixture(scope="session")
def hostname(service_cs):
    fields = dict(part.split("=", 1) for part in service_cs.split(";"))
    return fields["HostName"]


@pytest.fixture(scope="session")
def ca_pem():
    with open(os.environ["IOTHUB_CA_FILE"]) as f:
        return f.read()


@pytest.fixture(scope="session")
def registry(service_cs):
    return IoTHubRegistryManager(service_cs)


@pytest.fixture
def device(registry, hostname, request):
    """A device registered for one test (deleted after it): its id, primary
    key and device connection string."""
    name = request.node.name.replace("_", "-").lower()
    device_id = "%s-%s" % (os.environ.get("DEVICE_PREFIX", "py"), name)
    key = new_key()
    registry.create_device_with_sas(device_id, key, new_key(), "enabled")
    cs = "HostName=%s;DeviceId=%s;SharedAccessKey=%s" % (hostname, device_id, key)
    yield {"id": device_id, "key": key, "cs": cs}
    try:
        registry.delete_device(device_id)
    except Exception:
        pass
