package cradle

import (
	"context"
	"time"
)

// Revoking a device takes every credential it has at once: every
// certificate (its IDevID too, so that it cannot enroll again), every
// device token (Mender session tokens, hawkBit target tokens) and every
// Mender auth set bound to it (rejected, so that its key is refused). The
// CRL is regenerated, the OCSP responder answers revoked and the device's
// live MQTT sessions are closed before the call returns; every other
// channel checks the store on each request. A device returned for repair
// (moved to rma) loses its operational credentials the same way (its
// LDevIDs, tokens and auth sets) but keeps its IDevID, with which it
// enrolls again once the factory has re-provisioned it.

// DeviceRevocation is what revoking one device took from it.
type DeviceRevocation struct {
	Serial    string           `json:"serial"`
	Reason    RevocationReason `json:"reason"`
	RevokedAt time.Time        `json:"revoked_at"`
	// Revoked lists the credentials, in the kinds of decommissioning:
	// "certificate:idevid", "certificate:ldevid", "token:<kind>",
	// "mender-auth-set". Empty when the device had none left.
	Revoked []DecommissionedCredential `json:"revoked"`
	// State is the device's state after the revocation: a revoked
	// device is out of service (deployed → suspended, provisioned →
	// rma, in the same transaction); other states stay.
	State State `json:"state"`
}

// BulkRevocation is what revoking the devices a selector matches took.
type BulkRevocation struct {
	Selector     string           `json:"selector"`
	Reason       RevocationReason `json:"reason"`
	RevokedAt    time.Time        `json:"revoked_at"`
	Devices      []string         `json:"devices"`      // the serials matched, sorted
	Certificates int              `json:"certificates"` // certificates revoked
	Tokens       int              `json:"tokens"`       // device tokens revoked
	AuthSets     int              `json:"auth_sets"`    // Mender auth sets rejected
	Suspended    int              `json:"suspended"`    // devices moved from deployed to suspended
	RMA          int              `json:"rma"`          // devices moved from provisioned to rma
}

// RevocationService revokes devices. Both calls need PermCertRevoke, run
// as one transaction with its audit entry, and are idempotent: what is
// already revoked is left as it was and not listed again. A revoked
// device is also taken out of service in that transaction, so that no
// path that checks only its state (a gateway token) lets it on: deployed
// → suspended, provisioned → rma, recorded in its history by the actor
// with the reason "credentials revoked: <reason>".
type RevocationService interface {
	// RevokeDevice revokes every credential of a device. ENOTFOUND for an
	// unknown device; EINVALID for a reason that cannot be used.
	RevokeDevice(ctx context.Context, serial string, reason RevocationReason) (*DeviceRevocation, error)
	// RevokeDevices revokes every credential of each device of the tenant
	// that the label selector matches. EINVALID for an empty or malformed
	// selector (an empty one would match the whole fleet).
	RevokeDevices(ctx context.Context, selector string, reason RevocationReason) (*BulkRevocation, error)
}
