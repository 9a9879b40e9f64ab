"""A service app that does what the tutorial's service does, with the
official azure-iot-hub SDK: IoTHubRegistryManager(connection string),
invoke_device_method with a CloudToDeviceMethod whose payload is a JSON text
(as the tutorial sends it), then get_twin(...).properties.reported until
rebootTime changes.

Usage: tutorial_service.py DEVICE_ID. Environment: IOTHUB_CONNECTION_STRING,
REQUESTS_CA_BUNDLE (the hub's CA), WAIT_SECONDS (default 60).
It prints JSON lines: the method's answer, then the new rebootTime. Exit 0
when the new rebootTime showed up, 1 otherwise.
"""

import json
import os
import sys
import time

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod


def say(event, **fields):
    print(json.dumps(dict(event=event, **fields)), flush=True)


def main():
    device_id = sys.argv[1]
    registry = IoTHubRegistryManager(os.environ["IOTHUB_CONNECTION_STRING"])
    before = registry.get_twin(device_id).properties.reported.get("rebootTime")
    say("baseline", rebootTime=before)

    method = CloudToDeviceMethod(method_name="rebootDevice", payload='{"method_number":"42"}')
    answer = registry.invoke_device_method(device_id, method)
    say("invoked", status=answer.status, payload=answer.payload)

    deadline = time.monotonic() + float(os.environ.get("WAIT_SECONDS", "60"))
    while time.monotonic() < deadline:
        now = registry.get_twin(device_id).properties.reported.get("rebootTime")
        if now is not None and now != before:
            say("rebooted", rebootTime=now)
            return 0
        time.sleep(0.5)
    say("timeout", rebootTime=before)
    return 1


if __name__ == "__main__":
    sys.exit(main())
