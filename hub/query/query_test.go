package query

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// rowID names a fixture document: deviceId, plus /moduleId or #jobId.
func rowID(d map[string]any) string {
	id, _ := d["deviceId"].(string)
	if m, ok := d["moduleId"].(string); ok {
		id += "/" + m
	}
	if j, ok := d["jobId"].(string); ok {
		id += "#" + j
	}
	return id
}

var all = []string{"dev-001", "dev-002", "dev-003", "dev-004", "dev-005", "dev-006"}

var matchCases = []struct {
	name  string
	query string
	want  []string
}{
	// basics and case rules
	{"select all", "SELECT * FROM devices", all},
	{"deviceId equality", "SELECT * FROM devices WHERE deviceId = 'dev-003'", []string{"dev-003"}},
	{"identity field case-insensitive", `SELECT * FROM devices WHERE DEVICEID = "dev-003"`, []string{"dev-003"}},
	{"keywords case-insensitive", "select * from DEVICES where Status = 'disabled'", []string{"dev-002"}},
	{"not equal !=", "SELECT * FROM devices WHERE status != 'enabled'", []string{"dev-002"}},
	{"not equal <>", "SELECT * FROM devices WHERE status <> 'enabled'", []string{"dev-002"}},
	{"connectionState", "SELECT * FROM devices WHERE connectionState = 'Connected'", []string{"dev-001", "dev-003", "dev-005", "dev-006"}},
	{"string values case-sensitive", "SELECT * FROM devices WHERE ConnectionState = 'connected'", nil},
	{"nested tag", "SELECT * FROM devices WHERE tags.location.region = 'US'", []string{"dev-001", "dev-003"}},
	{"tag keys case-sensitive", "SELECT * FROM devices WHERE tags.Location.region = 'US'", nil},
	{"reported property", "SELECT * FROM devices WHERE properties.reported.firmware = '1.2.0'", []string{"dev-001", "dev-003"}},
	{"reported keys case-sensitive", "SELECT * FROM devices WHERE properties.reported.Firmware = '2.0.0'", []string{"dev-006"}},
	{"properties.reported structural case-insensitive", "SELECT * FROM devices WHERE Properties.Reported.firmware = '1.2.0'", []string{"dev-001", "dev-003"}},
	{"desired property", "SELECT * FROM devices WHERE properties.desired.telemetryInterval = 60", []string{"dev-002"}},
	{"whitespace and newlines", "SELECT\t*\nFROM   devices\r\nWHERE\n  deviceId='dev-001'", []string{"dev-001"}},

	// numbers
	{"greater than", "SELECT * FROM devices WHERE properties.reported.battery > 40", []string{"dev-001", "dev-003"}},
	{"less than negative", "SELECT * FROM devices WHERE properties.reported.battery < 0", []string{"dev-005"}},
	{"greater or equal", "SELECT * FROM devices WHERE properties.reported.battery >= 45", []string{"dev-001", "dev-003"}},
	{"less or equal", "SELECT * FROM devices WHERE properties.reported.battery <= 12", []string{"dev-002", "dev-005"}},
	{"negative literal", "SELECT * FROM devices WHERE properties.reported.battery = -3", []string{"dev-005"}},
	{"fraction literal", "SELECT * FROM devices WHERE properties.reported.battery = 87.5", []string{"dev-001"}},
	{"exponent literal", "SELECT * FROM devices WHERE properties.reported.battery = 1.2e1", []string{"dev-002"}},
	{"hex literal", "SELECT * FROM devices WHERE tags.floor = 0x10", []string{"dev-002"}},
	{"hex literal upper X", "SELECT * FROM devices WHERE tags.floor = 0X2", []string{"dev-001"}},
	{"integer equals fraction form", "SELECT * FROM devices WHERE tags.floor = 2.0", []string{"dev-001"}},

	// strings and timestamps
	{"string compared lexicographically", "SELECT * FROM devices WHERE properties.reported.battery > '40'", []string{"dev-006"}},
	{"timestamp after", "SELECT * FROM devices WHERE properties.reported.rebootTime > '2024-01-01'", []string{"dev-001", "dev-005"}},
	{"timestamp before", "SELECT * FROM devices WHERE properties.reported.rebootTime < '2024-01-01'", []string{"dev-002"}},
	{"number vs number only", "SELECT * FROM devices WHERE properties.reported.rebootTime > 1700000000", []string{"dev-006"}},
	{"lastActivityTime", "SELECT * FROM devices WHERE lastActivityTime > '2024-03-01'", []string{"dev-001", "dev-003", "dev-005"}},
	{"lastActivityTime any case", "SELECT * FROM devices WHERE LASTACTIVITYTIME > '2024-03-01'", []string{"dev-001", "dev-003", "dev-005"}},
	{"dollar metadata path", "SELECT * FROM devices WHERE properties.reported.$metadata.rebootTime.$lastUpdated >= '2024-03-01'", []string{"dev-001"}},
	{"dollar version", "SELECT * FROM devices WHERE properties.reported.$version > 4", []string{"dev-001", "dev-002"}},
	{"single-quoted escapes", `SELECT * FROM devices WHERE tags.note = 'it\'s "quoted" \\ back'`, []string{"dev-003"}},
	{"double-quoted escapes", `SELECT * FROM devices WHERE tags.note = "it's \"quoted\" \\ back"`, []string{"dev-003"}},
	{"unicode escape", `SELECT * FROM devices WHERE tags.unicode = 'caf\u00e9 \u2713'`, []string{"dev-005"}},
	{"raw unicode literal", `SELECT * FROM devices WHERE tags.unicode = 'café ✓'`, []string{"dev-005"}},
	{"bracket key with hyphen", "SELECT * FROM devices WHERE tags['build-id'] = 'b7'", []string{"dev-001"}},
	{"array index", "SELECT * FROM devices WHERE properties.reported.ips[1] = '10.0.0.2'", []string{"dev-001"}},
	{"array is not comparable", "SELECT * FROM devices WHERE properties.reported.ips = '10.0.0.1'", nil},
	{"non-ASCII property name", "SELECT * FROM devices WHERE tags.größe = 'XL'", []string{"dev-003"}},
	{"bracket property", "SELECT * FROM devices WHERE properties.reported['telemetryConfig'].status = 'Success'", []string{"dev-001", "dev-003", "dev-006"}},

	// booleans, null, undefined
	{"bool equals", "SELECT * FROM devices WHERE properties.reported.online = true", []string{"dev-003"}},
	{"bool not equals", "SELECT * FROM devices WHERE properties.reported.online != true", []string{"dev-005"}},
	{"bool has no ordering", "SELECT * FROM devices WHERE properties.reported.online > false", nil},
	{"bool path as condition", "SELECT * FROM devices WHERE properties.reported.online", []string{"dev-003"}},
	{"null equals null", "SELECT * FROM devices WHERE properties.reported.nullable = null", []string{"dev-002"}},
	{"null valued property", "SELECT * FROM devices WHERE properties.reported.firmware = null", []string{"dev-005"}},
	{"value vs null is undefined", "SELECT * FROM devices WHERE properties.reported.firmware != null", nil},
	{"null tag", "SELECT * FROM devices WHERE tags.env = null", []string{"dev-006"}},
	{"literal null = null", "SELECT * FROM devices WHERE null = null", all},
	{"literal true", "SELECT * FROM devices WHERE true", all},
	{"undefined literal never equal", "SELECT * FROM devices WHERE properties.reported.missing = undefined", nil},
	{"missing path not-equal excluded", "SELECT * FROM devices WHERE properties.reported.missing != 'x'", nil},
	{"NOT of undefined stays undefined", "SELECT * FROM devices WHERE NOT (properties.reported.missing = 'x')", nil},
	{"object is not comparable", "SELECT * FROM devices WHERE tags.location = 'US'", nil},
	{"type mismatch excluded", "SELECT * FROM devices WHERE tags.floor = '2'", nil},

	// IS_DEFINED
	{"IS_DEFINED", "SELECT * FROM devices WHERE IS_DEFINED(properties.reported.rebootTime)", []string{"dev-001", "dev-002", "dev-005", "dev-006"}},
	{"NOT IS_DEFINED", "SELECT * FROM devices WHERE NOT IS_DEFINED(properties.reported.rebootTime)", []string{"dev-003", "dev-004"}},
	{"IS_DEFINED true for null", "SELECT * FROM devices WHERE is_defined(properties.reported.nullable)", []string{"dev-002"}},
	{"IS_DEFINED tags", "SELECT * FROM devices WHERE IS_DEFINED(tags)", []string{"dev-001", "dev-002", "dev-003", "dev-005", "dev-006"}},

	// IN / NIN
	{"IN strings", "SELECT * FROM devices WHERE tags.env IN ['prod', 'test']", []string{"dev-001", "dev-002", "dev-003", "dev-005"}},
	{"NIN", "SELECT * FROM devices WHERE tags.env NIN ['prod']", []string{"dev-003", "dev-006"}},
	{"NOT IN", "SELECT * FROM devices WHERE tags.env NOT IN ['prod', 'test']", []string{"dev-006"}},
	{"IN numbers with hex", "SELECT * FROM devices WHERE properties.desired.telemetryInterval IN [15, 0x3C]", []string{"dev-002", "dev-005"}},
	{"IN empty array", "SELECT * FROM devices WHERE tags.location.region IN []", nil},
	{"IN with null element", "SELECT * FROM devices WHERE tags.env in [null, 'test']", []string{"dev-003", "dev-006"}},
	{"IN keyword case", "SELECT * FROM devices WHERE deviceId In ['dev-004', 'dev-001']", []string{"dev-001", "dev-004"}},

	// logic and precedence
	{"AND binds tighter than OR", "SELECT * FROM devices WHERE status = 'enabled' OR status = 'disabled' AND connectionState = 'Connected'", []string{"dev-001", "dev-003", "dev-004", "dev-005", "dev-006"}},
	{"parentheses override", "SELECT * FROM devices WHERE (status = 'enabled' OR status = 'disabled') AND connectionState = 'Connected'", []string{"dev-001", "dev-003", "dev-005", "dev-006"}},
	{"NOT binds tighter than AND", "SELECT * FROM devices WHERE NOT status = 'enabled' AND connectionState = 'Disconnected'", []string{"dev-002"}},
	{"NOT over parentheses", "SELECT * FROM devices WHERE NOT (status = 'enabled' AND connectionState = 'Disconnected')", []string{"dev-001", "dev-002", "dev-003", "dev-005", "dev-006"}},
	{"double NOT", "SELECT * FROM devices WHERE not not deviceId = 'dev-001'", []string{"dev-001"}},
	{"undefined OR true is true", "SELECT * FROM devices WHERE properties.reported.missing = 1 OR deviceId = 'dev-004'", []string{"dev-004"}},
	{"undefined AND true is not true", "SELECT * FROM devices WHERE properties.reported.missing = 1 AND deviceId = 'dev-004'", nil},
	{"NOT of undefined OR false", "SELECT * FROM devices WHERE NOT (properties.reported.missing = 1 OR deviceId = 'dev-004')", nil},
	{"NOT of undefined AND false", "SELECT * FROM devices WHERE NOT (properties.reported.missing = 1 AND deviceId = 'dev-004')", []string{"dev-001", "dev-002", "dev-003", "dev-005", "dev-006"}},
	{"nested parentheses", "SELECT * FROM devices WHERE ((tags.env = 'prod') AND ((tags.floor > 1) OR (deviceId = 'dev-005')))", []string{"dev-001", "dev-002", "dev-005"}},

	// arithmetic
	{"multiply", "SELECT * FROM devices WHERE properties.desired.telemetryInterval * 2 = 60", []string{"dev-001", "dev-003", "dev-006"}},
	{"multiplication before addition", "SELECT * FROM devices WHERE properties.reported.battery + 3 * 1 = 48", []string{"dev-003"}},
	{"modulo", "SELECT * FROM devices WHERE tags.floor % 2 = 0", []string{"dev-001", "dev-002"}},
	{"parenthesized arithmetic", "SELECT * FROM devices WHERE (tags.floor - 1) / 3 = 5", []string{"dev-002"}},
	{"arithmetic on right side", "SELECT * FROM devices WHERE tags.floor = 4 * 4", []string{"dev-002"}},
	{"division by zero is undefined", "SELECT * FROM devices WHERE tags.floor / 0 = 1", nil},
	{"arithmetic on string is undefined", "SELECT * FROM devices WHERE properties.reported.battery - 0 = 50", nil},
	{"unary minus on path", "SELECT * FROM devices WHERE -properties.reported.battery = 3", []string{"dev-005"}},

	// other collections
	{"modules by moduleId", "SELECT * FROM devices.modules WHERE moduleId = 'sensor'", []string{"dev-001/sensor", "dev-002/sensor"}},
	{"modules identity case", "SELECT * FROM devices.modules WHERE ModuleId = 'sensor' AND connectionState = 'Disconnected' AND status = 'enabled'", []string{"dev-001/sensor"}},
	{"modules reported", "SELECT * FROM devices.modules WHERE properties.reported.runtime = 'docker'", []string{"dev-001/edgeAgent"}},
	{"jobs prefixed path", "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'reboot-1'", []string{"dev-001#reboot-1", "dev-002#reboot-1"}},
	{"jobs prefix any case", "SELECT * FROM DEVICES.JOBS WHERE Devices.Jobs.status = 'failed'", []string{"dev-002#reboot-1"}},
	{"jobs device and type", "SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = 'dev-001' AND devices.jobs.jobType = 'scheduleUpdateTwin'", []string{"dev-001#twin-7"}},
	{"jobs nested outcome", "SELECT * FROM devices.jobs WHERE devices.jobs.outcome.deviceMethodResponse.status = 200", []string{"dev-001#reboot-1"}},
	{"jobs unprefixed path", "SELECT * FROM devices.jobs WHERE startTimeUtc >= '2024-04-01'", []string{"dev-001#twin-7"}},
}

func TestMatch(t *testing.T) {
	for _, useNumber := range []bool{false, true} {
		for _, tc := range matchCases {
			t.Run(fmt.Sprintf("%s/useNumber=%v", tc.name, useNumber), func(t *testing.T) {
				q, err := Parse(tc.query)
				if err != nil {
					t.Fatalf("Parse(%q): %v", tc.query, err)
				}
				var got []string
				for _, d := range fixture(t, q.Collection(), useNumber) {
					if q.Match(d) {
						got = append(got, rowID(d))
					}
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("%s\n got %q\nwant %q", tc.query, got, tc.want)
				}
			})
		}
	}
}

func TestAccessors(t *testing.T) {
	cases := []struct {
		query      string
		collection string
		top        int
		selectAll  bool
		itemType   string
	}{
		{"SELECT * FROM devices", "devices", 0, true, "twin"},
		{"select top 5 * from Devices.Modules", "devices.modules", 5, true, "twin"},
		{"SELECT TOP 0x10 * FROM devices.jobs", "devices.jobs", 16, true, "deviceJob"},
		{"SELECT deviceId FROM devices", "devices", 0, false, "raw"},
		{"SELECT COUNT() AS n FROM devices", "devices", 0, false, "raw"},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			q, err := Parse(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			if q.Collection() != tc.collection || q.Top() != tc.top || q.IsSelectAll() != tc.selectAll || q.ItemType() != tc.itemType {
				t.Errorf("got collection %q top %d selectAll %v itemType %q", q.Collection(), q.Top(), q.IsSelectAll(), q.ItemType())
			}
			if q.String() != tc.query {
				t.Errorf("String() = %q", q.String())
			}
		})
	}
}

var projectCases = []struct {
	name  string
	query string
	want  string // JSON of the Project result over the matching fixture twins
}{
	{"select all returns documents", "SELECT * FROM devices WHERE deviceId = 'dev-004'",
		`[{"deviceId":"dev-004","status":"enabled","connectionState":"Disconnected","lastActivityTime":"0001-01-01T00:00:00Z","properties":{"desired":{"$version":1},"reported":{"$version":1}}}]`},
	{"top on select all", "SELECT TOP 2 * FROM devices WHERE status = 'enabled'", ""},
	{"projection with alias", "SELECT deviceId, properties.reported.rebootTime AS t FROM devices WHERE IS_DEFINED(properties.reported.rebootTime)",
		`[{"deviceId":"dev-001","t":"2024-03-01T10:00:00.0000000Z"},{"deviceId":"dev-002","t":"2023-12-31T23:59:59.0000000Z"},{"deviceId":"dev-005","t":"2024-05-05T05:00:00.0000000Z"},{"deviceId":"dev-006","t":1714000000}]`},
	{"identity fields canonical casing", "SELECT DeviceId, LastActivityTime, CONNECTIONSTATE FROM devices WHERE deviceId = 'dev-001'",
		`[{"deviceId":"dev-001","lastActivityTime":"2024-03-02T08:00:00.0000000Z","connectionState":"Connected"}]`},
	{"last segment names the column, undefined omitted, null kept", "SELECT deviceId, properties.reported.firmware FROM devices WHERE deviceId IN ['dev-003', 'dev-005', 'dev-006']",
		`[{"deviceId":"dev-003","firmware":"1.2.0"},{"deviceId":"dev-005","firmware":null},{"deviceId":"dev-006"}]`},
	{"project object and dollar key", "SELECT tags.location, properties.reported.$version AS v FROM devices WHERE deviceId = 'dev-002'",
		`[{"location":{"region":"EU"},"v":9}]`},
	{"top on projection", "SELECT TOP 2 deviceId FROM devices", `[{"deviceId":"dev-001"},{"deviceId":"dev-002"}]`},
	{"count all", "SELECT COUNT() AS total FROM devices", `[{"total":6}]`},
	{"count filtered", "SELECT COUNT() AS total FROM devices WHERE status = 'enabled'", `[{"total":5}]`},
	{"count of nothing", "SELECT COUNT() AS total FROM devices WHERE deviceId = 'nope'", `[{"total":0}]`},
	{"unaliased aggregates", "SELECT COUNT(), MAX(tags.floor) FROM devices", `[{"$1":6,"$2":16}]`},
	{"aggregates without group", "SELECT SUM(properties.reported.battery) AS s, AVG(properties.desired.telemetryInterval) AS a, MIN(properties.reported.battery) AS lo, MAX(properties.reported.battery) AS hi FROM devices",
		`[{"s":141.5,"a":33,"lo":-3,"hi":87.5}]`},
	{"group by with count", "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status",
		`[{"status":"Success","numberOfDevices":3},{"status":"Pending","numberOfDevices":1},{"numberOfDevices":1},{"status":"Failed","numberOfDevices":1}]`},
	{"group by aggregates", "SELECT tags.env, COUNT() AS n, SUM(properties.reported.battery) AS s, AVG(properties.reported.battery) AS a, MIN(properties.reported.battery) AS lo, MAX(properties.reported.battery) AS hi FROM devices GROUP BY tags.env",
		`[{"env":"prod","n":3,"s":96.5,"a":32.166666666666664,"lo":-3,"hi":87.5},{"env":"test","n":1,"s":45,"a":45,"lo":45,"hi":45},{"n":1,"s":0},{"env":null,"n":1,"s":0}]`},
	{"group by with where and top", "SELECT TOP 1 tags.env AS env, COUNT() AS n FROM devices WHERE connectionState = 'Connected' GROUP BY tags.env",
		`[{"env":"prod","n":2}]`},
	{"group by identity field any case", "SELECT Status, COUNT() AS n FROM devices GROUP BY status",
		`[{"status":"enabled","n":5},{"status":"disabled","n":1}]`},
	{"group by numbers", "SELECT properties.desired.telemetryInterval AS i, COUNT() AS n FROM devices WHERE IS_DEFINED(properties.desired.telemetryInterval) GROUP BY properties.desired.telemetryInterval",
		`[{"i":30,"n":3},{"i":60,"n":1},{"i":15,"n":1}]`},
	{"group by without aggregates", "SELECT tags.location.region FROM devices WHERE IS_DEFINED(tags.location.region) GROUP BY tags.location.region",
		`[{"region":"US"},{"region":"EU"},{"region":"APAC"},{"region":"us"}]`},
	{"group by on empty input", "SELECT tags.env, COUNT() AS n FROM devices WHERE deviceId = 'nope' GROUP BY tags.env", `[]`},
}

func TestProject(t *testing.T) {
	for _, useNumber := range []bool{false, true} {
		for _, tc := range projectCases {
			t.Run(fmt.Sprintf("%s/useNumber=%v", tc.name, useNumber), func(t *testing.T) {
				q, err := Parse(tc.query)
				if err != nil {
					t.Fatalf("Parse(%q): %v", tc.query, err)
				}
				var docs []map[string]any
				for _, d := range fixture(t, q.Collection(), useNumber) {
					if q.Match(d) {
						docs = append(docs, d)
					}
				}
				rows, err := q.Project(docs)
				if err != nil {
					t.Fatalf("Project: %v", err)
				}
				if tc.want == "" { // SELECT TOP n *: the first n documents themselves
					if len(rows) != q.Top() {
						t.Fatalf("got %d rows, want %d", len(rows), q.Top())
					}
					for i, r := range rows {
						if m, ok := r.(map[string]any); !ok || reflect.ValueOf(m).Pointer() != reflect.ValueOf(docs[i]).Pointer() {
							t.Errorf("row %d is not document %d unchanged", i, i)
						}
					}
					return
				}
				got, err := json.Marshal(rows)
				if err != nil {
					t.Fatal(err)
				}
				if !jsonEqual(t, string(got), tc.want) {
					t.Errorf("%s\n got %s\nwant %s", tc.query, got, tc.want)
				}
			})
		}
	}
}

func TestProjectCountIsInt(t *testing.T) {
	q, err := Parse("SELECT COUNT() AS total FROM devices")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := q.Project(fixture(t, CollectionDevices, false))
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := rows[0].(map[string]any)["total"].(int); !ok || n != 6 {
		t.Errorf("total = %#v, want int 6", rows[0])
	}
}

func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatalf("bad JSON %s: %v", a, err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatalf("bad JSON %s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

var syntaxCases = []struct {
	name  string
	query string
	pos   int
	msg   string // substring of the message
}{
	{"empty", "", 1, "empty query"},
	{"blank", "   ", 1, "empty query"},
	{"not a select", "UPDATE devices", 1, `unexpected "UPDATE", expected SELECT`},
	{"select alone", "SELECT", 7, "unexpected end of query"},
	{"missing FROM", "SELECT * devices", 10, `unexpected "devices", expected FROM`},
	{"missing FROM after list", "SELECT deviceId devices", 17, `unexpected "devices", expected "," or FROM`},
	{"star with other items", "SELECT *, deviceId FROM devices", 9, `unexpected ",", expected FROM`},
	{"unknown collection", "SELECT * FROM things", 15, `unknown collection "things"`},
	{"unknown sub-collection", "SELECT * FROM devices.widgets", 15, `unknown collection "devices.widgets"`},
	{"where without condition", "SELECT * FROM devices WHERE", 28, "unexpected end of query, expected a value or property path"},
	{"trailing garbage", "SELECT * FROM devices WHERE status = 'enabled' garbage", 48, `unexpected "garbage"`},
	{"trailing garbage without where", "SELECT * FROM devices status = 'x'", 23, `unexpected "status", expected WHERE, GROUP BY or end of query`},
	{"unclosed parenthesis", "SELECT * FROM devices WHERE (status = 'enabled'", 48, `expected ")" to close "(" at position 29`},
	{"double equals", "SELECT * FROM devices WHERE status == 'x'", 37, `unexpected "="`},
	{"chained comparison", "SELECT * FROM devices WHERE tags.a = 1 = 2", 40, `unexpected "="`},
	{"unterminated single-quoted string", "SELECT * FROM devices WHERE deviceId = 'abc", 40, "unterminated string starting 'abc"},
	{"unterminated double-quoted string", `SELECT * FROM devices WHERE deviceId = "abc\"`, 40, "unterminated string"},
	{"invalid escape", `SELECT * FROM devices WHERE tags.a = 'a\qb'`, 40, `invalid escape "\\q"`},
	{"short unicode escape", `SELECT * FROM devices WHERE tags.a = '\u12'`, 39, `invalid escape "\\u12'"`},
	{"invalid hex", "SELECT * FROM devices WHERE tags.a = 0xZZ", 38, `invalid hex number "0xZ"`},
	{"number glued to letters", "SELECT * FROM devices WHERE tags.a = 12abc", 38, `invalid number "12abc"`},
	{"unexpected character", "SELECT * FROM devices WHERE status = 'a' & tags.x = 1", 42, `unexpected character '&'`},
	{"unknown function", "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'a')", 29, "unknown function STARTS_WITH"},
	{"aggregate in where", "SELECT * FROM devices WHERE COUNT() > 1", 29, "aggregate COUNT is only allowed in the select list"},
	{"IS_DEFINED needs a path", "SELECT * FROM devices WHERE IS_DEFINED('x')", 40, "unexpected string 'x', expected a property path in IS_DEFINED"},
	{"IN without array", "SELECT * FROM devices WHERE tags.env IN 'prod'", 41, "unexpected string 'prod', expected an array"},
	{"array not closed", "SELECT * FROM devices WHERE tags.env IN ['a' 'b']", 46, `unexpected string 'b', expected "," or "]" in array`},
	{"dangling dot", "SELECT * FROM devices WHERE tags. = 1", 35, `unexpected "=", expected a property name after "."`},
	{"keyword as value", "SELECT * FROM devices WHERE status = AND", 38, "unexpected keyword AND"},
	{"dangling NOT", "SELECT * FROM devices WHERE NOT", 32, "unexpected end of query"},
	{"TOP zero", "SELECT TOP 0 * FROM devices", 12, "unexpected number 0, expected a positive integer after TOP"},
	{"TOP fraction", "SELECT TOP 1.5 * FROM devices", 12, "positive integer after TOP"},
	{"TOP negative", "SELECT TOP -1 * FROM devices", 12, `unexpected "-", expected a positive integer after TOP`},
	{"ORDER BY", "SELECT * FROM devices WHERE status = 'enabled' ORDER BY deviceId", 48, "ORDER BY is not supported"},
	{"GROUP BY with star", "SELECT * FROM devices GROUP BY tags.env", 32, "GROUP BY cannot be used with SELECT *"},
	{"GROUP BY without BY", "SELECT COUNT() FROM devices GROUP tags.env", 35, `unexpected "tags", expected BY`},
	{"path outside GROUP BY", "SELECT deviceId, COUNT() AS n FROM devices", 8, "deviceId must be in GROUP BY"},
	{"path differs from GROUP BY", "SELECT tags.env, COUNT() FROM devices GROUP BY status", 8, "tags.env is not the GROUP BY path status"},
	{"COUNT with argument", "SELECT COUNT(deviceId) FROM devices", 14, "COUNT takes no argument"},
	{"unknown aggregate", "SELECT MEDIAN(tags.floor) FROM devices", 8, "unknown function MEDIAN"},
	{"duplicate output name", "SELECT deviceId, DeviceId FROM devices", 18, `duplicate output name "deviceId"`},
	{"alias must be a name", "SELECT deviceId AS 'x' FROM devices", 20, "expected an alias name after AS"},
	{"jobs only select all", "SELECT deviceId FROM devices.jobs", 8, "devices.jobs supports only SELECT *"},
	{"position counts characters", "SELECT * FROM devices WHERE tags.x = 'é✓' garbage", 43, `unexpected "garbage"`},
	{"too deep", "SELECT * FROM devices WHERE " + strings.Repeat("(", 300) + "1", 0, "nested too deeply"},
	{"too long", "SELECT * FROM devices WHERE tags.x = '" + strings.Repeat("x", MaxLength) + "'", MaxLength + 1, "limit of 8192 characters"},
}

func TestSyntaxErrors(t *testing.T) {
	for _, tc := range syntaxCases {
		t.Run(tc.name, func(t *testing.T) {
			q, err := Parse(tc.query)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error", tc.query, q)
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T %v is not a *SyntaxError", err, err)
			}
			if tc.pos != 0 && se.Pos != tc.pos {
				t.Errorf("Pos = %d, want %d (%v)", se.Pos, tc.pos, err)
			}
			if !strings.Contains(se.Msg, tc.msg) {
				t.Errorf("Msg = %q, want it to contain %q", se.Msg, tc.msg)
			}
			if prefix := fmt.Sprintf("syntax error at position %d: ", se.Pos); !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("Error() = %q, want prefix %q", err.Error(), prefix)
			}
		})
	}
}

func TestMaxLengthAccepted(t *testing.T) {
	base := "SELECT * FROM devices WHERE tags.x = ''"
	q := base[:len(base)-1] + strings.Repeat("é", MaxLength-len(base)) + "'"
	if _, err := Parse(q); err != nil {
		t.Fatalf("query of exactly %d characters rejected: %v", MaxLength, err)
	}
}
