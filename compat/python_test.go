package compat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// The Python half of the suite runs the official azure-iot-device and
// azure-iot-hub packages, pinned in compat/python/requirements.txt and
// installed into compat/python/.venv the first time a test needs them (again
// whenever the requirements change). A missing Python or a failed install
// fails the tests that need it; nothing is skipped.

var python struct {
	once sync.Once
	bin  string // the virtual environment's interpreter
	err  error
}

// pythonDir is compat/python.
func pythonDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "python")
}

// requirePython returns the interpreter of the virtual environment with the
// pinned SDKs, creating it on first use.
func requirePython(t *testing.T) string {
	t.Helper()
	python.once.Do(func() { python.bin, python.err = setupPython() })
	if python.err != nil {
		t.Fatalf("the Python compatibility suite cannot run: %v", python.err)
	}
	return python.bin
}

// minPython is the oldest CPython the pinned SDKs support.
var minPython = [2]int{3, 8}

func setupPython() (string, error) {
	system := os.Getenv("COMPAT_PYTHON")
	if system == "" {
		system = "python3"
	}
	if _, err := exec.LookPath(system); err != nil {
		return "", fmt.Errorf("%s is not on PATH: the suite runs the official Azure IoT Python SDKs on CPython %d.%d or newer with its venv module (or set COMPAT_PYTHON)", system, minPython[0], minPython[1])
	}
	if err := checkPythonVersion(system); err != nil {
		return "", err
	}
	dir := pythonDir()
	req, err := os.ReadFile(filepath.Join(dir, "requirements.txt"))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(req)
	want := hex.EncodeToString(sum[:])
	venv := filepath.Join(dir, ".venv")
	bin := filepath.Join(venv, "bin", "python")
	stamp := filepath.Join(venv, "requirements.sha256")
	if have, err := os.ReadFile(stamp); err == nil && string(have) == want {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	fmt.Fprintf(os.Stderr, "compat: installing the pinned Python packages into %s\n", venv)
	if err := os.RemoveAll(venv); err != nil {
		return "", err
	}
	if out, err := runSetup(2*time.Minute, system, "-m", "venv", venv); err != nil {
		return "", fmt.Errorf("creating the virtual environment (%s -m venv; on Debian install python3-venv): %v\n%s", system, err, out)
	}
	if out, err := runSetup(8*time.Minute, bin, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet",
		"-r", filepath.Join(dir, "requirements.txt")); err != nil {
		return "", fmt.Errorf("pip install -r compat/python/requirements.txt: %v\n%s", err, out)
	}
	if err := os.WriteFile(stamp, []byte(want), 0o644); err != nil {
		return "", err
	}
	return bin, nil
}

func checkPythonVersion(system string) error {
	out, err := runSetup(30*time.Second, system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
	if err != nil {
		return fmt.Errorf("%s: %v: %s", system, err, out)
	}
	major, minor, _ := strings.Cut(strings.TrimSpace(out), ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%s printed version %q", system, out)
	}
	if ma < minPython[0] || ma == minPython[0] && mi < minPython[1] {
		return fmt.Errorf("%s is Python %d.%d; the pinned SDKs need %d.%d or newer", system, ma, mi, minPython[0], minPython[1])
	}
	return nil
}

// runSetup runs one setup command with its own deadline.
func runSetup(limit time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%v (gave up after %v)", err, limit)
	}
	return string(out), err
}

// pythonEnv is the environment of a Python child talking to a hub whose CA
// is caFile: the device SDK gets it as server_verification_cert from
// IOTHUB_CA_FILE, the service SDK (requests) from REQUESTS_CA_BUNDLE.
func pythonEnv(caFile string, extra ...string) []string {
	return append([]string{
		"IOTHUB_CA_FILE=" + caFile,
		"REQUESTS_CA_BUNDLE=" + caFile,
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
	}, extra...)
}

// pythonServiceCS is the owner connection string as the Python service SDK
// needs it: HostName without a port (it calls https://HostName on 443).
func pythonServiceCS() string { return env.nodeServiceCS }

// startTutorialDevice runs compat/python/tutorial_device.py for a device and
// waits until it listens for rebootDevice.
func startTutorialDevice(t *testing.T, ctx context.Context, py, caFile, cs string, rebootSeconds int) *proc {
	t.Helper()
	p := startProc(t, ctx, "tutorial_device.py", pythonEnv(caFile,
		"IOTHUB_DEVICE_CONNECTION_STRING="+cs, "REBOOT_SECONDS="+strconv.Itoa(rebootSeconds)),
		py, filepath.Join(pythonDir(), "tutorial_device.py"))
	if _, err := p.waitEvent(ctx, "listening", nil); err != nil {
		t.Fatalf("the tutorial's Python device never listened for rebootDevice: %v", err)
	}
	return p
}

// tutorialReboot reboots a tutorial device with dmctl service reboot and
// checks that dmctl confirms the rebootTime the device reported.
func tutorialReboot(t *testing.T, rebootSeconds int, extraFlags ...string) {
	t.Parallel()
	py := requirePython(t)
	dmctl := requireDmctl(t, "service reboot")
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rebootSeconds)*time.Second+90*time.Second)
	defer cancel()
	dev := registerDevice(t, "pytut")
	d := startTutorialDevice(t, ctx, py, env.caFile, dev.nodeCS(), rebootSeconds)

	argv := append([]string{dmctl, "service", "reboot", "--device", dev.id,
		"--connection-string", env.dmctlServiceCS, "--ca-file", env.caFile}, extraFlags...)
	r := runProc(t, ctx, "dmctl service reboot "+dev.id, nil, argv...)
	if r.code != 0 {
		t.Fatalf("dmctl service reboot of the tutorial's Python device: %s", r)
	}
	ev, err := d.waitEvent(ctx, "reported", nil)
	if err != nil {
		t.Fatalf("the Python device never reported its rebootTime: %v", err)
	}
	reported, _ := ev["rebootTime"].(string)
	// The tutorial reports str(datetime.now()), e.g. "2026-12-01 09:54:00.195812".
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`).MatchString(reported) {
		t.Fatalf("the Python device reported rebootTime %q, not str(datetime.now())", reported)
	}
	for _, want := range []string{"Successfully invoked the device to reboot.", "Device status: 200", "Last reboot time: " + reported} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dmctl service reboot did not print %q:\n%s", want, r)
		}
	}
	if err := d.closeStdin(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.waitEvent(ctx, "closed", nil); err != nil {
		t.Errorf("the Python device did not shut down: %v", err)
	}
}

// TestPythonTutorialDeviceRebootedByDmctl: the tutorial's device (it answers
// only after its reboot and reports a rebootTime that is not RFC 3339) is
// rebooted by dmctl service reboot, which prints the new rebootTime.
func TestPythonTutorialDeviceRebootedByDmctl(t *testing.T) { tutorialReboot(t, 2) }

// TestPythonTutorialDeviceFullReboot is the same with the tutorial's full
// 20 s reboot under dmctl's default --response-timeout.
func TestPythonTutorialDeviceFullReboot(t *testing.T) { tutorialReboot(t, 20) }

// runTutorialService runs compat/python/tutorial_service.py against a device
// and returns the method's answer and the new rebootTime it saw.
func runTutorialService(t *testing.T, ctx context.Context, py, caFile, serviceCS, id string) (status float64, rebootTime string) {
	t.Helper()
	r := runProc(t, ctx, "tutorial_service.py "+id, pythonEnv(caFile, "IOTHUB_CONNECTION_STRING="+serviceCS, "WAIT_SECONDS=20"),
		py, filepath.Join(pythonDir(), "tutorial_service.py"), id)
	if r.code != 0 {
		t.Fatalf("the tutorial's Python service did not see a new rebootTime: %s", r)
	}
	events := map[string]map[string]any{}
	for _, line := range strings.Split(r.stdout, "\n") {
		var ev map[string]any
		if (runResult{stdout: line}).lastJSON(&ev) == nil {
			name, _ := ev["event"].(string)
			events[name] = ev
		}
	}
	status, _ = events["invoked"]["status"].(float64)
	rebootTime, _ = events["rebooted"]["rebootTime"].(string)
	if before, _ := events["baseline"]["rebootTime"].(string); rebootTime == "" || rebootTime == before {
		t.Fatalf("the Python service printed no new rebootTime (baseline %q):\n%s", before, r)
	}
	return status, rebootTime
}

// TestPythonTutorialServiceRebootsDmctlDevice: the tutorial's service calls
// (invoke_device_method with the tutorial's JSON-text payload, then get_twin
// until rebootTime changes) reboot dmctl device run.
func TestPythonTutorialServiceRebootsDmctlDevice(t *testing.T) {
	t.Parallel()
	py := requirePython(t)
	dmctl := requireDmctl(t, "device run")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dev := registerDevice(t, "pysvc-dmctldev")
	d := startDmctlDevice(t, ctx, dmctl, dev.id, dev.dmctlCS(), "2s")
	if !waitSubscribedTo(ctx, dev.id) {
		t.Fatalf("dmctl device run never subscribed to direct methods")
	}
	status, rebootTime := runTutorialService(t, ctx, py, env.caFile, pythonServiceCS(), dev.id)
	if status != 200 {
		t.Errorf("dmctl's device answered %v to the tutorial's rebootDevice, want 200", status)
	}
	if _, err := time.Parse(time.RFC3339Nano, rebootTime); err != nil {
		t.Errorf("dmctl's device reported rebootTime %q, not RFC 3339: %v", rebootTime, err)
	}
	d.stop(t, ctx)
}

// waitSubscribedTo waits until the hub has the device's direct-method
// subscription.
func waitSubscribedTo(ctx context.Context, id string) bool {
	topic := iothub.MethodRequestTopic("rebootDevice", "1")
	for !env.hub.Subscribed(id, topic) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return true
}

// TestPythonTutorialThroughHubServe: the tutorial's device and service, both
// on the official Python SDKs, through `dmctl hub serve` (a hub process of
// its own on 127.0.0.3, the SDKs' ports 8883 and 443).
func TestPythonTutorialThroughHubServe(t *testing.T) {
	t.Parallel()
	py := requirePython(t)
	dmctl := requireDmctl(t, "hub serve", "service device create")
	loopback3.Lock()
	defer loopback3.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const host = "127.0.0.3"
	data := t.TempDir()
	ready := filepath.Join(data, "ready.json")
	hub := startProc(t, ctx, "dmctl hub serve", nil, dmctl, "hub", "serve", "--data", data, "--hostname", host,
		"--listen", host+":8883", "--listen", host+":443", "--ready-file", ready)
	if err := waitFile(ctx, ready); err != nil {
		t.Fatalf("dmctl hub serve did not get ready: %v\n%s", err, hub.stderrText())
	}
	caFile := filepath.Join(data, "ca.pem")
	r := runProc(t, ctx, "dmctl hub connection-string", nil, dmctl, "hub", "connection-string", "--data", data, "--ready-file", ready)
	if r.code != 0 {
		t.Fatalf("dmctl hub connection-string: %s", r)
	}
	dmctlCS := strings.TrimSpace(r.stdout)
	key := dmctlCS[strings.Index(dmctlCS, "SharedAccessKey=")+len("SharedAccessKey="):]
	serviceCS := "HostName=" + host + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + key

	id := newID("pytut-hubserve")
	r = runProc(t, ctx, "dmctl service device create", nil, dmctl, "service", "device", "create", "--device", id,
		"--connection-string", dmctlCS, "--ca-file", caFile)
	if r.code != 0 {
		t.Fatalf("dmctl service device create: %s", r)
	}
	// The device connection string without the port, as the SDK wants it.
	deviceCS := strings.Replace(strings.TrimSpace(r.stdout), "HostName="+host+":8883;", "HostName="+host+";", 1)
	if !strings.HasPrefix(deviceCS, "HostName="+host+";") {
		t.Fatalf("unexpected device connection string %q", deviceCS)
	}

	d := startTutorialDevice(t, ctx, py, caFile, deviceCS, 2)
	status, rebootTime := runTutorialService(t, ctx, py, caFile, serviceCS, id)
	if status != 200 {
		t.Errorf("the tutorial's device answered %v, want 200", status)
	}
	ev, err := d.waitEvent(ctx, "reported", nil)
	if err != nil {
		t.Fatalf("the Python device never reported: %v", err)
	}
	if ev["rebootTime"] != rebootTime {
		t.Errorf("the service saw rebootTime %q, the device reported %v", rebootTime, ev["rebootTime"])
	}
}

// waitFile waits until path exists and is not empty.
func waitFile(ctx context.Context, path string) error {
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not appear: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestOfficialPythonSDKs runs the pytest suite in compat/python (registry,
// twins, queries, jobs, configurations, the device client over MQTT and
// WebSockets, token renewal, a wrong key) against the suite's hub.
func TestOfficialPythonSDKs(t *testing.T) {
	t.Parallel()
	py := requirePython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The X.509 test registers this device with the certificate's thumbprint.
	x509ID := newID("py-x509")
	certDir := t.TempDir()
	c := newTestCert(t, certDir, x509ID, certOpts{cn: x509ID})
	// And an X.509 module (its device is the test's SAS device).
	mc := newTestCert(t, certDir, "module", certOpts{cn: "module"})
	r := runProc(t, ctx, "pytest", pythonEnv(env.caFile, "IOTHUB_CONNECTION_STRING="+pythonServiceCS(), "DEVICE_PREFIX="+newID("py"),
		"X509_DEVICE_ID="+x509ID, "X509_THUMBPRINT="+c.SHA1(), "X509_CERT_FILE="+c.certFile, "X509_KEY_FILE="+c.keyFile,
		"X509_MODULE_THUMBPRINT="+mc.SHA256(), "X509_MODULE_CERT_FILE="+mc.certFile, "X509_MODULE_KEY_FILE="+mc.keyFile),
		py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--color=no", pythonDir())
	if r.code != 0 {
		t.Fatalf("pytest compat/python: %s", r)
	}
	summary := regexp.MustCompile(`(?m)^(\d+) passed(.*) in [\d.]+s`).FindStringSubmatch(r.stdout)
	if summary == nil {
		t.Fatalf("pytest printed no summary line:\n%s", r)
	}
	if strings.Contains(summary[2], "skipped") || strings.Contains(summary[2], "failed") || strings.Contains(summary[2], "error") {
		t.Fatalf("pytest: %s", summary[0])
	}
	t.Logf("pytest: %s", summary[0])
}

// TestPythonStatistics runs compat/python/serial_statistics.py:
// get_device_registry_statistics and get_service_statistics against the
// whole hub's counts. Not parallel: no other test may change them meanwhile.
func TestPythonStatistics(t *testing.T) {
	py := requirePython(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := runProc(t, ctx, "pytest serial_statistics.py", pythonEnv(env.caFile, "IOTHUB_CONNECTION_STRING="+pythonServiceCS(), "DEVICE_PREFIX="+newID("pystats")),
		py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--color=no", filepath.Join(pythonDir(), "serial_statistics.py"))
	if r.code != 0 {
		t.Fatalf("pytest serial_statistics.py: %s", r)
	}
	if !regexp.MustCompile(`(?m)^2 passed(, \d+ warnings?)? in [\d.]+s`).MatchString(r.stdout) {
		t.Fatalf("pytest serial_statistics.py did not pass both tests:\n%s", r)
	}
}

// TestReadmePythonBlock runs the README's "Use it from Python" block as it
// is, with the venv's python3 first on PATH and the connection strings and
// CA the block expects in the environment.
func TestReadmePythonBlock(t *testing.T) {
	t.Parallel()
	py := requirePython(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	readme, err := os.ReadFile(filepath.Join(filepath.Dir(pythonDir()), "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "<!-- python:begin -->\n```sh\n")
	if ok {
		block, _, ok = strings.Cut(block, "```\n<!-- python:end -->")
	}
	if !ok {
		t.Fatal(`README.md has no "python" block (<!-- python:begin --> ... <!-- python:end -->)`)
	}
	script := filepath.Join(t.TempDir(), "python.sh")
	if err := os.WriteFile(script, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := registerDevice(t, "pyreadme")
	r := runProc(t, ctx, "README python block", []string{
		"PATH=" + filepath.Dir(py) + string(os.PathListSeparator) + os.Getenv("PATH"),
		"IOTHUB_CONNECTION_STRING=" + pythonServiceCS(),
		"IOTHUB_DEVICE_CONNECTION_STRING=" + dev.nodeCS(),
		"DMCTL_CA_FILE=" + env.caFile,
		"PYTHONDONTWRITEBYTECODE=1",
	}, "sh", script)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "hello from Python" {
		t.Fatalf("the README's Python block: %s", r)
	}
}
