package rollout

import (
	"fmt"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Stage names a step of Run.
type Stage int

const (
	StageBaseline     Stage = iota + 1 // the devices and their rebootTime baselines were read
	StageWaveStarted                   // a wave's job was created
	StageWavePolled                    // one round of job status and confirmation queries finished
	StageWaveDone                      // a wave's outcomes are final
	StageStoppedEarly                  // the rollout stopped before its last wave
)

func (s Stage) String() string {
	switch s {
	case StageBaseline:
		return "baseline"
	case StageWaveStarted:
		return "wave-started"
	case StageWavePolled:
		return "wave-polled"
	case StageWaveDone:
		return "wave-done"
	case StageStoppedEarly:
		return "stopped"
	}
	return fmt.Sprintf("Stage(%d)", int(s))
}

// Progress reports one step of Run. Counts hold only the devices of the
// current wave whose outcome is known.
type Progress struct {
	Stage     Stage
	Devices   int // devices the condition matched
	Wave      int // current wave (1-based), 0 before the first
	Waves     int // waves planned
	WaveSize  int
	JobIDs    []string             // the wave's jobs
	JobStatus string               // their status (see WaveResult.JobStatus)
	Stats     iothub.JobStatistics // their statistics, summed
	Counts    Counts               // outcomes known so far in this wave
	Elapsed   time.Duration
	Err       error  // a failed poll (StageWavePolled), kept going
	Reason    string // StageStoppedEarly: why
}
