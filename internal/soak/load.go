package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// callTimeout bounds each service call of the load. A call in flight when
// the load ends is finished, not cancelled.
const callTimeout = 15 * time.Second

// load runs the method callers, the desired-patch writers and the
// reported-patch pacer until ctx ends; the channel is closed once they
// have all returned (reported patches may still be waiting: see drain).
func (f *fleet) load(ctx context.Context, svc *service.Client) <-chan struct{} {
	var wg sync.WaitGroup
	methods := rate.NewLimiter(rate.Limit(f.cfg.MethodRate), 1)
	desired := rate.NewLimiter(rate.Limit(f.cfg.DesiredRate), 1)
	for w := range f.cfg.Workers {
		wg.Go(func() {
			for methods.Wait(ctx) == nil {
				f.call(ctx, svc, f.members[rand.N(len(f.members))])
			}
		})
		// Each desired writer owns the devices w, w+Workers, …: one patch
		// per device at a time, so a device's patches arrive in order.
		var own []*member
		for i := w; i < len(f.members); i += f.cfg.Workers {
			own = append(own, f.members[i])
		}
		if len(own) == 0 {
			continue
		}
		wg.Go(func() {
			for i := 0; desired.Wait(ctx) == nil; i++ {
				f.writeDesired(ctx, svc, own[i%len(own)])
			}
		})
	}
	wg.Go(func() { f.paceReported(ctx) })
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	return done
}

// call invokes the soak method on m and checks that the answer is m's
// echo of the payload.
func (f *fleet) call(ctx context.Context, svc *service.Client, m *member) {
	iv := f.stats.index(time.Now())
	seq := f.callSeq.Add(1)
	payload := fmt.Appendf(nil, `{"seq":%d}`, seq)
	timeout := 10
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	res, err := svc.InvokeMethod(cctx, m.id, iothub.MethodRequest{MethodName: methodName, Payload: payload, ResponseTimeoutInSeconds: &timeout})
	reason := ""
	switch {
	case err != nil:
		reason = failReason(err)
	case res.Status != 200:
		reason = fmt.Sprintf("device answered %d", res.Status)
	default:
		var got struct{ Seq int64 }
		if json.Unmarshal(res.Payload, &got) != nil || got.Seq != seq {
			reason = "wrong answer"
		}
	}
	f.stats.at(iv, func(i *Interval) {
		i.Calls++
		if reason != "" {
			i.CallsFailed++
			i.fail("method: " + reason)
		}
	})
}

// writeDesired sends m's next desired patch; a 200 is an acknowledged write.
func (f *fleet) writeDesired(ctx context.Context, svc *service.Client, m *member) {
	iv := f.stats.index(time.Now())
	m.mu.Lock()
	m.desiredSeq++
	seq := m.desiredSeq
	m.desiredSent[seq%Keys] = seq
	m.mu.Unlock()
	patch := fmt.Appendf(nil, `{%q:%d}`, key(seq), seq)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	_, err := svc.UpdateTwin(cctx, m.id, service.TwinPatch{Desired: patch}, "")
	if err == nil {
		m.mu.Lock()
		m.desiredAcks = append(m.desiredAcks, ack{seq: seq, iv: iv})
		m.mu.Unlock()
	}
	f.stats.at(iv, func(i *Interval) {
		i.Desired++
		if err != nil {
			i.DesiredFailed++
			i.fail("desired patch: " + failReason(err))
		} else {
			i.DesiredAcked++
		}
	})
}

// paceReported queues reported patches at ReportedRate, round-robin over
// the devices that have none waiting.
func (f *fleet) paceReported(ctx context.Context) {
	lim := rate.NewLimiter(rate.Limit(f.cfg.ReportedRate), 1)
	next := 0
	for lim.Wait(ctx) == nil {
		for range len(f.members) {
			m := f.members[next]
			next = (next + 1) % len(f.members)
			if m.reporting.CompareAndSwap(false, true) {
				f.queueReported(m)
				break
			}
		}
		// Every device has a patch waiting (the hub is down): this slot
		// is skipped.
	}
}

func (f *fleet) queueReported(m *member) {
	iv := f.stats.index(time.Now())
	m.mu.Lock()
	m.reportedSeq++
	seq := m.reportedSeq
	m.reportedSent[seq%Keys] = seq
	m.mu.Unlock()
	ch, err := m.conn.Queue(fmt.Appendf(nil, `{%q:%d}`, key(seq), seq))
	f.stats.at(iv, func(i *Interval) { i.Reported++ })
	if err != nil {
		m.reporting.Store(false)
		f.stats.at(iv, func(i *Interval) { i.fail("reported patch: " + err.Error()) })
		return
	}
	f.waiters.Go(func() {
		defer m.reporting.Store(false)
		select {
		case err := <-ch:
			if err != nil {
				f.stats.now(func(i *Interval) { i.fail("reported patch: refused") })
				return
			}
			now := time.Now()
			ai := f.stats.index(now)
			m.mu.Lock()
			m.reportedAcks = append(m.reportedAcks, ack{seq: seq, iv: ai})
			m.mu.Unlock()
			f.stats.at(ai, func(i *Interval) { i.ReportedAcked++ })
		case <-f.drainCtx.Done():
			f.unacked.Add(1)
		}
	})
}

// failReason names why a service call failed, for the failure counts.
func failReason(err error) string {
	var ae *service.APIError
	switch {
	case errors.Is(err, service.ErrDeviceNotOnline):
		return "device not online (404103)"
	case errors.Is(err, service.ErrMethodTimeout):
		return "method timeout (504)"
	case errors.As(err, &ae):
		return fmt.Sprintf("HTTP %d", ae.Status)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (hub down)"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE):
		return "connection lost"
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer within " + callTimeout.String()
	default:
		return "other"
	}
}

// verify reads every twin back and counts the acknowledged writes it does
// not hold.
func (f *fleet) verify(ctx context.Context, svc *service.Client, rep *Report) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	work := make(chan *member)
	for range 8 {
		wg.Go(func() {
			for m := range work {
				t, err := svc.Twin(ctx, m.id)
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					continue
				}
				m.mu.Lock()
				lostD, unexpD := check(t.Properties.Desired, m.desiredSent, m.desiredAcks)
				lostR, unexpR := check(t.Properties.Reported, m.reportedSent, m.reportedAcks)
				acked := len(m.desiredAcks) + len(m.reportedAcks)
				m.mu.Unlock()
				for _, iv := range append(lostD, lostR...) {
					f.stats.at(iv, func(i *Interval) { i.LostAcked++ })
				}
				mu.Lock()
				rep.AckedWrites += acked
				rep.Unexpected += unexpD + unexpR
				mu.Unlock()
			}
		})
	}
	for _, m := range f.members {
		select {
		case work <- m:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("soak: reading the twins back: %w", firstErr)
	}
	return ctx.Err()
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// check compares one twin section with the writes sent to it: it returns
// the intervals of the acknowledged writes the section does not hold (its
// key is missing or holds an older sequence number), and how many keys hold
// a value no write sent.
func check(section map[string]any, sent [Keys]int64, acks []ack) (lost []int, unexpected int) {
	var stored [Keys]int64 // 0: absent
	for k := range int64(Keys) {
		v, ok := section[key(k)]
		if !ok {
			continue
		}
		n, isNum := v.(float64)
		if !isNum || n != float64(int64(n)) || int64(n) <= 0 || int64(n)%Keys != k || int64(n) > sent[k] {
			unexpected++
			continue
		}
		stored[k] = int64(n)
	}
	for _, a := range acks {
		if stored[a.seq%Keys] < a.seq {
			lost = append(lost, a.iv)
		}
	}
	return lost, unexpected
}
