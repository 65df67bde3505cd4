package driver

// setPorts and setAntiSpoof give a test's driver a fake after
// construction (the plugin passes the real ones in Deps).
func (d *Driver) setPorts(p Ports)         { d.ports = p }
func (d *Driver) setAntiSpoof(a AntiSpoof) { d.spoof = a }
