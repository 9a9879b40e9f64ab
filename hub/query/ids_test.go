package query

import (
	"reflect"
	"slices"
	"testing"
)

func TestDeviceIDs(t *testing.T) {
	cases := []struct {
		query string
		want  []string // nil with ok=false
		ok    bool
	}{
		{"SELECT * FROM devices WHERE deviceId = 'a'", []string{"a"}, true},
		{"SELECT * FROM devices WHERE 'a' = deviceId", []string{"a"}, true},
		{`SELECT * FROM devices WHERE DEVICEID = "a"`, []string{"a"}, true},
		{"SELECT * FROM devices WHERE deviceid IN ['c', 'a', 'b', 'a']", []string{"a", "b", "c"}, true},
		{"SELECT deviceId, properties.reported.rebootTime AS rebootTime FROM devices WHERE deviceId IN ['b','a']", []string{"a", "b"}, true},
		{"SELECT * FROM devices WHERE deviceId IN []", []string{}, true},
		{"SELECT * FROM devices WHERE deviceId IN ['a', 1, null, true]", []string{"a"}, true},
		{"SELECT * FROM devices WHERE deviceId = 5", []string{}, true},
		{"SELECT * FROM devices WHERE deviceId IN ['a','b'] AND tags.x = 'y'", []string{"a", "b"}, true},
		{"SELECT * FROM devices WHERE tags.x = 'y' AND deviceId = 'b'", []string{"b"}, true},
		{"SELECT * FROM devices WHERE tags.x = 'y' AND (status = 'enabled' AND deviceId IN ['q'])", []string{"q"}, true},
		{"SELECT * FROM devices WHERE deviceId IN ['a','b','c'] AND deviceId IN ['b','c','d']", []string{"b", "c"}, true},
		{"SELECT * FROM devices WHERE deviceId = 'a' AND deviceId = 'b'", []string{}, true},
		{"SELECT * FROM devices WHERE (deviceId = 'a')", []string{"a"}, true},
		{"SELECT COUNT() AS n FROM devices WHERE deviceId IN ['a']", []string{"a"}, true},

		{"SELECT * FROM devices", nil, false},
		{"SELECT * FROM devices WHERE tags.x = 'y'", nil, false},
		{"SELECT * FROM devices WHERE deviceId != 'a'", nil, false},
		{"SELECT * FROM devices WHERE deviceId < 'b'", nil, false},
		{"SELECT * FROM devices WHERE deviceId NIN ['a']", nil, false},
		{"SELECT * FROM devices WHERE deviceId NOT IN ['a']", nil, false},
		{"SELECT * FROM devices WHERE NOT deviceId = 'a'", nil, false},
		{"SELECT * FROM devices WHERE deviceId = 'a' OR tags.x = 'y'", nil, false},
		{"SELECT * FROM devices WHERE deviceId = 'a' OR deviceId = 'b'", nil, false},
		{"SELECT * FROM devices WHERE deviceId = tags.id", nil, false},
		{"SELECT * FROM devices WHERE deviceId IN ['a', tags.id]", nil, false},
		{"SELECT * FROM devices WHERE tags.deviceId = 'a'", nil, false},
		{"SELECT * FROM devices WHERE properties.reported.deviceId = 'a'", nil, false},
		{"SELECT * FROM devices WHERE deviceId.x = 'a'", nil, false},
		{"SELECT * FROM devices WHERE moduleId = 'a'", nil, false},
		{"SELECT * FROM devices WHERE IS_DEFINED(deviceId)", nil, false},
	}
	for _, c := range cases {
		q, err := Parse(c.query)
		if err != nil {
			t.Fatalf("%s: %v", c.query, err)
		}
		got, ok := q.DeviceIDs()
		if ok != c.ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: DeviceIDs() = %#v, %v; want %#v, %v", c.query, got, ok, c.want, c.ok)
		}
	}
}

// TestDeviceIDsCoverMatches checks, over the Match fixture, that whenever a
// query reports a device id set, every matching document is in it.
func TestDeviceIDsCoverMatches(t *testing.T) {
	docs := fixture(t, CollectionDevices, true)
	checked := 0
	for _, c := range matchCases {
		q, err := Parse(c.query)
		if err != nil || q.Collection() != CollectionDevices {
			continue
		}
		ids, ok := q.DeviceIDs()
		if !ok {
			continue
		}
		checked++
		for _, d := range docs {
			if q.Match(d) && !slices.Contains(ids, rowID(d)) {
				t.Errorf("%s: %s matches but DeviceIDs() = %v", c.query, rowID(d), ids)
			}
		}
	}
	if checked == 0 {
		t.Error("no fixture query constrains deviceId")
	}
}
