"""A device app that does what the tutorial's device does, with the
official azure-iot-device SDK: a thread blocked in
receive_method_request("rebootDevice"), a sleep for the reboot, then
patch_twin_reported_properties({"rebootTime": str(datetime.now())}) and only
then send_method_response.

Environment: IOTHUB_DEVICE_CONNECTION_STRING, IOTHUB_CA_FILE (the hub's CA,
passed as server_verification_cert), REBOOT_SECONDS (default 20).
It prints one JSON line per step on stdout (the Go test follows them) and
runs until its standard input closes. Before its listener thread starts it
makes one non-blocking receive_method_request call: the SDK subscribes to
direct methods on the first receive, and the test waits for that.
"""

import datetime
import json
import os
import sys
import threading
import time

from azure.iot.device import IoTHubDeviceClient, MethodResponse


def say(event, **fields):
    print(json.dumps(dict(event=event, **fields)), flush=True)


def serve_reboots(client, reboot_seconds):
    while True:
        request = client.receive_method_request("rebootDevice")
        say("method", name=request.name, payload=request.payload)
        time.sleep(reboot_seconds)
        reboot_time = str(datetime.datetime.now())
        client.patch_twin_reported_properties({"rebootTime": reboot_time})
        say("reported", rebootTime=reboot_time)
        client.send_method_response(
            MethodResponse(request.request_id, 200, {"Response": "rebooted at " + reboot_time})
        )
        say("answered", rebootTime=reboot_time)


def main():
    with open(os.environ["IOTHUB_CA_FILE"]) as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], server_verification_cert=ca
    )
    client.connect()
    # A non-blocking receive subscribes to direct methods and returns once
    # the hub has acknowledged, so "listening" means a call would arrive.
    client.receive_method_request("rebootDevice", block=False)
    say("listening")
    worker = threading.Thread(
        target=serve_reboots,
        args=(client, float(os.environ.get("REBOOT_SECONDS", "20"))),
        daemon=True,
    )
    worker.start()
    sys.stdin.read()
    client.shutdown()
    say("closed")


if __name__ == "__main__":
    main()
