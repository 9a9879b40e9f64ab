package cli

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/sas"
)

const (
	csHint    = "a connection string looks like 'HostName=<hub>;DeviceId=<id>;SharedAccessKey=<base64>' (device), with ';ModuleId=<id>' for a module, or 'HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<base64>' (service)"
	tokenHint = "a token looks like 'SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<policy>]'"
)

// sasConnectionStringEnv are read in order when --connection-string is absent.
var sasConnectionStringEnv = []string{"IOTHUB_DEVICE_CONNECTION_STRING", "IOTHUB_CONNECTION_STRING"}

func sasCommand() *cli.Command {
	return &cli.Command{
		Name:  "sas",
		Usage: "create and inspect shared access signature (SAS) tokens",
		Subcommands: []*cli.Command{
			sasTokenCommand(),
			sasInspectCommand(),
		},
	}
}

func sasTokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "print a SAS token for the identity of a connection string",
		Description: `Signs a token for the device, module or shared access policy of the
connection string, valid for --ttl (default 1h) or until --expiry.

The connection string comes from --connection-string, else from
IOTHUB_DEVICE_CONNECTION_STRING, else from IOTHUB_CONNECTION_STRING.

A connection string carries one key, its SharedAccessKey; --key primary (the
default) signs with it. To sign with the identity's other key, either pass the
connection string that holds it, or use --key secondary and give that key with
--secondary-key or DMCTL_SECONDARY_KEY (base64).

A connection string with SharedAccessSignature already holds a token: it is
printed as is (with a warning when it has expired); --ttl, --expiry and --key
do not apply. An x509 connection string has no token.`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:  "connection-string",
				Usage: "device, module or service connection string (default: $IOTHUB_DEVICE_CONNECTION_STRING, else $IOTHUB_CONNECTION_STRING)",
			},
			&cli.DurationFlag{
				Name:  "ttl",
				Usage: "token lifetime from now",
				Value: time.Hour,
			},
			&cli.StringFlag{
				Name:  "expiry",
				Usage: "absolute expiry: Unix seconds or RFC 3339 (instead of --ttl)",
			},
			&cli.StringFlag{
				Name:  "key",
				Usage: "which key signs: primary (the connection string's SharedAccessKey) or secondary (--secondary-key)",
				Value: "primary",
			},
			&cli.StringFlag{
				Name:    "secondary-key",
				Usage:   "the identity's secondary key (base64), used with --key secondary",
				EnvVars: []string{"DMCTL_SECONDARY_KEY"},
			},
			outputFlag(),
		},
		Action: runSASToken,
	}
}

func runSASToken(c *cli.Context) error {
	log := loggerFrom(c)
	if c.NArg() > 0 {
		return usageErrorf("the connection string goes in --connection-string or IOTHUB_DEVICE_CONNECTION_STRING, not in an argument", "sas token takes no arguments")
	}
	raw := c.String("connection-string")
	if !c.IsSet("connection-string") {
		// The first variable that is set and not empty wins (an empty
		// variable does not hide the next one).
		for _, env := range sasConnectionStringEnv {
			if raw = os.Getenv(env); strings.TrimSpace(raw) != "" {
				break
			}
		}
	}
	if strings.TrimSpace(raw) == "" {
		return usageErrorf("pass --connection-string, or set IOTHUB_DEVICE_CONNECTION_STRING or IOTHUB_CONNECTION_STRING", "no connection string")
	}
	cs, err := sas.Parse(raw)
	if err != nil {
		return withHint(err, csHint)
	}
	now := time.Now()

	if cs.SharedAccessSignature != "" {
		for _, f := range []string{"ttl", "expiry", "key", "secondary-key"} {
			if c.IsSet(f) {
				log.Warn().Str("flag", "--"+f).Msg("the connection string holds a ready token; flag ignored")
			}
		}
		tok, err := sas.ParseToken(cs.SharedAccessSignature)
		if err != nil { // Parse validated it already
			return withHint(err, csHint)
		}
		if tok.Expiry.Before(now) {
			log.Warn().Time("expiry", tok.Expiry).Str("expired_ago", humanDuration(now.Sub(tok.Expiry))).
				Msg("the connection string's token has expired; the hub will refuse it")
		}
		return printToken(c, cs.SharedAccessSignature, tok)
	}
	if cs.X509 {
		return usageErrorf("x509 identities authenticate with their client certificate; use a connection string with SharedAccessKey",
			"the connection string is for an x509 identity: it has no key to sign a token with")
	}

	expiry, err := tokenExpiry(c, now)
	if err != nil {
		return err
	}
	if expiry.Before(now) {
		log.Warn().Time("expiry", expiry).Msg("the expiry is in the past; the token is already expired")
	}

	key := cs.SharedAccessKey
	switch c.String("key") {
	case "primary":
	case "secondary":
		key = c.String("secondary-key")
		if key == "" {
			return usageErrorf("a connection string carries only one key; give the secondary key with --secondary-key or DMCTL_SECONDARY_KEY, or pass the secondary connection string",
				"--key secondary needs the secondary key")
		}
	default:
		return usageErrorf("use --key primary or --key secondary", "invalid --key %q", c.String("key"))
	}
	s, err := sas.Sign(key, cs.Resource(), cs.SharedAccessKeyName, expiry)
	if err != nil {
		if c.String("key") == "secondary" {
			return withHint(fmt.Errorf("--secondary-key: %w", err), "the key must be padded standard base64 of at most 64 bytes")
		}
		return withHint(err, csHint)
	}
	tok, err := sas.ParseToken(s)
	if err != nil {
		return err
	}
	return printToken(c, s, tok)
}

// tokenExpiry reads --expiry (Unix seconds or RFC 3339) or --ttl.
func tokenExpiry(c *cli.Context, now time.Time) (time.Time, error) {
	if c.IsSet("expiry") && c.IsSet("ttl") {
		return time.Time{}, usageErrorf("give one of them", "--expiry and --ttl cannot be combined")
	}
	if v := c.String("expiry"); c.IsSet("expiry") {
		if v != "" && strings.TrimLeft(v, "0123456789") == "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err == nil {
				return time.Unix(n, 0).UTC(), nil
			}
		} else if t, err := time.Parse(time.RFC3339, v); err == nil {
			if t.Unix() < 0 {
				return time.Time{}, usageErrorf("use a time after 1970", "--expiry %q is before 1970", v)
			}
			return t.UTC(), nil
		}
		return time.Time{}, usageErrorf("use Unix seconds (1700000000) or RFC 3339 (2026-01-02T15:04:05Z)", "invalid --expiry %q", v)
	}
	ttl := c.Duration("ttl")
	if ttl <= 0 {
		return time.Time{}, usageErrorf("use a positive duration such as 1h or 30m", "--ttl must be positive")
	}
	return now.Add(ttl), nil
}

// tokenInfo is the JSON form of a token's public fields.
type tokenInfo struct {
	Token     string `json:"token,omitempty"`
	Resource  string `json:"resource"`
	KeyName   string `json:"keyName"`
	Expiry    string `json:"expiry"`
	ExpiresIn int64  `json:"expiresIn"`
	Expired   bool   `json:"expired"`
}

func newTokenInfo(t *sas.Token, now time.Time) tokenInfo {
	return tokenInfo{
		Resource:  t.Resource,
		KeyName:   t.KeyName,
		Expiry:    t.Expiry.UTC().Format(time.RFC3339),
		ExpiresIn: int64(t.Expiry.Sub(now) / time.Second),
		Expired:   t.Expiry.Before(now),
	}
}

// printToken prints the token itself (text) or the token with its fields
// (json). Printing the token is the command's purpose.
func printToken(c *cli.Context, s string, t *sas.Token) error {
	if jsonOutput(c) {
		info := newTokenInfo(t, time.Now())
		info.Token = s
		return printJSON(c.App.Writer, info)
	}
	_, err := fmt.Fprintln(c.App.Writer, s)
	return err
}

func sasInspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show the resource, key name and expiry of a SAS token",
		ArgsUsage: "TOKEN|-",
		Description: `Prints what a token grants: its resource (audience), key name (skn,
policy tokens only), expiry in UTC and the time left, or how long ago it
expired. The signature is never printed. With '-' the token is read from
standard input. The token is not verified: inspect needs no key.`,
		Flags:  []cli.Flag{outputFlag()},
		Action: runSASInspect,
	}
}

func runSASInspect(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErrorf("quote the token: dmctl sas inspect 'SharedAccessSignature sr=...', or pass - to read it from standard input",
			"sas inspect takes exactly one argument, got %d", c.NArg())
	}
	raw := c.Args().First()
	if raw == "-" {
		r := c.App.Reader
		if r == nil {
			r = os.Stdin
		}
		b, err := io.ReadAll(io.LimitReader(r, 1<<16))
		if err != nil {
			return fmt.Errorf("read token from standard input: %w", err)
		}
		raw = string(b)
	}
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return usageErrorf(tokenHint, "no token given")
	}
	t, err := sas.ParseToken(raw)
	if err != nil {
		return withHint(err, tokenHint)
	}
	now := time.Now()
	info := newTokenInfo(t, now)
	if jsonOutput(c) {
		return printJSON(c.App.Writer, info)
	}
	keyName := t.KeyName
	if keyName == "" {
		keyName = "(none: device or module key)"
	}
	left := "in " + humanDuration(t.Expiry.Sub(now))
	if info.Expired {
		left = "expired " + humanDuration(now.Sub(t.Expiry)) + " ago"
	}
	_, err = fmt.Fprintf(c.App.Writer, "resource: %s\nkey name: %s\nexpiry:   %s\nexpires:  %s\n",
		t.Resource, keyName, info.Expiry, left)
	return err
}

// humanDuration renders d in whole seconds with a day unit: "1107d3h4m5s",
// "59m59s", "0s".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	d = d.Truncate(time.Second)
	const day = 24 * time.Hour
	days := d / day
	rest := d % day
	switch {
	case days == 0:
		return rest.String()
	case rest == 0:
		return strconv.FormatInt(int64(days), 10) + "d"
	}
	return strconv.FormatInt(int64(days), 10) + "d" + rest.String()
}
