package hw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
)

// factoryImage is the simulated factory partition's file: the files and
// the write-protect bit, replaced as a whole.
type factoryImage struct {
	Locked bool              `json:"locked"`
	Files  map[string][]byte `json:"files"`
}

// MaxFactoryData bounds the factory partition (all files together), like
// the few hundred KiB of a real boot partition.
const MaxFactoryData = 1 << 20

func (f simFactory) load() (*factoryImage, error) {
	b, err := os.ReadFile(filepath.Join(f.s.dir, "factory"))
	if errors.Is(err, os.ErrNotExist) {
		return &factoryImage{Files: map[string][]byte{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hw: read factory data: %w", err)
	}
	return parseFactoryImage(b)
}

// parseFactoryImage decodes the simulated factory partition file.
func parseFactoryImage(b []byte) (*factoryImage, error) {
	if len(b) > 2*MaxFactoryData {
		return nil, fmt.Errorf("hw: factory data image is %d bytes, more than the partition holds: %w", len(b), ErrInvalid)
	}
	var img factoryImage
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("hw: factory data image is corrupt: %v: %w", err, ErrInvalid)
	}
	if img.Files == nil {
		img.Files = map[string][]byte{}
	}
	for name := range img.Files {
		if err := checkKeyName(name); err != nil {
			return nil, fmt.Errorf("hw: factory data image: file %q: %w", name, ErrInvalid)
		}
	}
	return &img, nil
}

// Write replaces the factory data under the device lock.
func (f simFactory) Write(ctx context.Context, files map[string][]byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	total := 0
	for name, data := range files {
		if err := checkKeyName(name); err != nil {
			return fmt.Errorf("hw: factory data file %q: %w", name, ErrInvalid)
		}
		total += len(data)
	}
	if total > MaxFactoryData {
		return fmt.Errorf("hw: factory data of %d bytes does not fit the %d-byte partition: %w", total, MaxFactoryData, ErrInvalid)
	}
	return f.update(func(img *factoryImage) error {
		if img.Locked {
			return fmt.Errorf("hw: factory data partition is locked: %w", ErrLocked)
		}
		img.Files = maps.Clone(files)
		if img.Files == nil {
			img.Files = map[string][]byte{}
		}
		return nil
	})
}

// Read returns the factory data.
func (f simFactory) Read(ctx context.Context) (map[string][]byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	img, err := f.load()
	if err != nil {
		return nil, false, err
	}
	return img.Files, img.Locked, nil
}

// Lock sets the write-protect bit.
func (f simFactory) Lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return f.update(func(img *factoryImage) error {
		img.Locked = true
		return nil
	})
}

// update rewrites the factory file atomically under the device lock.
func (f simFactory) update(change func(*factoryImage) error) error {
	unlock, err := f.s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	img, err := f.load()
	if err != nil {
		return err
	}
	was := img.Locked
	if err := change(img); err != nil {
		return err
	}
	if was {
		return nil // locking a locked partition: nothing to write
	}
	b, err := json.Marshal(img)
	if err != nil {
		return fmt.Errorf("hw: factory data: %w", err)
	}
	if err := f.s.writeFile("factory", b, f.s.takeFail(OpFactory)); err != nil {
		return fmt.Errorf("hw: write factory data: %w", err)
	}
	return nil
}
