// Package compat holds dmctl's compatibility suite: the official Azure IoT
// SDK packages from npm (azure-iot-device, azure-iot-device-mqtt,
// azure-iothub) act as the referee for dmctl's local hub, device and service.
//
// The tests start one hub on the ports the SDKs insist on (127.0.0.1:8883 for
// MQTT over TLS, 127.0.0.1:443 for HTTPS and MQTT over WebSockets), install
// the pinned npm packages from node/package-lock.json when needed, and run the
// Node scripts in node/ next to dmctl's own binary. They need Node.js and npm
// on PATH and permission to bind ports below 1024. The tests that run
// `dmctl hub serve` as a hub of its own (the Python tutorial, the X.509 CA
// devices, the firmware campaign with --packages) bind the same ports on
// 127.0.0.3, one test at a time. X.509
// tests mint their certificates (ECDSA P-256) in temporary folders.
//
// Environment: COMPAT_DMCTL names a dmctl binary to test instead of building
// one from this module; COMPAT_KEEP keeps the hub's data folder and log;
// COMPAT_NODE_DEBUG sets DEBUG for the Node scripts (e.g. "azure*,mqttjs*")
// so that a failing test prints the SDKs' own trace of topics and packets.
package compat
