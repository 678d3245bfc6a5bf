package hw

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// UBootEnv is the BootEnv of a U-Boot environment, read with fw_printenv
// and written with fw_setenv from libubootenv (Debian: libubootenv-tool),
// the tools a Linux system uses to talk to its bootloader. The environment
// lives where Config (the fw_env.config file) says: one copy, or two
// redundant copies of which fw_setenv rewrites the inactive one and then
// makes it current by its flags byte, so a power cut leaves the old or the
// new environment.
//
// Set applies all its changes in one fw_setenv invocation (a script), after
// checking the keys and values as BootEnv says, that each "name=value" is
// at most 1023 bytes (the longest script line fw_setenv reads whole, a
// limit of this back end below BootEnv's 4096-byte values) and that the
// result fits the copy's size (fw_setenv itself overflows silently); it
// then reads the
// environment back and fails if the tool did not apply every change. Set
// calls on one UBootEnv are serialized, and so are those of processes
// sharing LockFile.
//
// The zero value is not usable: Config is required. A UBootEnv must not be
// copied after first use.
type UBootEnv struct {
	// Config is the path of the fw_env.config file (see
	// ParseUBootEnvConfig). Required.
	Config string
	// Printenv and Setenv are the programs; empty means "fw_printenv" and
	// "fw_setenv" found in PATH.
	Printenv, Setenv string
	// LockFile, when set, is flocked around each Set, so that processes
	// sharing the environment do not lose each other's changes between
	// the size check and the write. Empty: only this UBootEnv's calls are
	// serialized.
	LockFile string

	mu sync.Mutex
}

var _ BootEnv = (*UBootEnv)(nil)

// Get runs fw_printenv -c Config and returns the variables it prints.
// A failure of the tool (no valid copy, an unreadable device) is an error
// quoting what it said.
func (u *UBootEnv) Get(ctx context.Context) (map[string]string, error) {
	if u.Config == "" {
		return nil, fmt.Errorf("ubootenv: no config file given: %w", ErrInvalid)
	}
	out, err := u.run(ctx, u.Printenv, "fw_printenv", "-c", u.Config)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("ubootenv: fw_printenv printed %q, not name=value (a value holding a newline?)", line)
		}
		if _, dup := env[k]; dup {
			return nil, fmt.Errorf("ubootenv: fw_printenv printed %q twice", k)
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("ubootenv: reading fw_printenv's output: %w", err)
	}
	return env, nil
}

// Set applies changes as BootEnv says, with one fw_setenv -c Config -s
// SCRIPT. A change that would overflow the environment copy is refused
// with ErrInvalid, and nothing is written.
func (u *UBootEnv) Set(ctx context.Context, changes map[string]string) error {
	keys := slices.Sorted(maps.Keys(changes))
	for _, k := range keys {
		if err := checkBootEnvKey(k); err != nil {
			return err
		}
		if err := checkBootEnvValue(k, changes[k]); err != nil {
			return err
		}
	}
	for _, k := range keys {
		if n := len(k) + 1 + len(changes[k]); n > maxUBootScriptLine {
			return fmt.Errorf("ubootenv: %s=… is %d bytes, and fw_setenv reads script lines of at most %d (it would cut the value): %w", k, n, maxUBootScriptLine, ErrInvalid)
		}
	}
	if u.Config == "" {
		return fmt.Errorf("ubootenv: no config file given: %w", ErrInvalid)
	}
	if len(changes) == 0 {
		return nil
	}
	cfg, err := os.ReadFile(u.Config)
	if err != nil {
		return fmt.Errorf("ubootenv: %w", err)
	}
	copies, err := ParseUBootEnvConfig(cfg)
	if err != nil {
		return fmt.Errorf("ubootenv: %s: %w", u.Config, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.LockFile != "" {
		unlock, err := lockFile(u.LockFile)
		if err != nil {
			return err
		}
		defer unlock()
	}
	env, err := u.Get(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if v := changes[k]; v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	if need, room := ubootEnvDataLen(env), copies[0].DataLen(len(copies) == 2); need > room {
		return fmt.Errorf("ubootenv: the environment would take %d bytes and a copy holds %d: %w", need, room, ErrInvalid)
	}
	var script bytes.Buffer
	script.WriteString("# cradle: boot environment changes, applied together\n")
	for _, k := range keys {
		fmt.Fprintf(&script, "%s=%s\n", k, changes[k]) // "k=" deletes k
	}
	f, err := os.CreateTemp("", "cradle-fw_setenv-*.script")
	if err != nil {
		return fmt.Errorf("ubootenv: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(script.Bytes())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ubootenv: write script: %w", err)
	}
	if _, err := u.run(ctx, u.Setenv, "fw_setenv", "-c", u.Config, "-s", f.Name()); err != nil {
		return err
	}
	got, err := u.Get(ctx)
	if err != nil {
		return fmt.Errorf("ubootenv: reading back after fw_setenv: %w", err)
	}
	for _, k := range keys {
		if g, ok := got[k]; g != changes[k] || ok != (changes[k] != "") {
			return fmt.Errorf("ubootenv: after fw_setenv %s is %d bytes %.40q, want %d bytes %.40q: the tool did not apply the change", k, len(g), g, len(changes[k]), changes[k])
		}
	}
	return nil
}

// run runs prog (or def when prog is empty) and returns its standard
// output; a failure quotes its standard error.
func (u *UBootEnv) run(ctx context.Context, prog, def string, args ...string) ([]byte, error) {
	if prog == "" {
		prog = def
	}
	cmd := exec.CommandContext(ctx, prog, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ubootenv: %s %s: %v: %s", filepath.Base(prog), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// maxUBootScriptLine is the longest "name=value" line fw_setenv -s reads
// whole (libubootenv 0.3: longer lines are cut and the rest dropped).
const maxUBootScriptLine = 1023

// ubootEnvDataLen is the length of env's variables in an image: each
// "name=value" and its NUL, and the NUL that ends the list.
func ubootEnvDataLen(env map[string]string) int {
	n := 1
	for k, v := range env {
		n += len(k) + 1 + len(v) + 1
	}
	return n
}

// UBootEnvCopy is one copy of a U-Boot environment as a line of
// fw_env.config names it: a device or file, the offset of the copy in it,
// and the copy's size (header included).
type UBootEnvCopy struct {
	Path   string
	Offset int64
	Size   int
}

// DataLen is the room for variables in the copy: Size less the header (a
// CRC-32, and with redundant copies a flags byte).
func (c UBootEnvCopy) DataLen(redundant bool) int {
	if redundant {
		return c.Size - 5
	}
	return c.Size - 4
}

// Limits of the images this package makes and reads.
const (
	minUBootEnvSize = 16
	maxUBootEnvSize = 16 << 20
)

// ParseUBootEnvConfig reads an fw_env.config in the classic format
// libubootenv and U-Boot's tools read: '#' comments and blank lines, then
// one line per copy, "path offset size [sector-size [sectors]]", numbers in
// C notation (0x… hexadecimal, 0… octal, else decimal). One line is a
// single environment, two are redundant copies, which must have the same
// size. Errors wrap ErrInvalid and name the line.
func ParseUBootEnvConfig(b []byte) ([]UBootEnvCopy, error) {
	var copies []UBootEnvCopy
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 || len(f) > 5 {
			return nil, fmt.Errorf("fw_env.config line %d: %q: want \"path offset size [sector-size [sectors]]\": %w", i+1, line, ErrInvalid)
		}
		off, err := strconv.ParseInt(f[1], 0, 64)
		if err != nil || off < 0 {
			return nil, fmt.Errorf("fw_env.config line %d: offset %q is not a non-negative number: %w", i+1, f[1], ErrInvalid)
		}
		size, err := strconv.ParseInt(f[2], 0, 64)
		if err != nil || size < minUBootEnvSize || size > maxUBootEnvSize {
			return nil, fmt.Errorf("fw_env.config line %d: size %q is not a number from %d to %d: %w", i+1, f[2], minUBootEnvSize, maxUBootEnvSize, ErrInvalid)
		}
		for _, n := range f[3:] {
			if v, err := strconv.ParseInt(n, 0, 64); err != nil || v < 0 {
				return nil, fmt.Errorf("fw_env.config line %d: %q is not a non-negative number: %w", i+1, n, ErrInvalid)
			}
		}
		copies = append(copies, UBootEnvCopy{Path: f[0], Offset: off, Size: int(size)})
	}
	switch {
	case len(copies) == 0:
		return nil, fmt.Errorf("fw_env.config: no environment line: %w", ErrInvalid)
	case len(copies) > 2:
		return nil, fmt.Errorf("fw_env.config: %d environment lines, at most 2 (redundant copies): %w", len(copies), ErrInvalid)
	case len(copies) == 2 && copies[0].Size != copies[1].Size:
		return nil, fmt.Errorf("fw_env.config: the redundant copies differ in size (%d and %d): %w", copies[0].Size, copies[1].Size, ErrInvalid)
	}
	return copies, nil
}

// UBootEnvImage is one copy of a U-Boot environment: a little-endian
// CRC-32 (IEEE) of the data area, with redundant copies a flags byte, then
// the data area: "name=value" strings each ended by a NUL, an empty string
// (a second NUL) ending the list, and padding to the copy's size. Of two
// valid redundant copies the tools read the one whose flags byte is the
// later (the higher, with 0 following 255) and write the other with the
// next flags value.
type UBootEnvImage struct {
	Redundant bool
	Flags     byte // the redundant copy's serial number; 0 without Redundant
	Vars      map[string]string
}

// ParseUBootEnvImage decodes one copy (the whole copy, header included).
// It refuses, with errors wrapping ErrInvalid, a copy shorter than a
// header, a CRC that does not match, a list without its ending NUL, a
// variable without '=' or with an empty name, and a name given twice.
func ParseUBootEnvImage(b []byte, redundant bool) (*UBootEnvImage, error) {
	hdr := 4
	if redundant {
		hdr = 5
	}
	if len(b) < hdr+1 {
		return nil, fmt.Errorf("ubootenv: image of %d bytes is shorter than a header and an empty list: %w", len(b), ErrInvalid)
	}
	data := b[hdr:]
	if want, got := binary.LittleEndian.Uint32(b), crc32.ChecksumIEEE(data); want != got {
		return nil, fmt.Errorf("ubootenv: CRC is %08x, the data's is %08x: %w", want, got, ErrInvalid)
	}
	img := &UBootEnvImage{Redundant: redundant, Vars: map[string]string{}}
	if redundant {
		img.Flags = b[4]
	}
	for {
		i := bytes.IndexByte(data, 0)
		if i < 0 {
			return nil, fmt.Errorf("ubootenv: the variable list is not ended by a NUL: %w", ErrInvalid)
		}
		if i == 0 {
			return img, nil
		}
		entry := string(data[:i])
		data = data[i+1:]
		k, v, ok := strings.Cut(entry, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("ubootenv: entry %q is not name=value: %w", entry, ErrInvalid)
		}
		if _, dup := img.Vars[k]; dup {
			return nil, fmt.Errorf("ubootenv: variable %q appears twice: %w", k, ErrInvalid)
		}
		img.Vars[k] = v
	}
}

// Format encodes the image as a copy of size bytes (header included), the
// variables sorted by name and the rest padded with 0xff as erased flash.
// It refuses, with ErrInvalid, names or values BootEnv would refuse and
// variables that do not fit.
func (img *UBootEnvImage) Format(size int) ([]byte, error) {
	c := UBootEnvCopy{Size: size}
	if size < minUBootEnvSize || size > maxUBootEnvSize {
		return nil, fmt.Errorf("ubootenv: size %d is not from %d to %d: %w", size, minUBootEnvSize, maxUBootEnvSize, ErrInvalid)
	}
	for _, k := range slices.Sorted(maps.Keys(img.Vars)) {
		if err := checkBootEnvKey(k); err != nil {
			return nil, err
		}
		v := img.Vars[k]
		if v == "" {
			return nil, fmt.Errorf("ubootenv: variable %q has an empty value (U-Boot has no empty variables): %w", k, ErrInvalid)
		}
		if err := checkBootEnvValue(k, v); err != nil {
			return nil, err
		}
	}
	if need, room := ubootEnvDataLen(img.Vars), c.DataLen(img.Redundant); need > room {
		return nil, fmt.Errorf("ubootenv: the variables take %d bytes and a copy of %d bytes holds %d: %w", need, size, room, ErrInvalid)
	}
	hdr := size - c.DataLen(img.Redundant)
	b := make([]byte, hdr, size)
	if img.Redundant {
		b[4] = img.Flags
	}
	for _, k := range slices.Sorted(maps.Keys(img.Vars)) {
		b = append(b, k...)
		b = append(b, '=')
		b = append(b, img.Vars[k]...)
		b = append(b, 0)
	}
	b = append(b, 0)
	for len(b) < size {
		b = append(b, 0xff)
	}
	binary.LittleEndian.PutUint32(b, crc32.ChecksumIEEE(b[hdr:]))
	return b, nil
}

// UBootEnvConfigName is the name of the config file CreateUBootEnvFiles
// writes.
const UBootEnvConfigName = "fw_env.config"

// CreateUBootEnvFiles makes a file-backed U-Boot environment in dir
// (created if missing): the copy uboot-env (and with redundant
// uboot-env-redund, the older copy, so the first fw_setenv writes it), each
// of size bytes holding initial, and fw_env.config naming them. It returns
// the UBootEnv for it, with a lock file in dir. It refuses, with
// ErrInvalid, a size or variables Format refuses, and with ErrExists a dir
// that already holds a config.
func CreateUBootEnvFiles(dir string, size int, redundant bool, initial map[string]string) (*UBootEnv, error) {
	img := &UBootEnvImage{Redundant: redundant, Flags: 1, Vars: initial}
	if !redundant {
		img.Flags = 0
	}
	first, err := img.Format(size)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ubootenv: %w", err)
	}
	// The config names the copies by absolute path: the tools resolve a
	// relative one against their working directory.
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("ubootenv: %w", err)
	}
	config := filepath.Join(dir, UBootEnvConfigName)
	if _, err := os.Stat(config); err == nil {
		return nil, fmt.Errorf("ubootenv: %s already exists: %w", config, ErrExists)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ubootenv: %w", err)
	}
	s := &SimDevice{dir: dir} // for its atomic file writes
	files := []string{"uboot-env"}
	if err := s.writeFile("uboot-env", first, nil); err != nil {
		return nil, err
	}
	if redundant {
		img.Flags = 0
		second, err := img.Format(size)
		if err != nil {
			return nil, err
		}
		if err := s.writeFile("uboot-env-redund", second, nil); err != nil {
			return nil, err
		}
		files = append(files, "uboot-env-redund")
	}
	var cfg strings.Builder
	cfg.WriteString("# U-Boot environment made by cradle: path offset size\n")
	for _, f := range files {
		fmt.Fprintf(&cfg, "%s 0x0 %#x\n", filepath.Join(dir, f), size)
	}
	if err := s.writeFile(UBootEnvConfigName, []byte(cfg.String()), nil); err != nil {
		return nil, err
	}
	return &UBootEnv{Config: config, LockFile: filepath.Join(dir, "uboot-env.lock")}, nil
}
