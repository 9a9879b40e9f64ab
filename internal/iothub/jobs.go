package iothub

// Job types (JobResponse.type) of IoT Hub jobs v2.
const (
	JobTypeDeviceMethod = "scheduleDeviceMethod"
	JobTypeUpdateTwin   = "scheduleUpdateTwin"
)

// Job statuses (JobResponse.status). IoT Hub also documents "unknown" and
// "enqueued".
const (
	JobQueued    = "queued"
	JobScheduled = "scheduled"
	JobRunning   = "running"
	JobCompleted = "completed"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// Device job (row) statuses, as devices.jobs queries return them. Rows are
// "canceled", jobs "cancelled", as on IoT Hub.
const (
	RowPending   = "pending"
	RowScheduled = "scheduled"
	RowRunning   = "running"
	RowCompleted = "completed"
	RowFailed    = "failed"
	RowCanceled  = "canceled"
)

// MaxJobIDLength is the longest jobId IoT Hub accepts.
const MaxJobIDLength = 64
