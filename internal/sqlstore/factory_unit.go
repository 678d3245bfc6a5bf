package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"cradle"
)

// macBlock is a locked MAC range with addresses left.
type macBlock struct {
	pk                  int64
	first, last, offset int64
}

// AllocateUnits hands count new units of a batch to a station, in one
// transaction: serials from the batch's pattern after the last one handed
// out, MACs from the tenant's pool in address order, a device in state
// factory and a factory_units row for each. The batch row is locked first
// and the pool's rows next, so concurrent allocations queue and never
// share a serial or a MAC.
func (s *FactoryService) AllocateUnits(ctx context.Context, batch, station string, count int) ([]cradle.UnitAllocation, error) {
	subject := "batch:" + batch
	a, err := s.db.authorize(ctx, cradle.PermFactoryProvision, "factory.allocate", subject)
	if err != nil {
		return nil, err
	}
	if count < 1 || count > cradle.MaxAllocation {
		return nil, cradle.Errorf(cradle.EINVALID, "count %d is out of range 1..%d", count, cradle.MaxAllocation)
	}
	var out []cradle.UnitAllocation
	err = s.db.write(ctx, func(tx *Tx) error {
		b, err := findBatch(ctx, tx, tx.db.dialect, a.TenantID, batch, true)
		if err != nil {
			return err
		}
		st, err := findStation(ctx, tx, a.TenantID, station)
		if err != nil {
			return err
		}
		if st.Profile != b.Profile {
			return cradle.Errorf(cradle.ECONFLICT, "station %s is a %s station and batch %s is a %s batch; a station provisions only batches of its own profile", st.Name, st.Profile, b.ID, b.Profile)
		}
		if open := b.Open(); open == 0 {
			return cradle.Errorf(cradle.ECONFLICT, "batch %s is full: %d of %d allocated, %d failed", b.ID, b.Allocated, b.Quantity, b.Failed)
		} else if open < count {
			return cradle.Errorf(cradle.ECONFLICT, "batch %s has room for %d more units, %d asked: %d of %d allocated, %d failed", b.ID, open, count, b.Allocated, b.Quantity, b.Failed)
		}
		macs, blocks, err := tx.takeMACs(ctx, a.TenantID, count)
		if err != nil {
			return err
		}
		labels, _ := json.Marshal(map[string]string{"batch": b.ID})
		now := micros(tx.now)
		out = make([]cradle.UnitAllocation, 0, count)
		for i := range count {
			seq := b.Allocated + 1 + i
			serial, err := cradle.FormatSerial(b.SerialPattern, seq)
			if err != nil {
				return err
			}
			if err := cradle.ValidateSerial(serial); err != nil {
				return cradle.Errorf(cradle.ECONFLICT, "batch %s: its serial pattern gives %q for unit %d, which is not a valid serial: %s", b.ID, serial, seq, cradle.ErrorMessage(err))
			}
			mac := cradle.FormatMAC(macs[i])
			macList, _ := json.Marshal([]string{mac})
			var id int64
			err = tx.queryRow(ctx, `INSERT INTO devices (tenant_id, serial, hardware_uid, macs, model, hardware_revision, labels, state, initial_state, created_by, created_at, updated_at, state_changed_at)
				VALUES (?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
				a.TenantID, serial, string(macList), b.Model, b.HardwareRevision, string(labels), string(cradle.StateFactory), string(cradle.StateFactory), a.String(), now, now, now).Scan(&id)
			if tx.db.dialect.uniqueViolation(err) {
				return cradle.Errorf(cradle.ECONFLICT, "serial %s (unit %d of batch %s) is already a device in this tenant; nothing was allocated: remove or rename that device, or create a batch with another serial pattern", serial, seq, b.ID)
			} else if err != nil {
				return fmt.Errorf("sqlstore: allocate units: %w", err)
			}
			_, err = tx.exec(ctx, `INSERT INTO factory_units (tenant_id, serial, device_id, mac, batch_id, station, status, allocated_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				a.TenantID, serial, id, int64(macs[i]), b.ID, st.Name, string(cradle.UnitAllocated), now, now)
			if tx.db.dialect.uniqueViolation(err) {
				return cradle.Errorf(cradle.ECONFLICT, "MAC %s or serial %s was already handed out; nothing was allocated", mac, serial)
			} else if err != nil {
				return fmt.Errorf("sqlstore: allocate units: %w", err)
			}
			out = append(out, cradle.UnitAllocation{Serial: serial, MAC: mac, Batch: b.ID})
		}
		for _, m := range blocks {
			if _, err := tx.exec(ctx, `UPDATE mac_ranges SET next_offset = ? WHERE pk = ?`, m.offset, m.pk); err != nil {
				return fmt.Errorf("sqlstore: allocate units: %w", err)
			}
		}
		if _, err := tx.exec(ctx, `UPDATE batches SET allocated = allocated + ? WHERE tenant_id = ? AND id = ?`, count, a.TenantID, b.ID); err != nil {
			return fmt.Errorf("sqlstore: allocate units: %w", err)
		}
		// The units are new devices: they get the groups' desired
		// document as created and imported devices do.
		if err := tx.twinsForNewDevices(ctx, a.TenantID, ""); err != nil {
			return err
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "factory.allocate", Subject: subject, Details: map[string]string{
			"batch": b.ID, "station": st.Name, "count": strconv.Itoa(count), "first": out[0].Serial, "last": out[len(out)-1].Serial,
			"first_mac": out[0].MAC, "last_mac": out[len(out)-1].MAC}})
	})
	if err != nil {
		return nil, s.refuseErr(ctx, a, "factory.allocate", subject, map[string]string{"station": station, "count": strconv.Itoa(count)}, err)
	}
	return out, nil
}

// takeMACs locks the tenant's blocks that have addresses left and takes
// the next n addresses in address order. It returns the addresses and
// the blocks with their new offsets, to be written back.
func (tx *Tx) takeMACs(ctx context.Context, tenantID int64, n int) ([]uint64, []macBlock, error) {
	rows, err := tx.query(ctx, `SELECT pk, first_mac, last_mac, next_offset FROM mac_ranges WHERE tenant_id = ? AND first_mac + next_offset <= last_mac ORDER BY first_mac`+tx.db.dialect.forUpdate, tenantID)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlstore: MAC pool: %w", err)
	}
	var blocks []macBlock
	for rows.Next() {
		var m macBlock
		if err := rows.Scan(&m.pk, &m.first, &m.last, &m.offset); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("sqlstore: MAC pool: %w", err)
		}
		blocks = append(blocks, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("sqlstore: MAC pool: %w", err)
	}
	macs := make([]uint64, 0, n)
	var used []macBlock
	for _, m := range blocks {
		if len(macs) == n {
			break
		}
		for m.first+m.offset <= m.last && len(macs) < n {
			macs = append(macs, uint64(m.first+m.offset))
			m.offset++
		}
		used = append(used, m)
	}
	if len(macs) < n {
		return nil, nil, cradle.Errorf(cradle.ECONFLICT, "MAC pool exhausted: %d addresses left, %d needed; add a range with cradle factory mac-range add", len(macs), n)
	}
	return macs, used, nil
}

// ReprovisionUnit hands a station a returned unit. A unit that the
// factory never allocated here (an imported device) gets its factory row
// now, from its batch label and its first MAC.
func (s *FactoryService) ReprovisionUnit(ctx context.Context, serial, station string) (*cradle.UnitAllocation, error) {
	subject := "device:" + serial
	a, err := s.db.authorize(ctx, cradle.PermFactoryProvision, "factory.reprovision", subject)
	if err != nil {
		return nil, err
	}
	var out *cradle.UnitAllocation
	err = s.db.write(ctx, func(tx *Tx) error {
		d, err := tx.lockDevice(ctx, a.TenantID, serial)
		if err != nil {
			return err
		}
		if d.State != cradle.StateRMA {
			return cradle.Errorf(cradle.ECONFLICT, "device %s is in state %s; only a unit in rma is re-provisioned (an operator moves it to rma first)", d.Serial, d.State)
		}
		st, err := findStation(ctx, tx, a.TenantID, station)
		if err != nil {
			return err
		}
		u, err := findUnit(ctx, tx, a.TenantID, d.Serial)
		if err != nil {
			return err
		}
		batch := d.Labels["batch"]
		if u != nil {
			batch = u.batch
		}
		if batch == "" {
			return cradle.Errorf(cradle.ECONFLICT, "device %s has no factory record and no batch label; label it batch=<id> of the batch it was built in", d.Serial)
		}
		b, err := findBatch(ctx, tx, tx.db.dialect, a.TenantID, batch, false)
		if err != nil {
			return err
		}
		if st.Profile != b.Profile {
			return cradle.Errorf(cradle.ECONFLICT, "station %s is a %s station and batch %s is a %s batch; a station provisions only batches of its own profile", st.Name, st.Profile, b.ID, b.Profile)
		}
		now := micros(tx.now)
		if u == nil {
			if len(d.MACs) == 0 {
				return cradle.Errorf(cradle.ECONFLICT, "device %s has no factory record and no MAC address; add its MAC before re-provisioning", d.Serial)
			}
			mac, err := cradle.ParseMAC(d.MACs[0])
			if err != nil {
				return err
			}
			_, err = tx.exec(ctx, `INSERT INTO factory_units (tenant_id, serial, device_id, mac, batch_id, station, status, allocated_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				a.TenantID, d.Serial, d.ID, int64(mac), b.ID, st.Name, string(cradle.UnitProvisioned), now, now)
			if tx.db.dialect.uniqueViolation(err) {
				return cradle.Errorf(cradle.ECONFLICT, "MAC %s of device %s was handed out to another unit by the factory", d.MACs[0], d.Serial)
			} else if err != nil {
				return fmt.Errorf("sqlstore: reprovision unit: %w", err)
			}
			out = &cradle.UnitAllocation{Serial: d.Serial, MAC: cradle.FormatMAC(mac), Batch: b.ID, RMA: true}
		} else {
			if _, err := tx.exec(ctx, `UPDATE factory_units SET station = ?, updated_at = ? WHERE pk = ?`, st.Name, now, u.pk); err != nil {
				return fmt.Errorf("sqlstore: reprovision unit: %w", err)
			}
			out = &cradle.UnitAllocation{Serial: d.Serial, MAC: cradle.FormatMAC(u.mac), Batch: b.ID, RMA: true}
		}
		return tx.audit(ctx, a.TenantID, a.String(), cradle.AuditEvent{Action: "factory.reprovision", Subject: subject,
			Details: map[string]string{"batch": b.ID, "station": st.Name, "mac": out.MAC}})
	})
	if err != nil {
		return nil, s.refuseErr(ctx, a, "factory.reprovision", subject, map[string]string{"station": station}, err)
	}
	return out, nil
}
