package sim

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/factory"
	"cradle/internal/httpapi"
	"cradle/internal/pki"
)

// LineConfig is what SetUpLine needs: the operator API with an admin
// token, and the PKI's trust anchors and manufacturing CA key (as on the
// server's machine, where `cradle pki init` put them).
type LineConfig struct {
	// API is the operator API's base URL; Token an admin token.
	API, Token string
	// HTTPClient reaches the API; nil means a default client.
	HTTPClient *http.Client
	// Root and ManufacturingCA are the PKI's certificates; ManufacturingKey
	// is the manufacturing CA's key. CommandSigner, when not nil, is
	// written to every unit.
	Root, ManufacturingCA, CommandSigner *x509.Certificate
	ManufacturingKey                     crypto.Signer
	// Units is how many units the line must be able to build.
	Units int
	// Org is the O of the IDevIDs; "" leaves it out.
	Org string
	// Stations is how many stations work in parallel (a unit's time is
	// mostly its simulated hardware's synced writes, which overlap); 0
	// means 4. There are never more stations than units.
	Stations int
}

// Line is the factory lines set up for a simulated fleet: stations
// working in parallel, each on its own batch, and a firmware release.
// Close releases the stations.
type Line struct {
	Stations []*factory.Station
	// Batches[i] is the batch of Stations[i]; Units[i] its quantity.
	Batches []string
	Units   []int
	Release *factory.Release
}

// Close closes the stations (their journals).
func (l *Line) Close() error {
	var errs []error
	for _, st := range l.Stations {
		errs = append(errs, st.Close())
	}
	return errors.Join(errs...)
}

// Sim units are of this model and hardware revision, with this firmware.
const (
	SimModel    = "sim-1"
	SimRevision = "A"
	SimFirmware = "1.0.0"
)

// SetUpLine sets up factory lines for cfg.Units simulated units in
// dir/line, as an operator sets up real ones, through the operator API: a
// range of locally administered MAC addresses when the server has too few
// free, a small firmware release, and cfg.Stations stations "sim-<tag>-<k>",
// each enrolled with a new station key (kept in dir/line, mode 0600) and
// given its API token and its own batch "SIM-<tag>-<k>" (serials
// SIM-<tag>-<k>-NNNNNN) of its share of the units. <tag> is random, so that
// fleets never share serials. The stations are test stations: a production
// PKI is refused, since simulated units must never carry production
// identities.
func SetUpLine(ctx context.Context, dir string, cfg LineConfig) (*Line, error) {
	switch {
	case cfg.Root == nil || cfg.ManufacturingCA == nil || cfg.ManufacturingKey == nil:
		return nil, errors.New("sim: the root, the manufacturing CA and its key are required")
	case !pki.IsTestCertificate(cfg.Root):
		return nil, errors.New("sim: the server's PKI is a production PKI: simulated units are test units; run the simulator against a server whose PKI was made with cradle pki init --profile test")
	case cfg.Units <= 0 || cfg.Units > cradle.MaxBatchQuantity:
		return nil, fmt.Errorf("sim: %d units: give 1 to %d", cfg.Units, cradle.MaxBatchQuantity)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	api := strings.TrimRight(cfg.API, "/")
	admin := httpapi.NewClient(api, cfg.Token, hc)
	lineDir := filepath.Join(dir, "line")
	if err := os.MkdirAll(lineDir, 0o700); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	tag := strings.ToUpper(hex.EncodeToString(b))

	if err := ensureMACs(ctx, admin, cfg.Units); err != nil {
		return nil, err
	}
	rel, err := writeRelease(filepath.Join(lineDir, "release-"+tag))
	if err != nil {
		return nil, err
	}
	k := cfg.Stations
	if k <= 0 {
		k = 4
	}
	k = min(k, cfg.Units)
	l := &Line{Release: rel}
	for i := range k {
		units := cfg.Units/k + btoi(i < cfg.Units%k)
		st, batch, err := setUpStation(ctx, admin, api, hc, lineDir, fmt.Sprintf("%s-%d", tag, i+1), units, cfg)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.Stations, l.Batches, l.Units = append(l.Stations, st), append(l.Batches, batch), append(l.Units, units)
	}
	return l, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// setUpStation enrolls station sim-<id> and creates its batch SIM-<id>
// of units units.
func setUpStation(ctx context.Context, admin *httpapi.Client, api string, hc *http.Client, lineDir, id string, units int, cfg LineConfig) (*factory.Station, string, error) {
	batch, err := admin.CreateBatch(ctx, cradle.BatchCreate{ID: "SIM-" + id, Model: SimModel, HardwareRevision: SimRevision,
		Quantity: units, FirmwareVersion: SimFirmware, Profile: cradle.ProfileTest, SerialPattern: "SIM-" + id + "-{seq:06}"})
	if err != nil {
		return nil, "", fmt.Errorf("sim: create the batch: %w", err)
	}
	// The station key: a file key in the line directory, as a simulated
	// station has no HSM.
	sk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(sk)
	if err != nil {
		return nil, "", err
	}
	if err := atomicfile.WriteFile(filepath.Join(lineDir, "station-"+id+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, "", fmt.Errorf("sim: %w", err)
	}
	name := "sim-" + strings.ToLower(id)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, sk)
	if err != nil {
		return nil, "", err
	}
	enrolled, err := admin.EnrollStation(ctx, name, cradle.ProfileTest, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	if err != nil {
		return nil, "", fmt.Errorf("sim: enroll the station: %w", err)
	}
	blk, _ := pem.Decode([]byte(enrolled.Certificate))
	if blk == nil {
		return nil, "", errors.New("sim: the server's station certificate is not PEM")
	}
	stationCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("sim: the server's station certificate: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(lineDir, "station-"+id+".token"), []byte(enrolled.Token+"\n"), 0o600); err != nil {
		return nil, "", fmt.Errorf("sim: %w", err)
	}
	j, err := factory.OpenJournal(filepath.Join(lineDir, "journal-"+id+".jsonl"), func(s cradle.SignedTrace) error { return s.Verify(stationCert) })
	if err != nil {
		return nil, "", err
	}
	var signer []*x509.Certificate
	if cfg.CommandSigner != nil {
		signer = []*x509.Certificate{cfg.CommandSigner}
	}
	st, err := factory.New(factory.Config{
		Name: name, Profile: cradle.ProfileTest, Operator: "cradle-sim", Org: cfg.Org,
		StationKey: sk, StationCert: stationCert,
		ManufacturingCA: cfg.ManufacturingCA, ManufacturingKey: cfg.ManufacturingKey, Root: cfg.Root,
		CommandSigner: signer, Journal: j,
		Server:  httpapi.NewClient(api, enrolled.Token, hc),
		Reserve: min(units, cradle.MaxAllocation),
	})
	if err != nil {
		j.Close()
		return nil, "", err
	}
	return st, batch.ID, nil
}

// ensureMACs adds a range of locally administered addresses (02:5c:…)
// when the server's ranges have fewer than n free.
func ensureMACs(ctx context.Context, admin *httpapi.Client, n int) error {
	ranges, err := admin.MACRanges(ctx)
	if err != nil {
		return fmt.Errorf("sim: list the MAC ranges: %w", err)
	}
	free := int64(0)
	for _, r := range ranges {
		first, err1 := cradle.ParseMAC(r.First)
		last, err2 := cradle.ParseMAC(r.Last)
		if err1 == nil && err2 == nil {
			free += int64(last-first+1) - r.Used
		}
	}
	if free >= int64(n) {
		return nil
	}
	// A random block of 02:5c:xx:…; retried on the rare overlap with
	// a range already there.
	for range 3 {
		var b [1]byte
		rand.Read(b[:])
		first := uint64(0x025c)<<32 | uint64(b[0])<<24
		_, err = admin.AddMACRange(ctx, macString(first), macString(first+uint64(n)-1))
		if err == nil || cradle.ErrorCode(err) != cradle.ECONFLICT {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("sim: add a MAC range: %w", err)
	}
	return nil
}

func macString(v uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	parts := make([]string, 6)
	for i := range parts {
		parts[i] = hex.EncodeToString(b[2+i : 3+i])
	}
	return strings.Join(parts, ":")
}

// writeRelease writes a small firmware release (a random image, a
// bootloader, a new image key) to dir and loads it.
func writeRelease(dir string) (*factory.Release, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	img := make([]byte, 4<<10)
	rand.Read(img)
	files := map[string][]byte{
		"release.yaml": fmt.Appendf(nil, "model: %s\nversion: %s\nprofile: test\nhardware_revisions: [%s]\nimage: firmware.bin\nbootloader: bootloader.bin\nimage_key: image-key.pem\n",
			SimModel, SimFirmware, SimRevision),
		"firmware.bin":   img,
		"bootloader.bin": []byte("simulated bootloader\n"),
		"image-key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
	}
	for n, b := range files {
		if err := atomicfile.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
	}
	return factory.LoadRelease(dir)
}
