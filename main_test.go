package main

import (
	"errors"
	"flag"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

var update = flag.Bool("update", false, "rewrite testscript golden sections")

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"dmctl": func() {
			os.Exit(run())
		},
	})
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
			"exitcode": cmdExitCode,
			"waitfile": cmdWaitFile,
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
	timeout := 30 * time.Second
	if len(args) == 2 {
		d, err := time.ParseDuration(args[1])
		ts.Check(err)
		timeout = d
	}
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

// setupScript gives every script a clean environment: no connection strings
// leak in from the developer's shell.
func setupScript(t *testing.T, env *testscript.Env) error {
	for _, k := range []string{"IOTHUB_CONNECTION_STRING", "IOTHUB_DEVICE_CONNECTION_STRING", "DMCTL_CA_FILE", "DMCTL_LOG_LEVEL", "DMCTL_LOG_FORMAT", "DMCTL_SECONDARY_KEY", "HTTPS_PROXY", "https_proxy"} {
		env.Setenv(k, "")
	}
	return nil
}
