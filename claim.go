package cradle

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"time"
)

// Claim codes. The factory station draws one per unit and prints it on
// the unit's label; the signed trace record carries only its hash
// (ClaimCodeHash), so the server can check a code but never learns it
// from its records. An operator who holds the unit claims it: the code
// binds the device to a site or an owner.
//
// A code is 10 symbols of Crockford's base32 (50 random bits) and one
// check symbol (the value modulo 37, Crockford's check alphabet), written
// in groups of 4, 4 and 3: "7K3M-9QXA-2PZ". Reading it back is forgiving
// the way Crockford's encoding is: case, hyphens and spaces do not
// matter, O reads as 0, I and L as 1. The check symbol catches every
// single mistyped symbol and every swap of two neighbours.
const (
	ClaimCodeSymbols = 10                                 // data symbols of a claim code (50 bits)
	claimAlphabet    = "0123456789ABCDEFGHJKMNPQRSTVWXYZ" // Crockford base32
	claimCheck       = claimAlphabet + "*~$=U"            // Crockford's check symbols, values 0 to 36
)

// Claim rules.
const (
	MaxClaimFailures = 5                // wrong codes in a row before claiming a device is locked
	ClaimLockout     = 15 * time.Minute // how long claiming stays locked after MaxClaimFailures
)

// Labels the claim sets and the quarantine policy uses. Config groups and
// rollouts select on them like on any label ("quarantine=true").
const (
	LabelSite       = "site"
	LabelOwner      = "owner"
	LabelQuarantine = "quarantine"
)

// NewClaimCode draws a random claim code, formatted for a label.
func NewClaimCode() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return formatClaimCode(binary.BigEndian.Uint64(b[:]) >> (64 - 5*ClaimCodeSymbols)), nil
}

// formatClaimCode writes the 50-bit value v as a claim code with its
// check symbol.
func formatClaimCode(v uint64) string {
	var s [ClaimCodeSymbols + 1]byte
	for i := ClaimCodeSymbols - 1; i >= 0; i-- {
		s[i] = claimAlphabet[(v>>(5*(ClaimCodeSymbols-1-i)))&31]
	}
	s[ClaimCodeSymbols] = claimCheck[v%37]
	return string(s[:4]) + "-" + string(s[4:8]) + "-" + string(s[8:])
}

// ParseClaimCode reads a claim code as a person types it and returns its
// canonical form (11 upper-case symbols, no separators), which
// ClaimCodeHash takes. The error is EINVALID and says what is wrong: the
// length, a symbol outside the alphabet, or a check symbol that does not
// match (a typo).
func ParseClaimCode(s string) (string, error) {
	if len(s) > 64 {
		return "", Errorf(EINVALID, "claim code is too long: it has %d symbols and looks like XXXX-XXXX-XXX", ClaimCodeSymbols+1)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		}
		switch c {
		case 'O':
			c = '0'
		case 'I', 'L':
			c = '1'
		}
		b.WriteByte(c)
	}
	code := b.String()
	if len(code) != ClaimCodeSymbols+1 {
		return "", Errorf(EINVALID, "claim code %q has %d symbols, want %d (as printed on the unit's label, XXXX-XXXX-XXX)", truncate(s, 40), len(code), ClaimCodeSymbols+1)
	}
	var v uint64
	for i := range ClaimCodeSymbols {
		d := strings.IndexByte(claimAlphabet, code[i])
		if d < 0 {
			return "", Errorf(EINVALID, "claim code %q: symbol %q is not used in claim codes (they use 0-9 and A-Z without I, L, O, U)", truncate(s, 40), code[i])
		}
		v = v<<5 | uint64(d)
	}
	if code[ClaimCodeSymbols] != claimCheck[v%37] {
		return "", Errorf(EINVALID, "claim code %q: the check symbol does not match; a symbol was mistyped, read it again from the label", truncate(s, 40))
	}
	return code, nil
}

// ClaimCodeHash returns the hash of a unit's claim code that the trace
// record carries and the server keeps: hex SHA-256 over a domain tag,
// the unit's serial and the canonical code, so that equal codes of two
// units do not hash alike and no table serves all units. code is
// canonicalized first; an invalid code hashes to "".
func ClaimCodeHash(serial, code string) string {
	c, err := ParseClaimCode(code)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256([]byte("cradle-claim-v1\x00" + serial + "\x00" + c))
	return hex.EncodeToString(sum[:])
}

// validateClaimHash checks the claim_code_hash field of a trace record.
func validateClaimHash(h string) error {
	if h == "" {
		return nil
	}
	if len(h) != 64 || strings.ToLower(h) != h {
		return Errorf(EINVALID, "claim_code_hash must be 64 lower-case hex digits (SHA-256)")
	}
	if _, err := hex.DecodeString(h); err != nil {
		return Errorf(EINVALID, "claim_code_hash must be 64 lower-case hex digits (SHA-256)")
	}
	return nil
}

// DeviceClaim asks to claim a device: the code from its label, and the
// site or owner (or both) to bind it to.
type DeviceClaim struct {
	Code  string `json:"code"`
	Site  string `json:"site,omitempty"`
	Owner string `json:"owner,omitempty"`
}

// Validate checks a claim's fields and canonicalizes its code. The error
// is EINVALID and names the field.
func (c *DeviceClaim) Validate() error {
	if c.Code == "" {
		return Errorf(EINVALID, "code is required: the claim code printed on the unit's label")
	}
	code, err := ParseClaimCode(c.Code)
	if err != nil {
		return err
	}
	c.Code = code
	if c.Site == "" && c.Owner == "" {
		return Errorf(EINVALID, "give a site, an owner or both to bind the device to")
	}
	// In a fixed order, so that the error names the same field every time.
	for _, f := range [][2]string{{"site", c.Site}, {"owner", c.Owner}} {
		if v := f[1]; len(v) > MaxLabelValueLen || !isPrintable(v) || strings.TrimSpace(v) != v {
			return Errorf(EINVALID, "invalid %s %q: use at most %d printable characters without surrounding spaces", f[0], truncate(v, 80), MaxLabelValueLen)
		}
	}
	return nil
}

// TenantPolicy is a tenant's fleet policy.
type TenantPolicy struct {
	// QuarantineUnclaimed puts a device that enrolls before it is claimed
	// in the quarantine group: the label quarantine=true, removed when
	// it is claimed. Off by default.
	QuarantineUnclaimed bool `json:"quarantine_unclaimed"`
	// DecommissionApprovers is how many admins must agree to
	// decommission a device: 0 or 1 (the requester alone), or 2 (a second
	// admin approves). A request is bound to the rule in force when it
	// was made: lowering this later does not let a request awaiting
	// approval through (it still needs the second admin). The second
	// admin's token may not descend from the requester's token (nor the
	// reverse), nor be created after the request.
	DecommissionApprovers int `json:"decommission_approvers,omitempty"`
}

// ClaimService binds devices to sites and owners by their claim codes, and
// keeps the tenant policy that decides what happens to a device enrolling
// unclaimed.
type ClaimService interface {
	// ClaimDevice checks c.Code against the hash the factory recorded for
	// the device, then labels it site=… and owner=… (those given),
	// removes its quarantine label and records the claim, audited.
	// Claiming again with the same site and owner returns the device
	// unchanged; with others it is ECONFLICT. A wrong code is EFORBIDDEN
	// and counted; after MaxClaimFailures in a row claiming the device is
	// locked for ClaimLockout (EFORBIDDEN saying until when). Refusals
	// are audited. Needs PermDeviceClaim. ENOTFOUND; EINVALID (bad code
	// format, no site nor owner); ECONFLICT when the device has no claim
	// code on record (not provisioned by a station that prints one) or
	// is in a state that cannot be claimed (factory, rma, eol).
	ClaimDevice(ctx context.Context, serial string, c DeviceClaim) (*Device, error)
	// FindPolicy returns the actor's tenant policy (the zero policy when
	// none was set). Needs PermDeviceRead.
	FindPolicy(ctx context.Context) (*TenantPolicy, error)
	// UpdatePolicy replaces the tenant policy, audited. Needs
	// PermPolicyWrite.
	UpdatePolicy(ctx context.Context, p TenantPolicy) (*TenantPolicy, error)
}
