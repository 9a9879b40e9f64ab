#!/bin/sh
# CI smoke check: start a local IoT Hub and a simulated device, reboot the
# device with the rebootDevice direct method and confirm the new rebootTime
# in its twin. Exits with dmctl's exit code (0: rebooted and confirmed).
set -eu
work="$(mktemp -d)"
hub_pid="" device_pid=""
cleanup() {
  [ -z "$device_pid" ] || kill "$device_pid" 2>/dev/null || true
  [ -z "$hub_pid" ] || kill "$hub_pid" 2>/dev/null || true
  wait
  rm -rf "$work"
}
trap cleanup EXIT

dmctl hub serve --data "$work/hub" --listen 127.0.0.1:0 --ready-file "$work/hub.json" >/dev/null &
hub_pid=$!
dmctl hub wait --ready-file "$work/hub.json"
IOTHUB_CONNECTION_STRING="$(dmctl hub connection-string --data "$work/hub" --ready-file "$work/hub.json")"
DMCTL_CA_FILE="$work/hub/ca.pem"
export IOTHUB_CONNECTION_STRING DMCTL_CA_FILE

IOTHUB_DEVICE_CONNECTION_STRING="$(dmctl service device create --device ci-device)"
export IOTHUB_DEVICE_CONNECTION_STRING
dmctl device run --reboot-delay 2s >/dev/null &
device_pid=$!
dmctl service device wait --device ci-device

dmctl service reboot --device ci-device -o json
