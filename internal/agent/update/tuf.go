package update

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"cradle/internal/agent/tufclient"
)

// TUF is Metadata over the agent's TUF client (internal/agent/tufclient),
// one client per metadata URL, all keeping their trusted metadata in Dir.
type TUF struct {
	// Dir keeps the trusted metadata between updates.
	Dir string
	// TrustedRoot is the factory's root metadata, used until Dir holds one.
	TrustedRoot []byte
	// HTTP fetches metadata (the agent's mTLS client).
	HTTP *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	url    string
	client *tufclient.Client
	fresh  bool // the last Refresh succeeded
}

var _ Metadata = (*TUF)(nil)

// Refresh refreshes the trusted metadata from metadataURL. A refusal of
// the client (an attack it names) is returned as is; any other failure
// is transient. After a failure Target answers nothing until a Refresh
// succeeds.
func (t *TUF) Refresh(ctx context.Context, metadataURL string) error {
	t.fresh = false
	if t.client == nil || t.url != metadataURL {
		c, err := tufclient.Open(tufclient.Options{Dir: t.Dir, MetadataURL: metadataURL, HTTPClient: t.HTTP, TrustedRoot: t.TrustedRoot, Now: t.Now})
		if err != nil {
			return err
		}
		t.client, t.url = c, metadataURL
	}
	err := t.client.Refresh(ctx)
	if _, attack := tufclient.AttackOf(err); err != nil && !attack {
		return &TransientError{fmt.Errorf("update: TUF metadata: %w", err)}
	}
	t.fresh = err == nil
	return err
}

// Target looks path up in the targets metadata of the last Refresh,
// which must have succeeded: the client would otherwise answer from an
// older one, which the failed Refresh may have found expired or
// superseded.
func (t *TUF) Target(path string) (Target, error) {
	if t.client == nil || !t.fresh {
		return Target{}, fmt.Errorf("update: no TUF metadata: the last refresh failed or none was made; refresh before looking up %s", path)
	}
	tt, err := t.client.Lookup(path)
	if err != nil {
		return Target{}, err
	}
	out := Target{Path: tt.Path, Length: tt.Length, Custom: tt.Custom}
	if b, err := hex.DecodeString(tt.SHA256); err != nil || len(b) != 32 {
		return Target{}, fmt.Errorf("update: target %s: bad SHA-256 %q", path, tt.SHA256)
	} else {
		copy(out.SHA256[:], b)
	}
	return out, nil
}
