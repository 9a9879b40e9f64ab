package query

import (
	"bytes"
	"encoding/json"
	"testing"
)

// twinsJSON is a fleet of six device twins shaped like GET /twins/{id}.
const twinsJSON = `[
{
  "deviceId": "dev-001", "etag": "AAAAAAAAAAE=", "deviceEtag": "NjA1MTg3Mzcw", "version": 7,
  "status": "enabled", "statusUpdateTime": "0001-01-01T00:00:00Z",
  "connectionState": "Connected", "lastActivityTime": "2024-03-02T08:00:00.0000000Z",
  "cloudToDeviceMessageCount": 0, "authenticationType": "sas", "modelId": "",
  "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
  "capabilities": {"iotEdge": false},
  "tags": {"env": "prod", "floor": 2, "build-id": "b7", "location": {"region": "US", "building": "43"}},
  "properties": {
    "desired": {"telemetryInterval": 30, "$metadata": {"$lastUpdated": "2024-02-01T00:00:00.0000000Z"}, "$version": 3},
    "reported": {
      "rebootTime": "2024-03-01T10:00:00.0000000Z", "firmware": "1.2.0", "battery": 87.5,
      "ips": ["10.0.0.1", "10.0.0.2"],
      "telemetryConfig": {"status": "Success"},
      "$metadata": {"$lastUpdated": "2024-03-01T10:00:01.0000000Z",
                    "rebootTime": {"$lastUpdated": "2024-03-01T10:00:01.0000000Z"}},
      "$version": 5
    }
  }
},
{
  "deviceId": "dev-002", "etag": "AAAAAAAAAAI=", "status": "disabled",
  "connectionState": "Disconnected", "lastActivityTime": "2024-01-10T00:00:00.0000000Z",
  "tags": {"env": "prod", "floor": 16, "location": {"region": "EU"}},
  "properties": {
    "desired": {"telemetryInterval": 60, "$version": 2},
    "reported": {
      "rebootTime": "2023-12-31T23:59:59.0000000Z", "firmware": "1.1.9", "battery": 12,
      "telemetryConfig": {"status": "Pending"}, "nullable": null,
      "$metadata": {"rebootTime": {"$lastUpdated": "2024-01-01T00:00:00.0000000Z"}},
      "$version": 9
    }
  }
},
{
  "deviceId": "dev-003", "status": "enabled",
  "connectionState": "Connected", "lastActivityTime": "2024-03-05T12:00:00.0000000Z",
  "tags": {"env": "test", "größe": "XL", "note": "it's \"quoted\" \\ back", "location": {"region": "US"}},
  "properties": {
    "desired": {"telemetryInterval": 30, "$version": 1},
    "reported": {"firmware": "1.2.0", "battery": 45, "telemetryConfig": {"status": "Success"}, "online": true, "$version": 4}
  }
},
{
  "deviceId": "dev-004", "status": "enabled",
  "connectionState": "Disconnected", "lastActivityTime": "0001-01-01T00:00:00Z",
  "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}}
},
{
  "deviceId": "dev-005", "status": "enabled",
  "connectionState": "Connected", "lastActivityTime": "2024-05-05T05:05:05.0000000Z",
  "tags": {"env": "prod", "unicode": "café ✓", "location": {"region": "APAC"}},
  "properties": {
    "desired": {"telemetryInterval": 15, "$version": 2},
    "reported": {
      "rebootTime": "2024-05-05T05:00:00.0000000Z", "firmware": null, "battery": -3,
      "telemetryConfig": {"status": "Failed"}, "online": false, "$version": 3
    }
  }
},
{
  "deviceId": "dev-006", "status": "enabled",
  "connectionState": "Connected", "lastActivityTime": "2024-02-01T00:00:00.0000000Z",
  "tags": {"env": null, "location": {"region": "us"}},
  "properties": {
    "desired": {"telemetryInterval": 30, "$version": 1},
    "reported": {"rebootTime": 1714000000, "battery": "50", "Firmware": "2.0.0", "telemetryConfig": {"status": "Success"}, "$version": 2}
  }
}
]`

// module twins (devices.modules) and job rows (devices.jobs).
const modulesJSON = `[
 {"deviceId": "dev-001", "moduleId": "edgeAgent", "status": "enabled", "connectionState": "Connected",
  "properties": {"desired": {}, "reported": {"runtime": "docker"}}},
 {"deviceId": "dev-001", "moduleId": "sensor", "status": "enabled", "connectionState": "Disconnected",
  "properties": {"desired": {}, "reported": {"runtime": "native"}}},
 {"deviceId": "dev-002", "moduleId": "sensor", "status": "disabled", "connectionState": "Disconnected",
  "properties": {"desired": {}, "reported": {}}}
]`

const jobsJSON = `[
 {"deviceId": "dev-001", "jobId": "reboot-1", "jobType": "scheduleDeviceMethod", "status": "completed",
  "startTimeUtc": "2024-03-01T10:00:00Z", "endTimeUtc": "2024-03-01T10:00:05Z",
  "outcome": {"deviceMethodResponse": {"status": 200, "payload": null}}},
 {"deviceId": "dev-002", "jobId": "reboot-1", "jobType": "scheduleDeviceMethod", "status": "failed",
  "startTimeUtc": "2024-03-01T10:00:00Z", "endTimeUtc": "2024-03-01T10:00:30Z"},
 {"deviceId": "dev-001", "jobId": "twin-7", "jobType": "scheduleUpdateTwin", "status": "running",
  "startTimeUtc": "2024-04-01T00:00:00Z"}
]`

// decodeDocs decodes a JSON array of objects, with json.Number when useNumber.
func decodeDocs(tb testing.TB, s string, useNumber bool) []map[string]any {
	tb.Helper()
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	if useNumber {
		dec.UseNumber()
	}
	var docs []map[string]any
	if err := dec.Decode(&docs); err != nil {
		tb.Fatalf("decode fixture: %v", err)
	}
	return docs
}

func fixture(tb testing.TB, collection string, useNumber bool) []map[string]any {
	switch collection {
	case CollectionModules:
		return decodeDocs(tb, modulesJSON, useNumber)
	case CollectionJobs:
		return decodeDocs(tb, jobsJSON, useNumber)
	}
	return decodeDocs(tb, twinsJSON, useNumber)
}
