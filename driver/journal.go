package driver

import (
	"fmt"
	"strings"
	"time"

	"github.com/ournet/ournet/internal/store"
)

// The journal makes orphan removal provable (issue #16): a kernel object
// whose owner ID the state does not know is removed at start only if the
// journal says ournet itself was creating or deleting that ID when it
// stopped. Anything else (a state file restored from an older backup, an
// object of another install) is left alone and reported by `ournet status`.
//
//	create: an entry is written before the kernel objects are made, and
//	        removed in the same transaction that saves the record;
//	delete: an entry is written in the same transaction that forgets the
//	        record, and removed once the kernel objects are gone.
const bucketJournal = "journal"

// journalEntry says what ournet was doing to one ID.
type journalEntry struct {
	Op   string // "create" or "delete"
	Kind string // "network" or "endpoint"
	At   time.Time
}

// journalCreate notes that id's kernel objects are about to be made. It
// is the first write of a create: a full disk fails the create before
// anything exists.
func (d *Driver) journalCreate(kind, id string) error {
	if err := d.st.Put(bucketJournal, id, journalEntry{Op: "create", Kind: kind, At: time.Now().UTC()}); err != nil {
		return fmt.Errorf("ournet: saving %s state: %w", kind, err)
	}
	return nil
}

// saveCreated saves rec under bucket/id and closes id's create entry, in
// one transaction.
func (d *Driver) saveCreated(bucket, id string, rec any) error {
	return d.st.Update(func(tx *store.Tx) error {
		if err := tx.Put(bucket, id, rec); err != nil {
			return err
		}
		return tx.Delete(bucketJournal, id)
	})
}

// forget deletes bucket/id and opens its delete entry, in one transaction
// that may use the space reserved for deletes. On a disk too full even
// for that, the deletion is kept in memory (d.unsaved) and written by the
// repair loop once there is room: a delete always goes on to remove the
// kernel objects.
func (d *Driver) forget(kind, bucket, id string) {
	u := unsavedDelete{kind: kind, bucket: bucket, id: id}
	if err := d.saveForget(u); err != nil {
		logNet(id).WithError(err).Errorf("cannot save that the %s is deleted; removing it from the kernel anyway, and saving it once the state file can be written", kind)
		d.unsaved = append(d.unsaved, u)
	}
}

// unsavedDelete is a deletion the state file could not take yet.
type unsavedDelete struct{ kind, bucket, id string }

// saveForget deletes the record and opens its delete entry, in one
// transaction that may use the space reserved for deletes. The entry is
// closed once the kernel objects are gone, or by the next start's orphan
// check, which also removes whatever the kernel still holds of it.
func (d *Driver) saveForget(u unsavedDelete) error {
	return d.st.UpdateReserved(func(tx *store.Tx) error {
		if err := tx.Delete(u.bucket, u.id); err != nil {
			return err
		}
		return tx.Put(bucketJournal, u.id, journalEntry{Op: "delete", Kind: u.kind, At: time.Now().UTC()})
	})
}

// journalDone closes id's entry once its kernel objects are made or gone.
func (d *Driver) journalDone(id string) {
	if err := d.st.DeleteReserved(bucketJournal, id); err != nil {
		logNet(id).WithError(err).Warn("closing the state journal entry (the next start finishes it)")
	}
}

// journalUndone closes the entry of a create that failed and was undone
// whole; it never spends the space reserved for deletes.
func (d *Driver) journalUndone(id string) {
	if err := d.st.Delete(bucketJournal, id); err != nil {
		logNet(id).WithError(err).Debug("closing the state journal entry (the next start finishes it)")
	}
}

// flushUnsaved writes the deletions a full disk kept in memory. Called
// with d.mu held.
func (d *Driver) flushUnsaved() {
	if err := d.st.EnsureReserve(); err != nil {
		logNet("").WithError(err).Debug("state store: reserve for deletes not (yet) restored")
	}
	var left []unsavedDelete
	for _, u := range d.unsaved {
		if err := d.saveForget(u); err != nil {
			left = append(left, u)
			continue
		}
		logNet(u.id).Info("state store writable again: saved a deletion kept in memory")
	}
	d.unsaved = left
}

// journaled returns the journal's IDs.
func (d *Driver) journaled() map[string]journalEntry {
	all, err := store.LoadAll[journalEntry](d.st, bucketJournal)
	if err != nil {
		logNet("").WithError(err).Warn("reading the state journal")
	}
	out := map[string]journalEntry{}
	for id, e := range all {
		out[id] = *e
	}
	return out
}

// journalHas reports whether owner (a full ID, or the 12 characters the
// rules carry) is in the journal.
func journalHas(j map[string]journalEntry, owner string) bool {
	if _, ok := j[owner]; ok {
		return true
	}
	for id := range j {
		if strings.HasPrefix(id, owner) {
			return true
		}
	}
	return false
}
