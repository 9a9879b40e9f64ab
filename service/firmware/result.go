package firmware

import (
	"fmt"
	"time"
)

// Stage names a step of Run.
type Stage int

const (
	StageDevices     Stage = iota + 1 // the matching devices were read
	StageWaveStarted                  // a wave's configurations were created
	StageWavePolled                   // one round of progress queries finished
	StageWaveDone                     // no device of the wave is pending
	StageStopped                      // the campaign stopped before its end
)

// Progress reports one step of Run.
type Progress struct {
	Stage     Stage
	Devices   int // devices the condition matched
	Wave      int // current wave (1-based), 0 before the first
	Waves     int // waves planned
	WaveSize  int
	ConfigIDs []string // the wave's configurations
	Counts    Counts   // the wave's devices
	Elapsed   time.Duration
	Err       error  // a failed poll (StageWavePolled); the campaign keeps going
	Reason    string // StageStopped: why
}

// Counts counts devices by outcome and by status (StatusWaiting or the
// reported fwUpdateStatus).
type Counts struct {
	Current    int            `json:"current"`
	Failed     int            `json:"failed"`
	Overridden int            `json:"overridden"`
	Pending    int            `json:"pending"`
	ByStatus   map[string]int `json:"byStatus"`
}

func (c *Counts) add(d Device) {
	switch d.Outcome {
	case OutcomeCurrent:
		c.Current++
	case OutcomeFailed:
		c.Failed++
	case OutcomeOverridden:
		c.Overridden++
	default:
		c.Pending++
	}
	if c.ByStatus == nil {
		c.ByStatus = map[string]int{}
	}
	c.ByStatus[d.Status]++
}

// WaveResult is one wave's outcome.
type WaveResult struct {
	Wave        int
	ConfigIDs   []string // the configurations created
	Size        int      // devices targeted
	Counts      Counts
	FailureRate float64 // Counts.Failed / Size
	Duration    time.Duration
	devices     []Device
}

// Result is a campaign's outcome.
type Result struct {
	Condition  string
	Version    string
	PackageURI string
	Checksum   string
	IDPrefix   string
	Devices    int // matched by the condition
	Planned    int // waves planned
	Waves      []WaveResult
	NotStarted int // devices of waves never started
	Counts     Counts
	Aborted    bool // stopped by the failure rule
	TimedOut   bool
	StopReason string
	Duration   time.Duration
	// DeviceList is every device of the started waves, in wave order.
	DeviceList []Device
}

func (r *Result) finish(d time.Duration) {
	r.Duration = d
	r.Counts = Counts{ByStatus: map[string]int{}}
	for _, w := range r.Waves {
		for _, dev := range w.devices {
			r.Counts.add(dev)
			r.DeviceList = append(r.DeviceList, dev)
		}
	}
}

// err is Run's error for a finished result; err is what ended the waves.
func (r *Result) err(err error) error {
	sum := fmt.Sprintf("%d of %d devices current on %s, %d failed, %d overridden, %d pending, %d not started",
		r.Counts.Current, r.Devices, r.Version, r.Counts.Failed, r.Counts.Overridden, r.Counts.Pending, r.NotStarted)
	switch {
	case r.Aborted:
		return fmt.Errorf("firmware campaign: %w (%s): %s", ErrAborted, r.StopReason, sum)
	case r.TimedOut:
		return fmt.Errorf("firmware campaign: %w after %s: %s", ErrTimedOut, r.Duration.Round(time.Second), sum)
	case err != nil:
		return err
	case r.Counts.Failed > 0:
		return fmt.Errorf("firmware campaign: %w: %s", ErrSomeFailed, sum)
	case r.Counts.Overridden > 0:
		return fmt.Errorf("firmware campaign: %w: %s", ErrOverridden, sum)
	}
	return nil
}
