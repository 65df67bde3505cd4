package antispoof

import (
	"fmt"

	"github.com/google/nftables"
)

// Teardown deletes the whole table (every port's checks): what ournet does
// when it has no network left and shuts down, so that uninstalling it leaves
// nothing behind. A missing table is fine.
func (f *Filter) Teardown() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.takeGone() // the table takes them along
	c, err := f.dial()
	if err != nil {
		return fmt.Errorf("antispoof: teardown: opening nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return fmt.Errorf("antispoof: teardown: listing tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			c.DelTable(table)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("antispoof: teardown: %w", err)
			}
		}
	}
	return nil
}
