package wsstream

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// pair returns a client Conn and the server's raw WebSocket.
func pair(t *testing.T) (*Conn, *websocket.Conn) {
	t.Helper()
	got := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		got <- ws
	}))
	t.Cleanup(srv.Close)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := New(ws, time.Second)
	t.Cleanup(func() { c.Close() })
	select {
	case s := <-got:
		t.Cleanup(func() { s.Close() })
		return c, s
	case <-time.After(5 * time.Second):
		t.Fatal("the server never upgraded the connection within 5s")
		return nil, nil
	}
}

func TestReadAcrossMessages(t *testing.T) {
	c, s := pair(t)
	for _, m := range []string{"ab", "", "cde", "f"} {
		if err := s.WriteMessage(websocket.BinaryMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "abcdef" {
		t.Fatalf("read %q, %v; want the messages as one stream \"abcdef\"", buf, err)
	}
	if err := s.WriteMessage(websocket.TextMessage, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); !errors.Is(err, ErrTextFrame) {
		t.Fatalf("a text frame read as %v, want ErrTextFrame", err)
	}
}

func TestWriteIsOneBinaryMessage(t *testing.T) {
	c, s := pair(t)
	if n, err := c.Write([]byte("packet")); n != 6 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	mt, b, err := s.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage || string(b) != "packet" {
		t.Fatalf("server read type %d %q, %v; want one binary message \"packet\"", mt, b, err)
	}
}
