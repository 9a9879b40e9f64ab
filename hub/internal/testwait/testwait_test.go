package testwait

import (
	"sync"
	"testing"
)

func TestRecvAndGroup(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if got := Recv(t, ch, "a value"); got != 7 {
		t.Fatalf("Recv = %d", got)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go wg.Done()
	Group(t, &wg, "the goroutine")
	n := 0
	Until(t, "three polls", func() bool { n++; return n == 3 })
}
