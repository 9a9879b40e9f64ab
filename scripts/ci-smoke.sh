#!/bin/sh
# CI smoke check: start a local IoT Hub and a simulated device, reboot the
# device with the rebootDevice direct method and confirm the new rebootTime
# in its twin. Exits with dmctl's exit code (0: rebooted and confirmed).
# The hub's and the device's logs go to files in a temporary folder, and are
# printed (on stderr) only when the check fails.
set -eu
work="$(mktemp -d)"
hub_pid="" device_pid=""
cleanup() {
  status=$?
  [ -z "$device_pid" ] || kill "$device_pid" 2>/dev/null || true
  [ -z "$hub_pid" ] || kill "$hub_pid" 2>/dev/null || true
  wait
  if [ "$status" -ne 0 ]; then
    for log in "$work/hub.log" "$work/device.log"; do
      [ ! -f "$log" ] || { echo "--- $(basename "$log")"; cat "$log"; } >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

dmctl hub serve --data "$work/hub" --listen 127.0.0.1:0 --ready-file "$work/hub.ready" >/dev/null 2>"$work/hub.log" &
hub_pid=$!
dmctl hub wait --ready-file "$work/hub.ready"
IOTHUB_CONNECTION_STRING="$(dmctl hub connection-string --data "$work/hub")"
DMCTL_CA_FILE="$work/hub/ca.pem"
export IOTHUB_CONNECTION_STRING DMCTL_CA_FILE

IOTHUB_DEVICE_CONNECTION_STRING="$(dmctl service device create --device ci-device)"
export IOTHUB_DEVICE_CONNECTION_STRING
dmctl device run --reboot-delay 2s >/dev/null 2>"$work/device.log" &
device_pid=$!
dmctl service device wait --device ci-device

dmctl service reboot --device ci-device -o json
