package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// Job errors; callers match them with errors.Is.
var (
	ErrJobNotFound = errors.New("store: job not found")
	ErrJobExists   = errors.New("store: job already exists")
)

var (
	bucketJobs    = []byte("jobs")
	bucketJobRows = []byte("jobrows") // key: jobId "\x00" deviceId
)

func rowKey(jobID, deviceID string) []byte {
	k := make([]byte, 0, len(jobID)+1+len(deviceID))
	k = append(k, jobID...)
	k = append(k, 0)
	return append(k, deviceID...)
}

// jobTx runs fn in a read-write transaction on the job buckets (created on
// first use). The transaction is committed, and synced, before jobTx returns.
func (s *Store) jobTx(fn func(jobs, rows *bolt.Bucket) error) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		jb, err := tx.CreateBucketIfNotExists(bucketJobs)
		if err != nil {
			return err
		}
		rb, err := tx.CreateBucketIfNotExists(bucketJobRows)
		if err != nil {
			return err
		}
		return fn(jb, rb)
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// jobView runs fn in a read-only transaction; the buckets are nil when no
// job was ever stored.
func (s *Store) jobView(fn func(jobs, rows *bolt.Bucket) error) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		return fn(tx.Bucket(bucketJobs), tx.Bucket(bucketJobRows))
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

func putJob(b *bolt.Bucket, j *iothub.JobResponse) error {
	v, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("store: encode job %q: %w", j.JobID, err)
	}
	if err := b.Put([]byte(j.JobID), v); err != nil {
		return fmt.Errorf("store: write job %q: %w", j.JobID, err)
	}
	return nil
}

func putRow(b *bolt.Bucket, r *iothub.DeviceJob) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode row %q of job %q: %w", r.DeviceID, r.JobID, err)
	}
	if err := b.Put(rowKey(r.JobID, r.DeviceID), v); err != nil {
		return fmt.Errorf("store: write row %q of job %q: %w", r.DeviceID, r.JobID, err)
	}
	return nil
}

// CreateJob stores a new job (ErrJobExists if the id is taken), durably.
func (s *Store) CreateJob(j iothub.JobResponse) error {
	if j.JobID == "" {
		return invalid("jobId is empty")
	}
	return s.jobTx(func(jobs, _ *bolt.Bucket) error {
		if jobs.Get([]byte(j.JobID)) != nil {
			return fmt.Errorf("%w: %q", ErrJobExists, j.JobID)
		}
		return putJob(jobs, &j)
	})
}

// WriteJob stores job (when not nil; it must exist, ErrJobNotFound) and
// upserts rows, all in one durable transaction.
func (s *Store) WriteJob(job *iothub.JobResponse, rows []iothub.DeviceJob) error {
	return s.jobTx(func(jobs, rb *bolt.Bucket) error {
		if job != nil {
			if jobs.Get([]byte(job.JobID)) == nil {
				return fmt.Errorf("%w: %q", ErrJobNotFound, job.JobID)
			}
			if err := putJob(jobs, job); err != nil {
				return err
			}
		}
		for i := range rows {
			if rows[i].JobID == "" || rows[i].DeviceID == "" {
				return invalid("device job row without jobId or deviceId")
			}
			if err := putRow(rb, &rows[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Job returns the stored job id (ErrJobNotFound).
func (s *Store) Job(id string) (iothub.JobResponse, error) {
	var j iothub.JobResponse
	err := s.jobView(func(jobs, _ *bolt.Bucket) error {
		var v []byte
		if jobs != nil {
			v = jobs.Get([]byte(id))
		}
		if v == nil {
			return fmt.Errorf("%w: %q", ErrJobNotFound, id)
		}
		if err := json.Unmarshal(v, &j); err != nil {
			return fmt.Errorf("store: job %q: %w", id, err)
		}
		return nil
	})
	return j, err
}

// Jobs returns every stored job, oldest first (ties in jobId order).
func (s *Store) Jobs() ([]iothub.JobResponse, error) {
	var out []iothub.JobResponse
	err := s.jobView(func(jobs, _ *bolt.Bucket) error {
		if jobs == nil {
			return nil
		}
		return jobs.ForEach(func(k, v []byte) error {
			var j iothub.JobResponse
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("store: job %q: %w", k, err)
			}
			out = append(out, j)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].CreatedTime.Before(out[b].CreatedTime) })
	return out, nil
}

// JobRows returns the rows of job jobID in deviceId order (none for an
// unknown job).
func (s *Store) JobRows(jobID string) ([]iothub.DeviceJob, error) {
	var out []iothub.DeviceJob
	prefix := rowKey(jobID, "")
	err := s.jobView(func(_, rows *bolt.Bucket) error {
		if rows == nil {
			return nil
		}
		c := rows.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r iothub.DeviceJob
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: row %q: %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// rowChunk is how many rows ForEachJobRow reads per transaction.
const rowChunk = 512

// ForEachJobRow calls fn with every device job row, in jobId then deviceId
// order, until fn returns false. Rows are read in chunks, each in its own
// transaction, and fn runs outside any transaction (it may use the store).
func (s *Store) ForEachJobRow(fn func(iothub.DeviceJob) bool) error {
	var after []byte
	for {
		var chunk []iothub.DeviceJob
		var last []byte
		err := s.jobView(func(_, rows *bolt.Bucket) error {
			if rows == nil {
				return nil
			}
			c := rows.Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else {
				k, v = c.Seek(after)
				if k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(chunk) < rowChunk; k, v = c.Next() {
				var r iothub.DeviceJob
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("store: row %q: %w", k, err)
				}
				chunk = append(chunk, r)
				last = append(last[:0], k...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range chunk {
			if !fn(r) {
				return nil
			}
		}
		if len(chunk) < rowChunk {
			return nil
		}
		after = last
	}
}
