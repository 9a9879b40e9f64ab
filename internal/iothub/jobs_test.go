package iothub

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func testJob(id string, created time.Time) JobResponse {
	return JobResponse{
		JobID: id, QueryCondition: "deviceId = 'd1'", CreatedTime: created, StartTime: created,
		MaxExecutionTimeInSeconds: 3600, Type: JobTypeDeviceMethod, Status: JobQueued,
		CloudToDeviceMethod: &JobMethod{MethodName: "reboot", Payload: json.RawMessage(`{"a":1}`), ResponseTimeoutInSeconds: 30},
	}
}

func TestJobJSONShape(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456700, time.UTC)
	j := testJob("j1", at)
	j.DeviceJobStatistics = JobStatistics{DeviceCount: 2, SucceededCount: 1, PendingCount: 1}
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"jobId":"j1","queryCondition":"deviceId = 'd1'","createdTime":"2026-01-02T03:04:05.1234567Z","startTime":"2026-01-02T03:04:05.1234567Z",` +
		`"endTime":"0001-01-01T00:00:00Z","maxExecutionTimeInSeconds":3600,"type":"scheduleDeviceMethod",` +
		`"cloudToDeviceMethod":{"methodName":"reboot","payload":{"a":1},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0},` +
		`"status":"queued","deviceJobStatistics":{"deviceCount":2,"failedCount":0,"succeededCount":1,"runningCount":0,"pendingCount":1}}`
	if string(b) != want {
		t.Errorf("job JSON\n got %s\nwant %s", b, want)
	}
	var back JobResponse
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.CreatedTime.Equal(at) || !back.EndTime.IsZero() || back.CloudToDeviceMethod.MethodName != "reboot" {
		t.Errorf("round trip = %+v", back)
	}

	row := DeviceJob{DeviceID: "d1", JobID: "j1", JobType: JobTypeDeviceMethod, Status: RowFailed, CreatedDateTimeUtc: at,
		Error: &DeviceJobError{Code: "404103", Description: "offline"}}
	b, err = json.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	want = `{"deviceId":"d1","jobId":"j1","jobType":"scheduleDeviceMethod","status":"failed","startTimeUtc":"0001-01-01T00:00:00Z",` +
		`"endTimeUtc":"0001-01-01T00:00:00Z","createdDateTimeUtc":"2026-01-02T03:04:05.1234567Z","lastUpdatedDateTimeUtc":"0001-01-01T00:00:00Z",` +
		`"outcome":null,"error":{"code":"404103","description":"offline"}}`
	if string(b) != want {
		t.Errorf("row JSON\n got %s\nwant %s", b, want)
	}
	row.Error = nil
	row.Outcome = &DeviceJobOutcome{DeviceMethodResponse: &DeviceMethodResponse{Status: 500, Payload: json.RawMessage(`"x"`)}}
	b, _ = json.Marshal(row)
	if !strings.Contains(string(b), `"outcome":{"deviceMethodResponse":{"status":500,"payload":"x"}}`) || strings.Contains(string(b), `"error"`) {
		t.Errorf("row JSON = %s", b)
	}
}

func TestParseTime(t *testing.T) {
	for in, want := range map[string]time.Time{
		"":                          {},
		"0001-01-01T00:00:00Z":      {},
		"2030-01-01T00:00:00.000Z":  time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		"2030-01-01T02:00:00+02:00": time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		got, err := ParseTime(in)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseTime("tomorrow"); err == nil {
		t.Error("ParseTime accepted garbage")
	}
}

func TestReadTime(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2030-01-01T00:00:00.1234567Z": time.Date(2030, 1, 1, 0, 0, 0, 123456700, time.UTC),
		"2030-01-01T02:00:00+02:00":    time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		"2030-01-01T00:00:00.123":      time.Date(2030, 1, 1, 0, 0, 0, 123e6, time.UTC), // no zone: UTC
	} {
		if got, ok := ReadTime(in); !ok || !got.Equal(want) {
			t.Errorf("ReadTime(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", NeverTime, "tomorrow"} {
		if got, ok := ReadTime(in); ok {
			t.Errorf("ReadTime(%q) = %v, true; want not ok", in, got)
		}
	}
}

// TestJobResponseReadTolerant reads what IoT Hub itself may send: times
// without a zone, members left out.
func TestJobResponseReadTolerant(t *testing.T) {
	var j JobResponse
	body := `{"jobId":"j","type":"scheduleUpdateTwin","status":"running","createdTime":"2030-01-01T00:00:00.5",` +
		`"updateTwin":{"tags":{"n":12345678901234567890}}}`
	if err := json.Unmarshal([]byte(body), &j); err != nil {
		t.Fatal(err)
	}
	if !j.CreatedTime.Equal(time.Date(2030, 1, 1, 0, 0, 0, 5e8, time.UTC)) || !j.EndTime.IsZero() || j.Stats() != (JobStatistics{}) {
		t.Errorf("job = %+v", j)
	}
	if n, ok := j.UpdateTwin.Tags["n"].(json.Number); !ok || n.String() != "12345678901234567890" {
		t.Errorf("tags.n = %#v, want the json.Number as sent", j.UpdateTwin.Tags["n"])
	}
	var row DeviceJob
	if err := json.Unmarshal([]byte(`{"deviceId":"d","jobId":"j","status":"failed","error":{"code":" 404103","description":"x"}}`), &row); err != nil {
		t.Fatal(err)
	}
	if row.Error.CodeInt() != CodeDeviceNotOnline || row.MethodResponse() != nil || !row.StartTimeUtc.IsZero() {
		t.Errorf("row = %+v", row)
	}
}

func TestValidJobIDNamesCharactersAsRunes(t *testing.T) {
	for _, c := range []struct{ id, want string }{
		{"été", `jobId "été" contains 'é'`},
		{"j✓", `jobId "j✓" contains '✓'`},
		{"caf\xe9", `jobId "caf\xe9" is not valid UTF-8`},
		{"j\x00", `jobId "j\x00" contains '\x00'`},
	} {
		err := ValidJobID(c.id)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("ValidJobID(%q) = %v, want %s...", c.id, err, c.want)
		}
	}
	if err := ValidJobID("job-1"); err != nil {
		t.Errorf("ValidJobID(job-1) = %v", err)
	}
}
