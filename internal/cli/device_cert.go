package cli

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // SHA-1 thumbprints are what IoT Hub registers; nothing is signed with it
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/urfave/cli/v2"
)

// Help of the cert commands: the tables of help.go are filled from here.
// Validity limits of the certificates dmctl makes.
const (
	defaultDeviceCertDays = 365
	defaultCACertDays     = 3650
	maxCertDays           = 36500
	// certBackdate is how far NotBefore lies in the past, for clocks that
	// run a little behind.
	certBackdate = time.Minute
)

func deviceCertCommand() *cli.Command {
	return &cli.Command{
		Name:  "cert",
		Usage: "make X.509 device certificates (self-signed or signed by a CA of your own)",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "make a device certificate and its private key, and print the thumbprints",
				Description: `Makes an ECDSA P-256 key and a certificate for --device: subject CN = the
device id (IoT Hub requires it for CA-signed devices), client authentication,
valid from a minute ago for --days. Self-signed, or signed by --ca-cert and
--ca-key (a CA made with 'dmctl device cert create-ca', say).

The certificate goes to --cert-out (default DEVICE-cert.pem), the key to
--key-out (default DEVICE-key.pem, mode 0600, PKCS #8 PEM). Existing files
are kept unless --force; on any error nothing is written.

Prints the SHA-1 and SHA-256 thumbprints (upper-case hex, as the Azure portal
shows them): register a self-signed device with one of them. The device then
connects with 'dmctl device run --cert FILE --key FILE' and a connection
string HostName=<hub>;DeviceId=<id>;x509=true.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "device", Aliases: []string{"d"}, Usage: "device id, the certificate's subject CN"},
					&cli.IntFlag{Name: "days", Usage: "validity in days", Value: defaultDeviceCertDays},
					&cli.StringFlag{Name: "cert-out", Usage: "certificate file (PEM)", DefaultText: "DEVICE-cert.pem"},
					&cli.StringFlag{Name: "key-out", Usage: "private key file (PEM, mode 0600)", DefaultText: "DEVICE-key.pem"},
					&cli.StringFlag{Name: "ca-cert", Usage: "sign with this CA certificate (PEM) instead of self-signing; goes with --ca-key"},
					&cli.StringFlag{Name: "ca-key", Usage: "the CA's private key (PEM)"},
					&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
					outputFlag(),
				},
				Action: runDeviceCertCreate,
			},
			{
				Name:  "create-ca",
				Usage: "make a CA certificate and key to sign device certificates with",
				Description: `Makes an ECDSA P-256 key and a self-signed CA certificate (subject CN =
--name, key usage certificate signing) valid from a minute ago for --days.
Sign device certificates with it ('dmctl device cert create --ca-cert
--ca-key'); a hub that trusts it lets in devices of authentication type
certificateAuthority whose certificate's CN is their device id.

The certificate goes to --cert-out (default ca-cert.pem), the key to --key-out
(default ca-key.pem, mode 0600). Existing files are kept unless --force; on
any error nothing is written. Prints the thumbprints.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "the CA's subject common name"},
					&cli.IntFlag{Name: "days", Usage: "validity in days", Value: defaultCACertDays},
					&cli.StringFlag{Name: "cert-out", Usage: "certificate file (PEM)", Value: "ca-cert.pem"},
					&cli.StringFlag{Name: "key-out", Usage: "private key file (PEM, mode 0600)", Value: "ca-key.pem"},
					&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
					outputFlag(),
				},
				Action: runDeviceCertCreateCA,
			},
		},
	}
}

// certResult is what the cert commands print.
type certResult struct {
	CertFile         string `json:"certFile"`
	KeyFile          string `json:"keyFile"`
	ThumbprintSHA1   string `json:"thumbprintSha1"`
	ThumbprintSHA256 string `json:"thumbprintSha256"`
	NotAfter         string `json:"notAfter"`

	issuer string // text only
}

func runDeviceCertCreate(c *cli.Context) error {
	id := c.String("device")
	if id == "" {
		return usageErrorf("name the device with --device ID", "missing --device")
	}
	if err := iothub.CheckID(id); err != nil {
		return usageErrorf("device ids are up to 128 ASCII letters, digits and - . + % _ # * ? ! ( ) , : = @ $ '", "invalid --device %q: %v", id, err)
	}
	days, err := certDays(c)
	if err != nil {
		return err
	}
	certOut, keyOut := c.String("cert-out"), c.String("key-out")
	if certOut == "" {
		certOut = id + "-cert.pem"
	}
	if keyOut == "" {
		keyOut = id + "-key.pem"
	}
	if err := checkOutFiles(certOut, keyOut, c.Bool("force")); err != nil {
		return err
	}
	var ca *tls.Certificate
	switch caCert, caKey := c.String("ca-cert"), c.String("ca-key"); {
	case caCert != "" && caKey != "":
		if ca, err = loadCA(caCert, caKey); err != nil {
			return err
		}
	case caCert != "" || caKey != "":
		return usageErrorf("give the CA's certificate with --ca-cert and its key with --ca-key", "--ca-cert and --ca-key go together")
	}
	tmpl := certTemplate(id, days)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	res, err := mintCert(tmpl, ca, certOut, keyOut, c.Bool("force"))
	if err != nil {
		return err
	}
	if ca != nil && ca.Leaf.NotAfter.Before(tmpl.NotAfter) {
		log := loggerFrom(c)
		log.Warn().Time("ca_not_after", ca.Leaf.NotAfter).
			Msgf("the CA expires before the device certificate (%s): the certificate stops working then", ca.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return printCertResult(c, res)
}

func runDeviceCertCreateCA(c *cli.Context) error {
	name := c.String("name")
	if strings.TrimSpace(name) == "" {
		return usageErrorf("name the CA with --name, e.g. --name \"dmctl test CA\"", "missing --name")
	}
	days, err := certDays(c)
	if err != nil {
		return err
	}
	certOut, keyOut := c.String("cert-out"), c.String("key-out")
	if err := checkOutFiles(certOut, keyOut, c.Bool("force")); err != nil {
		return err
	}
	tmpl := certTemplate(name, days)
	tmpl.IsCA = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	res, err := mintCert(tmpl, nil, certOut, keyOut, c.Bool("force"))
	if err != nil {
		return err
	}
	return printCertResult(c, res)
}

// certDays reads --days.
func certDays(c *cli.Context) (int, error) {
	days := c.Int("days")
	if days < 1 || days > maxCertDays {
		return 0, usageErrorf(fmt.Sprintf("use a whole number of days from 1 to %d", maxCertDays), "invalid --days %d", days)
	}
	return days, nil
}

// checkOutFiles refuses output files that are one file, or that exist
// already unless force.
func checkOutFiles(certOut, keyOut string, force bool) error {
	if certOut == "" || keyOut == "" {
		return usageErrorf("name both files, or leave the flags out for the defaults", "--cert-out and --key-out cannot be empty")
	}
	a, errA := filepath.Abs(certOut)
	b, errB := filepath.Abs(keyOut)
	if errA == nil && errB == nil && a == b {
		return usageErrorf("give the certificate and the key files of their own", "--cert-out and --key-out are the same file %s", certOut)
	}
	for _, f := range []string{certOut, keyOut} {
		fi, err := os.Lstat(f)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return fmt.Errorf("check %s: %w", f, err)
		case fi.IsDir():
			return usageErrorf("name a file, e.g. "+filepath.Join(f, filepath.Base(f)+".pem"), "%s is a folder", f)
		case !force:
			return usageErrorf("add --force to overwrite it, or choose another file with --cert-out / --key-out", "%s exists already", f)
		}
	}
	return nil
}

// certTemplate is the part common to every certificate dmctl makes.
func certTemplate(cn string, days int) *x509.Certificate {
	now := time.Now().Truncate(time.Second)
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.AddDate(0, 0, days),
		BasicConstraintsValid: true,
	}
}

// mintCert makes a P-256 key and a certificate from tmpl, signed by ca (nil:
// self-signed), and writes both files. Nothing is written on an error.
func mintCert(tmpl *x509.Certificate, ca *tls.Certificate, certOut, keyOut string, force bool) (certResult, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certResult{}, fmt.Errorf("generate key: %w", err)
	}
	// 127 random bits: positive, unique, within RFC 5280's 20 octets.
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
		return certResult{}, fmt.Errorf("serial number: %w", err)
	}
	parent, signer := tmpl, crypto.Signer(key)
	issuer := "self-signed"
	if ca != nil {
		parent, signer = ca.Leaf, ca.PrivateKey.(crypto.Signer)
		issuer = ca.Leaf.Subject.String()
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return certResult{}, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return certResult{}, fmt.Errorf("encode key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFiles([]outFile{{keyOut, keyPEM, 0o600}, {certOut, certPEM, 0o644}}, force); err != nil {
		return certResult{}, err
	}
	sha1Hex, sha256Hex := thumbprints(der)
	return certResult{
		CertFile: certOut, KeyFile: keyOut,
		ThumbprintSHA1: sha1Hex, ThumbprintSHA256: sha256Hex,
		NotAfter: tmpl.NotAfter.UTC().Format(time.RFC3339),
		issuer:   issuer,
	}, nil
}

// outFile is a file to write, with its permissions.
type outFile struct {
	path string
	data []byte
	perm os.FileMode
}

// writeFiles writes all files or none. Without force each is created anew
// (one that appeared since checkOutFiles is refused); with force they are
// first written beside their targets, then renamed over them. Permissions
// are set whatever the umask.
func writeFiles(files []outFile, force bool) error {
	var done []string // files created (no force) or staged (force)
	undo := func() {
		for _, p := range done {
			_ = os.Remove(p)
		}
	}
	for _, f := range files {
		var (
			fh  *os.File
			err error
		)
		if force {
			fh, err = os.CreateTemp(filepath.Dir(f.path), "."+filepath.Base(f.path)+".tmp*")
		} else {
			fh, err = os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.perm)
		}
		if err != nil {
			undo()
			if errors.Is(err, os.ErrExist) {
				return usageErrorf("add --force to overwrite it", "%s exists already", f.path)
			}
			return fmt.Errorf("write %s: %w", f.path, err)
		}
		done = append(done, fh.Name())
		err = fh.Chmod(f.perm)
		if err == nil {
			_, err = fh.Write(f.data)
		}
		if err == nil {
			err = fh.Sync()
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			undo()
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	if !force {
		return nil
	}
	for i, f := range files {
		if err := os.Rename(done[i], f.path); err != nil {
			undo() // the files renamed already stay: they are complete
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return nil
}

// thumbprints are the SHA-1 and SHA-256 digests of a certificate's DER, in
// upper-case hex without separators, as IoT Hub registers them.
func thumbprints(der []byte) (sha1Hex, sha256Hex string) {
	s1 := sha1.Sum(der) //nolint:gosec // a thumbprint, not a signature
	s256 := sha256.Sum256(der)
	return strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s256[:]))
}

func printCertResult(c *cli.Context, r certResult) error {
	if jsonOutput(c) {
		return printJSON(c.App.Writer, r)
	}
	return writeCertText(c.App.Writer, r)
}

func writeCertText(w io.Writer, r certResult) error {
	_, err := fmt.Fprintf(w, "certificate:          %s\nprivate key:          %s\nissuer:               %s\nexpires:              %s\nthumbprint (SHA-1):   %s\nthumbprint (SHA-256): %s\n",
		r.CertFile, r.KeyFile, r.issuer, r.NotAfter, r.ThumbprintSHA1, r.ThumbprintSHA256)
	return err
}

// loadCA reads a CA certificate and its key for signing.
func loadCA(certFile, keyFile string) (*tls.Certificate, error) {
	ca, err := loadKeyPair(certFile, keyFile, "--ca-cert", "--ca-key")
	if err != nil {
		return nil, err
	}
	if !ca.Leaf.IsCA || (ca.Leaf.KeyUsage != 0 && ca.Leaf.KeyUsage&x509.KeyUsageCertSign == 0) {
		return nil, usageErrorf("make a CA with 'dmctl device cert create-ca --name NAME'", "--ca-cert %s is not a CA certificate (it may not sign certificates)", certFile)
	}
	if _, ok := ca.PrivateKey.(crypto.Signer); !ok {
		return nil, usageErrorf("use an ECDSA, RSA or Ed25519 key", "--ca-key %s: the key cannot sign", keyFile)
	}
	return ca, nil
}

// loadClientCert reads the certificate and key an x509 device presents.
func loadClientCert(certFile, keyFile string) (*tls.Certificate, error) {
	return loadKeyPair(certFile, keyFile, "--cert", "--key")
}

// loadKeyPair reads a PEM certificate (chain) and its private key, with an
// error that says which file is wrong and how. The key is never echoed.
func loadKeyPair(certFile, keyFile, certFlag, keyFlag string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, usageErrorf("check "+certFlag, "read %s: %v", certFlag, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, usageErrorf("check "+keyFlag, "read %s: %v", keyFlag, err)
	}
	if !hasPEMBlock(certPEM, func(t string) bool { return t == "CERTIFICATE" }) {
		return nil, usageErrorf("the file must hold a PEM \"CERTIFICATE\" block", "%s %s holds no PEM certificate", certFlag, certFile)
	}
	if !hasPEMBlock(keyPEM, func(t string) bool { return t == "PRIVATE KEY" || strings.HasSuffix(t, " PRIVATE KEY") }) {
		return nil, usageErrorf("the file must hold a PEM private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)", "%s %s holds no PEM private key", keyFlag, keyFile)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return nil, usageErrorf("give the key that was made with the certificate", "%s %s and %s %s do not belong together: the private key does not match the certificate's public key", certFlag, certFile, keyFlag, keyFile)
		}
		return nil, usageErrorf("use PEM files: a certificate and its unencrypted private key (PKCS #8, EC or RSA)", "%s / %s: %v", certFlag, keyFlag, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, usageErrorf("check "+certFlag, "%s %s: %v", certFlag, certFile, err)
		}
	}
	return &pair, nil
}

func hasPEMBlock(data []byte, ok func(typ string) bool) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if ok(b.Type) {
			return true
		}
	}
}
