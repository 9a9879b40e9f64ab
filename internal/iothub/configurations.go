package iothub

// Configuration is an automatic device (or module) management
// configuration, as GET|PUT /configurations/{id} render it.
type Configuration struct {
	ID                 string                `json:"id"`
	SchemaVersion      string                `json:"schemaVersion,omitempty"`
	Labels             map[string]string     `json:"labels,omitempty"`
	Content            ConfigurationContent  `json:"content"`
	ContentType        string                `json:"contentType,omitempty"`
	TargetCondition    string                `json:"targetCondition"`
	CreatedTimeUtc     string                `json:"createdTimeUtc,omitempty"`
	LastUpdatedTimeUtc string                `json:"lastUpdatedTimeUtc,omitempty"`
	Priority           int                   `json:"priority"`
	SystemMetrics      *ConfigurationMetrics `json:"systemMetrics,omitempty"`
	Metrics            *ConfigurationMetrics `json:"metrics,omitempty"`
	ETag               string                `json:"etag,omitempty"`
}

// ConfigurationContent is what a configuration applies: deviceContent and
// moduleContent map twin paths ("properties.desired.firmware") to values;
// modulesContent is an edge deployment's, stored and returned as given.
type ConfigurationContent struct {
	DeviceContent  map[string]any `json:"deviceContent,omitempty"`
	ModuleContent  map[string]any `json:"moduleContent,omitempty"`
	ModulesContent map[string]any `json:"modulesContent,omitempty"`
}

// ConfigurationMetrics holds metric queries by name and their results
// (the number of twins each query counts).
type ConfigurationMetrics struct {
	Results map[string]int64  `json:"results"`
	Queries map[string]string `json:"queries"`
}

// System metric names.
const (
	MetricTargetedCount = "targetedCount"
	MetricAppliedCount  = "appliedCount"
)

// The status a twin shows for a configuration in configurations.[[id]].status,
// capitalised as IoT Hub's metric queries spell them
// ("configurations.[[id]].status = 'Applied'").
const (
	ConfigurationTargeted = "Targeted"
	ConfigurationApplied  = "Applied"
)

// ConfigurationQueriesTestInput is the body of POST /configurations/testQueries.
type ConfigurationQueriesTestInput struct {
	TargetCondition     string            `json:"targetCondition,omitempty"`
	CustomMetricQueries map[string]string `json:"customMetricQueries,omitempty"`
}

// ConfigurationQueriesTestResponse is the answer to POST
// /configurations/testQueries: empty errors mean the queries are valid.
type ConfigurationQueriesTestResponse struct {
	TargetConditionError    string            `json:"targetConditionError"`
	CustomMetricQueryErrors map[string]string `json:"customMetricQueryErrors"`
}

// MaxConfigurations is how many configurations a hub holds (IoT Hub's
// limit for automatic device management on standard tiers).
const MaxConfigurations = 100

// Firmware update twin schema (the Azure firmware-update tutorial's): the
// desired "firmware" object starts an update, the reported one tracks it.
const (
	FirmwareProperty = "firmware"

	// desired
	FwVersion           = "fwVersion"
	FwPackageURI        = "fwPackageURI"
	FwPackageCheckValue = "fwPackageCheckValue"

	// reported
	CurrentFwVersion      = "currentFwVersion"
	PendingFwVersion      = "pendingFwVersion"
	FwUpdateStatus        = "fwUpdateStatus"
	FwUpdateSubstatus     = "fwUpdateSubstatus"
	LastFwUpdateStartTime = "lastFwUpdateStartTime"
	LastFwUpdateEndTime   = "lastFwUpdateEndTime"
)

// Values of reported firmware.fwUpdateStatus.
const (
	FwStatusCurrent     = "current"
	FwStatusDownloading = "downloading"
	FwStatusVerifying   = "verifying"
	FwStatusApplying    = "applying"
	FwStatusRebooting   = "rebooting"
	FwStatusError       = "error"
	FwStatusRolledBack  = "rolledback"
)
