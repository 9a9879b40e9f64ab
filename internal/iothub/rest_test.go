package iothub

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseErrorBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		code   int
		ename  string
		msg    string
	}{
		{"style A", 404, `{"Message":"ErrorCode:DeviceNotFound;sensor-thl-001","ExceptionMessage":"Tracking ID:abc-G:10-TimeStamp:01/02/2024 10:00:00"}`, CodeDeviceNotFound, "DeviceNotFound", "sensor-thl-001"},
		{"style A unauthorized", 401, `{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":""}`, CodeUnauthorized, "IotHubUnauthorizedAccess", "Unauthorized"},
		{"style A precondition", 412, `{"Message":"ErrorCode:PreconditionFailed;Precondition failed: Device version did not match, existingVersion:957482805 newVersion:957482804","ExceptionMessage":""}`, CodePreconditionFailed, "PreconditionFailed", "Precondition failed: Device version did not match, existingVersion:957482805 newVersion:957482804"},
		{"style B offline", 404, `{"Message":"{\"errorCode\":404103,\"trackingId\":\"x\",\"message\":\"Timed out waiting for device to connect.\",\"info\":{\"timeout\":\"00:00:00\"},\"timestampUtc\":\"2021-01-01T00:00:00.0000000Z\"}","ExceptionMessage":""}`, CodeDeviceNotOnline, "DeviceNotOnline", "Timed out waiting for device to connect."},
		{"bare errorCode", 400, `{"errorCode":400004,"message":"bad"}`, CodeArgumentInvalid, "ArgumentInvalid", "bad"},
		{"text", 502, "<html>bad gateway</html>\n", 0, "", "<html>bad gateway</html>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ParseErrorBody(tc.status, []byte(tc.body))
			if e.Status != tc.status || e.Code != tc.code || e.Name != tc.ename || e.Message != tc.msg {
				t.Fatalf("got %+v", e)
			}
		})
	}
	long := strings.Repeat("x", 5000)
	if e := ParseErrorBody(500, []byte(long)); len(e.Message) > maxErrorText+3 {
		t.Fatalf("message not bounded: %d", len(e.Message))
	}
}

func TestErrorBodiesRoundTrip(t *testing.T) {
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	a := RegistryErrorBody(CodeDeviceNotFound, "d1", now)
	var env map[string]string
	if err := json.Unmarshal(a, &env); err != nil {
		t.Fatal(err)
	}
	// Node's parser splits Message at ';' and takes the code after ':'.
	head, _, _ := strings.Cut(env["Message"], ";")
	if head != "ErrorCode:DeviceNotFound" {
		t.Fatalf("style A Message = %q", env["Message"])
	}
	if !strings.HasPrefix(env["ExceptionMessage"], "Tracking ID:") || !strings.HasSuffix(env["ExceptionMessage"], "TimeStamp:01/02/2024 03:04:05") {
		t.Fatalf("ExceptionMessage = %q", env["ExceptionMessage"])
	}
	if e := ParseErrorBody(404, a); e.Code != CodeDeviceNotFound {
		t.Fatalf("A round trip: %+v", e)
	}
	b := MethodErrorBody(CodeGatewayTimeout, "Timed out waiting for the response from device.", now)
	if e := ParseErrorBody(504, b); e.Code != CodeGatewayTimeout || e.Message != "Timed out waiting for the response from device." {
		t.Fatalf("B round trip: %+v", e)
	}
}

func TestFormatTime(t *testing.T) {
	if got := FormatTime(time.Time{}); got != NeverTime {
		t.Fatalf("zero = %q", got)
	}
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456700, time.FixedZone("x", 3600))
	if got := FormatTime(ts); got != "2024-05-06T06:08:09.1234567Z" {
		t.Fatalf("FormatTime = %q", got)
	}
}
