// Package crashtest holds the local hub's durability test: it runs the real
// dmctl binary as "dmctl hub serve", drives registry, twin and reported
// property writes at it over REST and MQTT, kills the process with SIGKILL
// while the writes are in flight, restarts it on the same data folder and
// port, and checks that every write the hub acknowledged is still there.
//
// The product promise under test (product.md, "The local hub"): a write is
// acknowledged only after it is durable, so a killed hub loses nothing it
// acknowledged. What counts as an acknowledgement:
//
//   - REST: a 2xx answer to PUT /devices/{id} (registration) or to
//     PATCH /twins/{id} with If-Match "*" (tags and desired properties),
//     protocol.md §4.3, §4.5;
//   - MQTT: $iothub/twin/res/204/?$rid=N&$version=V in answer to a reported
//     properties PATCH, protocol.md §3.6.
//
// After each restart the test reads back, over REST and over the device's
// own MQTT twin GET: every acknowledged registration with the keys it
// returned; the tags, desired properties and twin version of every
// acknowledged twin patch; for reported properties, that each key holds the
// last acknowledged value written to it or a later one and that $version is
// at least the highest acknowledged one (acknowledged versions must also
// rise with $rid and never repeat, across restarts too). Writes that were not
// acknowledged may or may not survive. The owner connection string and the
// CA certificate must stay the same across restarts.
//
// A killed process cannot lose what the kernel already holds, so the test
// catches a hub that answers before its store commits (write-behind, state
// kept only in memory, counters not persisted), not a missing fsync.
//
// The package has no non-test code. The test builds the dmctl binary from
// this module; DMCTL_CRASHTEST_BIN names a prebuilt binary to test instead.
package crashtest
