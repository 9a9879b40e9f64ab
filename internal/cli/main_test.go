package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

var update = flag.Bool("update", false, "rewrite testscript golden sections")

// repoRoot is the module root, seen from this package's folder (where go test
// runs its tests); readmePath is the README the tests keep honest.
const repoRoot = "../.."

var readmePath = filepath.Join(repoRoot, "README.md")

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"dmctl": func() {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			go scriptWatchdog(ctx)
			code := Main(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
			stop()
			os.Exit(code)
		},
	})
}

// Bounds on a dmctl process started by a script. testscript's 'wait'
// (and a shell's) has no deadline of its own: a dmctl that ignored SIGINT,
// or a foreground command that never returned, would hang the script until
// go test's 10-minute panic.
const (
	scriptExitGrace = 15 * time.Second // from SIGINT/SIGTERM to exit
	scriptMaxRun    = 3 * time.Minute  // any dmctl run in a script
	exitWatchdog    = 124
)

// scriptWatchdog ends this dmctl process when it outlives a bound, saying
// which, with its goroutines for the failure report.
func scriptWatchdog(ctx context.Context) {
	select {
	case <-ctx.Done():
		time.Sleep(scriptExitGrace)
		fmt.Fprintf(os.Stderr, "dmctl: test watchdog: still running %v after SIGINT/SIGTERM; the script waited for it to exit\n", scriptExitGrace)
	case <-time.After(scriptMaxRun):
		fmt.Fprintf(os.Stderr, "dmctl: test watchdog: still running after %v, longer than any script step may take\n", scriptMaxRun)
	}
	_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
	os.Exit(exitWatchdog)
}

func TestScript(t *testing.T) {
	testscript.Run(t, scriptParams(t))
}

func scriptParams(t *testing.T) testscript.Params {
	return testscript.Params{
		Dir:           "testdata/script",
		UpdateScripts: *update,
		Setup:         func(env *testscript.Env) error { return setupScript(t, env) },
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode":    cmdExitCode,
			"waitfile":    cmdWaitFile,
			"adddevice":   cmdAddDevice,
			"hubwait":     cmdHubWait,
			"readmeblock": cmdReadmeBlock,
			"mutedevice":  cmdMuteDevice,
		},
	}
}

// cmdExitCode runs a program and checks its exit code:
//
//	exitcode 4 dmctl service reboot --device nope
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode CODE program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: bad code %q", args[0])
	}
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		ts.Fatalf("exitcode: %v", err)
	}
	if got != want {
		ts.Fatalf("exit code %d, want %d", got, want)
	}
}

// cmdWaitFile waits until a file exists and is not empty:
//
//	waitfile $WORK/ready [timeout]
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: waitfile FILE [timeout]")
	}
	timeout := timeoutArg(ts, args, 1)
	file := ts.MkAbs(args[0])
	deadline := time.Now().Add(timeout)
	for {
		if fi, err := os.Stat(file); err == nil && fi.Size() > 0 {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitfile: %s did not appear within %v", args[0], timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// timeoutArg is the optional timeout argument args[i] of a custom
// command: 30s when it is absent.
func timeoutArg(ts *testscript.TestScript, args []string, i int) time.Duration {
	if len(args) <= i {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(args[i])
	ts.Check(err)
	return d
}

type hubKey struct{}

// setupScript gives every script a clean environment (no connection strings
// leak in from the developer's shell) and its own local hub on a loopback
// port: $HUB_CS is its owner connection string, $HUB_HOST its HostName,
// $DMCTL_CA_FILE its CA.
func setupScript(t *testing.T, env *testscript.Env) error {
	h := hubtest.NewServer(t)
	env.Defer(func() { _ = h.Close() })
	env.Values[hubKey{}] = h
	env.Setenv("HUB_CS", h.ServiceConnectionString())
	repo, err := filepath.Abs(repoRoot)
	if err != nil {
		return err
	}
	env.Setenv("REPO", repo)
	env.Setenv("HUB_HOST", h.HostName())
	for _, k := range []string{"IOTHUB_CONNECTION_STRING", "IOTHUB_DEVICE_CONNECTION_STRING", "DMCTL_CA_FILE", "DMCTL_LOG_LEVEL", "DMCTL_LOG_FORMAT", "DMCTL_SECONDARY_KEY", "HTTPS_PROXY", "https_proxy"} {
		env.Setenv(k, "")
	}
	env.Setenv("DMCTL_CA_FILE", h.CAFile())
	return nil
}

func scriptHub(ts *testscript.TestScript) *hubtest.Server {
	return ts.Value(hubKey{}).(*hubtest.Server)
}

// cmdAddDevice registers a device on the script's hub and sets $DEVICE_CS
// (and $DEVICE_CS_<NAME>) to its connection string:
//
//	adddevice d1
func cmdAddDevice(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: adddevice NAME")
	}
	h := scriptHub(ts)
	d, err := h.Store().CreateDevice(iothub.Device{DeviceID: args[0]})
	ts.Check(err)
	cs := h.DeviceConnectionString(d)
	ts.Setenv("DEVICE_CS", cs)
	ts.Setenv("DEVICE_CS_"+args[0], cs)
}

// cmdHubWait waits until a device is connected (with its direct-method
// subscription in place) or disconnected:
//
//	hubwait connected d1 [timeout]
//	hubwait disconnected d1 [timeout]
func cmdHubWait(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: hubwait connected|disconnected DEVICE [timeout]")
	}
	timeout := timeoutArg(ts, args, 2)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	h := scriptHub(ts)
	var err error
	switch args[0] {
	case "connected":
		err = h.WaitSubscribed(ctx, args[1], iothub.MethodRequestTopic("rebootDevice", "1"))
	case "disconnected":
		err = h.WaitConnected(ctx, args[1], false)
	default:
		ts.Fatalf("hubwait: want connected or disconnected, got %q", args[0])
	}
	if err != nil {
		ts.Fatalf("hubwait %s %s: %v", args[0], args[1], err)
	}
}

// cmdReadmeBlock writes the code block of README.md that sits between
// "<!-- NAME:begin -->" and "<!-- NAME:end -->" to FILE, so scripts run the
// README's examples exactly as printed:
//
//	readmeblock local-hub $WORK/example.sh
func cmdReadmeBlock(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: readmeblock NAME FILE")
	}
	block, err := readmeBlock(filepath.Join(ts.Getenv("REPO"), "README.md"), args[0])
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(block), 0o644))
}

// readmeBlock extracts the fenced code of a marked README section.
func readmeBlock(path, name string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	text := string(data)
	_, rest, ok := strings.Cut(text, "<!-- "+name+":begin -->")
	if !ok {
		return "", fmt.Errorf("README has no %q block", name)
	}
	section, _, ok := strings.Cut(rest, "<!-- "+name+":end -->")
	if !ok {
		return "", fmt.Errorf("README block %q is not closed", name)
	}
	_, code, ok := strings.Cut(section, "```sh\n")
	if !ok {
		return "", fmt.Errorf("README block %q has no sh code", name)
	}
	code, _, ok = strings.Cut(code, "```")
	if !ok {
		return "", fmt.Errorf("README block %q: unterminated code", name)
	}
	return code, nil
}

// TestReadme keeps the README's promises checkable: its first lines are the
// two commands for a fresh machine, and the CI recipe it prints is the
// script the test suite runs.
func TestReadme(t *testing.T) {
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 6 || lines[2] != "```sh" || !strings.HasPrefix(lines[3], "go run . demo ") || !strings.HasPrefix(lines[4], "go test -race ./... ") || lines[5] != "```" {
		t.Fatalf("README must open with the two commands (go run . demo, go test -race ./...); got:\n%s", strings.Join(lines[:min(len(lines), 6)], "\n"))
	}
	block, err := readmeBlock(readmePath, "ci-smoke")
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join(repoRoot, "scripts", "ci-smoke.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if block != string(script) {
		t.Fatalf("README's CI smoke block differs from scripts/ci-smoke.sh")
	}
}

// cmdMuteDevice connects device NAME (registered with adddevice) as a bare
// MQTT client that subscribes to direct methods and never answers them, for
// the method-timeout exit code. It disconnects when the script ends:
//
//	mutedevice d1
func cmdMuteDevice(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: mutedevice NAME")
	}
	h := scriptHub(ts)
	cs, err := sas.ParseDevice(ts.Getenv("DEVICE_CS_" + args[0]))
	ts.Check(err)
	tok, err := cs.Token(time.Now().Add(time.Hour))
	ts.Check(err)
	opts := paho.NewClientOptions().
		AddBroker("tls://" + h.Addr()).
		SetClientID(cs.DeviceID).
		SetUsername(iothub.Username(cs.HostName, cs.DeviceID, "", "mutedevice")).
		SetPassword(tok).
		SetTLSConfig(&tls.Config{RootCAs: h.CAPool(), ServerName: "localhost"}).
		SetAutoReconnect(false)
	cl := paho.NewClient(opts)
	if tk := cl.Connect(); !tk.WaitTimeout(30*time.Second) || tk.Error() != nil {
		ts.Fatalf("mutedevice: connect: %v", tk.Error())
	}
	ts.Defer(func() { cl.Disconnect(100) })
	if tk := cl.Subscribe(iothub.MethodsFilter, 0, func(paho.Client, paho.Message) {}); !tk.WaitTimeout(30*time.Second) || tk.Error() != nil {
		ts.Fatalf("mutedevice: subscribe: %v", tk.Error())
	}
}
