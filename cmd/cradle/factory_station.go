package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/factory"
	"cradle/internal/httpapi"
	"cradle/internal/kms"
	"cradle/internal/pki"
)

// The station's side of `cradle factory`: enroll, provision, sync,
// journal. They run on the station and read its directory (--dir).

// stationClient returns the API client of the station in dir: --server
// and --token when given, else station.yaml's server and dir/token.
func (a *app) stationClient(dir string, f *factory.StationFile) (*httpapi.Client, error) {
	server, token := a.server, a.token
	if server == "" {
		server = f.Server
	}
	if token == "" {
		b, err := os.ReadFile(filepath.Join(dir, factory.TokenFile))
		if err != nil {
			return nil, fmt.Errorf("station %s: read its API token: %w", f.Name, err)
		}
		token = strings.TrimSpace(string(b))
	}
	if err := checkServerURL(server); err != nil {
		return nil, err
	}
	return httpapi.NewClient(strings.TrimRight(server, "/"), token, &http.Client{}), nil
}

func (a *app) factoryStationEnrollCmd() *cobra.Command {
	var dir, name, profile, stationKey, mfgKey, root, mfgCA, cmdSigner, updateRoot, org, pinFile string
	var reserve int
	cmd := &cobra.Command{
		Use:   "enroll --dir DIR --name NAME --profile test|production --station-key URI --manufacturing-ca-key URI --root FILE --manufacturing-ca FILE",
		Short: "Enroll this station: a key in its HSM, a certificate and an API token from the server",
		Long: `Enroll this machine as a factory station (run it on the station, with an admin token).

It creates the station key at --station-key (a pkcs11: URI of the station's HSM;
an existing key there is used), sends a CSR to the server, and writes the station
directory: station.yaml, the station certificate and chain, the API token made for
the station (mode 0600), and the trust anchors every unit will get: the root, the
manufacturing CA (whose key, --manufacturing-ca-key, must be in the HSM), the
command signer chain and the update root metadata.

A production station refuses test certificates, and a test station production
ones; the server refuses a station whose profile is not its PKI's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || name == "" || stationKey == "" || mfgKey == "" || root == "" || mfgCA == "" {
				return errors.New("--dir, --name, --station-key, --manufacturing-ca-key, --root and --manufacturing-ca are required")
			}
			p, err := cradle.ParseProfile(profile)
			if err != nil {
				return errors.New(cradle.ErrorMessage(err))
			}
			if _, err := os.Stat(filepath.Join(dir, factory.StationFileName)); err == nil {
				return fmt.Errorf("%s already holds an enrolled station (%s)", dir, factory.StationFileName)
			}
			opts := kms.Options{}
			if pinFile != "" {
				opts.Passphrase = kms.PassphraseFromFile(pinFile)
			}
			// Check the trust anchors and the manufacturing CA key before
			// asking the server for anything.
			anchors := map[string][]byte{}
			for _, x := range []struct{ src, dst string }{{root, factory.RootFile}, {mfgCA, factory.ManufacturingCA}, {cmdSigner, factory.CommandSignerCrt}, {updateRoot, factory.UpdateRootFile}} {
				if x.src == "" {
					continue
				}
				b, err := os.ReadFile(x.src)
				if err != nil {
					return err
				}
				anchors[x.dst] = b
			}
			var mfgCert *x509.Certificate
			for _, path := range []string{root, mfgCA} {
				cs, err := factory.ReadCerts(path)
				if err != nil {
					return err
				}
				mfgCert = cs[0] // the last one read
				if test := pki.IsTestCertificate(cs[0]); test != (p == cradle.ProfileTest) {
					return fmt.Errorf("%s %q is a %s certificate: a %s station refuses it", filepath.Base(path), cs[0].Subject.CommonName, profileOf(test), p)
				}
			}
			ctx := cmd.Context()
			mk, err := kms.Open(ctx, mfgKey, opts)
			if err != nil {
				return fmt.Errorf("manufacturing CA key: %w", err)
			}
			pub, isKey := mk.Public().(interface{ Equal(crypto.PublicKey) bool })
			match := isKey && pub.Equal(mfgCert.PublicKey)
			kms.Close(mk)
			if !match {
				return fmt.Errorf("the key at --manufacturing-ca-key is not the key of %s", mfgCA)
			}
			client, err := a.client()
			if err != nil {
				return err
			}
			sk, err := kms.Generate(ctx, stationKey, "", opts)
			if errors.Is(err, kms.ErrKeyExists) {
				sk, err = kms.Open(ctx, stationKey, opts)
			}
			if err != nil {
				return fmt.Errorf("station key: %w", err)
			}
			defer kms.Close(sk)
			csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, sk)
			if err != nil {
				return fmt.Errorf("station CSR: %w", err)
			}
			enrolled, err := client.EnrollStation(ctx, name, p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			files := map[string][]byte{factory.StationCertFile: []byte(enrolled.Certificate + enrolled.Chain)}
			for n, b := range anchors {
				files[n] = b
			}
			for n, b := range files {
				if err := atomicfile.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
					return err
				}
			}
			if err := atomicfile.WriteFile(filepath.Join(dir, factory.TokenFile), []byte(enrolled.Token+"\n"), 0o600); err != nil {
				return err
			}
			server, _, _ := a.endpoint()
			// station.yaml last: a directory with it is a whole station.
			if err := factory.WriteStationFile(dir, &factory.StationFile{Name: name, Profile: string(p), Server: server, Org: org,
				StationKey: stationKey, ManufacturingKey: mfgKey, Reserve: reserve}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "station %s enrolled (%s): certificate %s, fingerprint %s\nstation directory: %s\n",
				name, p, enrolled.Station.CertSerial, enrolled.Station.Fingerprint, dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "the station directory to create")
	f.StringVar(&name, "name", "", "the station's name (letters, digits, . _ -)")
	f.StringVar(&profile, "profile", "", "test or production")
	f.StringVar(&stationKey, "station-key", "", "URI of the station key to create (pkcs11: URI of the station's HSM)")
	f.StringVar(&mfgKey, "manufacturing-ca-key", "", "URI of the manufacturing CA key (in the station's HSM)")
	f.StringVar(&root, "root", "", "the root certificate (PEM), every unit's trust anchor")
	f.StringVar(&mfgCA, "manufacturing-ca", "", "the manufacturing CA certificate (PEM)")
	f.StringVar(&cmdSigner, "command-signer", "", "the command signer chain (PEM), written to every unit")
	f.StringVar(&updateRoot, "update-root", "", "the update root metadata (TUF root.json), written to every unit")
	f.StringVar(&org, "org", "", "organization written in the IDevIDs")
	f.StringVar(&pinFile, "pin-file", "", "file holding the HSM's PIN, when the URIs carry none")
	f.IntVar(&reserve, "reserve", 16, "serials and MACs to reserve from the server at a time (work offline that long)")
	return cmd
}

func profileOf(test bool) cradle.Profile {
	if test {
		return cradle.ProfileTest
	}
	return cradle.ProfileProduction
}

// openStation opens the station in dir, online unless offline.
func (a *app) openStation(ctx context.Context, dir, operator string, offline bool) (*factory.Station, error) {
	if dir == "" {
		return nil, errors.New("--dir (the station directory) is required")
	}
	f, err := factory.ReadStationFile(dir)
	if err != nil {
		return nil, err
	}
	var server factory.Server
	if !offline {
		c, err := a.stationClient(dir, f)
		if err != nil {
			return nil, err
		}
		server = c
	}
	return factory.Open(ctx, dir, operator, server, kms.Options{})
}

func (a *app) factoryProvisionCmd() *cobra.Command {
	var dir, batch, release, operator, unitsFile string
	var devices []string
	var jsonOut, offline bool
	cmd := &cobra.Command{
		Use:   "provision --dir DIR --batch ID --firmware RELEASE_DIR --operator NAME (--device UNIT ... | --units FILE|-)",
		Short: "Provision units of a batch: identity, IDevID, firmware, fuses, signed record",
		Long: `Provision units of a batch at this station.

A unit is given as its device directory (a simulated unit), optionally followed
by its key store: "DIR key-store=tpm tpm=HOST:PORT|/dev/tpmrm0 [tpm-state=DIR]" or
"DIR key-store=pkcs11 pkcs11-module=PATH pkcs11-token=LABEL pkcs11-pin-source=file:PATH".
--device takes one unit (repeatable); --units reads one unit per line from a file,
or from standard input with "-", for a line that feeds units as they arrive.

Each unit gets a serial and a MAC reserved from the server (never reused, not
even after a failure), a device key created in its own key store, an IDevID from
the manufacturing CA in the station's HSM, the identity bundle, the bootloader
and first firmware in slot A, and its fuses (image-key hash, secure boot, debug
lock, lifecycle provisioned), all read back before the unit is locked. A unit
that fails is recorded as failed with the step and the reason, and its key is
destroyed. Every record is signed by the station key, journaled, and uploaded;
with the server unreachable it stays in the journal (see cradle factory sync).

Each provisioned unit gets a random claim code for its label (XXXX-XXXX-XXX);
the record keeps only its hash, and an operator claims the device with it
(cradle device claim). The code is printed once, on the unit's line (with --json
as "claim_code", for the label printer): it cannot be recovered later.

On a terminal a progress bar shows the run; --json prints one JSON line per unit
and a summary line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if batch == "" || release == "" || operator == "" {
				return errors.New("--batch, --firmware and --operator are required")
			}
			if (len(devices) == 0) == (unitsFile == "") {
				return errors.New("give the units with --device (repeatable) or --units FILE|-")
			}
			rel, err := factory.LoadRelease(release)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			st, err := a.openStation(ctx, dir, operator, offline)
			if err != nil {
				return err
			}
			defer st.Close()
			next, total, closeUnits, err := unitSource(devices, unitsFile, a.stdin)
			if err != nil {
				return err
			}
			defer closeUnits()
			p := &factory.Progress{W: a.stdout, JSON: jsonOut, Total: total}
			stats, _, err := st.Run(ctx, batch, rel, next, p)
			if err != nil {
				return err
			}
			if stats.Failed+stats.Skipped > 0 {
				return fmt.Errorf("%d of %d units were not provisioned", stats.Failed+stats.Skipped, stats.Units)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "the station directory")
	f.StringVar(&batch, "batch", "", "the batch to build")
	f.StringVar(&release, "firmware", "", "the firmware release directory (release.yaml)")
	f.StringVar(&operator, "operator", "", "who runs the line (written in every record)")
	f.StringArrayVar(&devices, "device", nil, "a unit: its device directory and key store options (repeatable)")
	f.StringVar(&unitsFile, "units", "", "read units from this file, one per line; - for standard input")
	f.BoolVar(&jsonOut, "json", false, "print one JSON line per unit and a summary line")
	f.BoolVar(&offline, "offline", false, "do not contact the server: use reserved serials, journal the records")
	return cmd
}

// unitSource returns the units of --device or --units; total is 0 when
// unknown (a stream).
func unitSource(devices []string, file string, stdin io.Reader) (next func() (factory.Unit, bool, error), total int, closeAll func(), err error) {
	var closers []io.Closer
	closeAll = func() {
		for _, c := range closers {
			c.Close()
		}
	}
	open := func(spec string) (factory.Unit, bool, error) {
		u, c, err := factory.OpenUnit(spec)
		if err != nil {
			return factory.Unit{Spec: spec}, true, err
		}
		if c != nil {
			closers = append(closers, c)
		}
		return u, true, nil
	}
	if file == "" {
		i := 0
		return func() (factory.Unit, bool, error) {
			if i == len(devices) {
				return factory.Unit{}, false, nil
			}
			i++
			return open(devices[i-1])
		}, len(devices), closeAll, nil
	}
	var r io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, 0, nil, err
		}
		closers = append(closers, f)
		b, err := io.ReadAll(f)
		if err != nil {
			return nil, 0, nil, err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(l) != "" && !strings.HasPrefix(strings.TrimSpace(l), "#") {
				total++
			}
		}
		r = strings.NewReader(string(b))
	}
	sc := bufio.NewScanner(r)
	return func() (factory.Unit, bool, error) {
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			return open(l)
		}
		return factory.Unit{}, false, sc.Err()
	}, total, closeAll, nil
}

func (a *app) factorySyncCmd() *cobra.Command {
	var dir string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "sync --dir DIR",
		Short: "Upload the station's journaled records the server has not acknowledged",
		Long: `Upload every record of the station's journal that the server has not
acknowledged, in order. Uploads are idempotent (the server keeps a record once by
its id), so a record sent before a crash is not duplicated. A record whose
signature does not verify (a tampered journal) is not sent and is reported.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.openStation(cmd.Context(), dir, "sync", false)
			if err != nil {
				return err
			}
			defer st.Close()
			rep, err := st.Sync(cmd.Context())
			if jsonOut {
				if werr := writeJSON(a.stdout, rep); werr != nil {
					return werr
				}
			} else {
				fmt.Fprintf(a.stdout, "%d records uploaded, %d already on the server, %d pending\n", rep.Uploaded, rep.Known, rep.Pending)
				for _, r := range rep.Refused {
					fmt.Fprintf(a.stdout, "refused: %s\n", r)
				}
			}
			if err != nil {
				return err
			}
			if len(rep.Refused) > 0 {
				return fmt.Errorf("%d records refused", len(rep.Refused))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the station directory")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

// factoryStationCmds are the commands that run on a station.
func (a *app) factoryStationCmds() []*cobra.Command {
	return []*cobra.Command{a.factoryProvisionCmd(), a.factorySyncCmd()}
}
