"""An X.509 device on the official Python SDKs: it registers the device with
azure-iot-hub (--register ca: create_device_with_certificate_authority;
--register thumbprint: create_device_with_x509 with --thumbprint), connects
with IoTHubDeviceClient.create_from_x509_certificate, patches the reported
property {"x509Check": <device id>} and reads the service twin back.

Environment: IOTHUB_CONNECTION_STRING (the hub's owner connection string,
HostName without a port), IOTHUB_CA_FILE (the hub's TLS CA). It prints one
JSON line: {"ok": true, "reported": {...}} or {"ok": false, "error": "..."}
(exit 1). No key or token is printed.
"""

import argparse
import json
import os
import sys

from azure.iot.device import IoTHubDeviceClient, X509
from azure.iot.hub import IoTHubRegistryManager


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--register", choices=("ca", "thumbprint"), required=True)
    ap.add_argument("--thumbprint")
    args = ap.parse_args()

    service_cs = os.environ["IOTHUB_CONNECTION_STRING"]
    hostname = dict(p.split("=", 1) for p in service_cs.split(";"))["HostName"]
    with open(os.environ["IOTHUB_CA_FILE"]) as f:
        ca_pem = f.read()

    registry = IoTHubRegistryManager(service_cs)
    if args.register == "ca":
        created = registry.create_device_with_certificate_authority(args.device, "enabled")
        assert created.authentication.type == "certificateAuthority", created.authentication.type
    else:
        created = registry.create_device_with_x509(args.device, args.thumbprint, None, "enabled")
        assert created.authentication.type == "selfSigned", created.authentication.type

    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(args.cert, args.key),
        hostname=hostname,
        device_id=args.device,
        server_verification_cert=ca_pem,
        connection_retry=False,
    )
    try:
        client.connect()
        client.patch_twin_reported_properties({"x509Check": args.device})
        reported = client.get_twin()["reported"]
        assert reported.get("x509Check") == args.device, reported
    finally:
        client.shutdown()
    twin = registry.get_twin(args.device)
    reported = {k: v for k, v in twin.properties.reported.items() if not k.startswith("$")}
    print(json.dumps({"ok": True, "reported": reported}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # reported as data for the Go test
        print(json.dumps({"ok": False, "error": "%s: %s" % (type(e).__name__, e)}), flush=True)
        sys.exit(1)
