package driver

// Engine 28's gateway allocation check: before it asks the IPAM driver for
// a network's addresses, the engine asks a driver that says GwAllocChecker
// whether to reserve a gateway address per family. ournet answers as
// Docker's bridge driver does: no gateway where none would be used, that
// is, gateway mode isolated, or inhibit_ipv4 on an internal network (no
// address on the bridge and no default route for the containers). With
// inhibit_ipv4 on a network that is not internal the gateway address is
// still the containers' default route (the user puts it on the bridge or
// routes it), so it stays reserved. Engines before 28 never ask.

// GwAllocCheckRequest is the body of /NetworkDriver.GwAllocCheck: the same
// options CreateNetwork will get.
type GwAllocCheckRequest struct {
	Options map[string]any
}

// GwAllocCheckResponse says which families need no gateway address.
type GwAllocCheckResponse struct {
	SkipIPv4 bool
	SkipIPv6 bool
}

// CapabilitiesResponse is GetCapabilities' answer with the field engine 28
// added (go-plugins-helpers' type lacks it).
type CapabilitiesResponse struct {
	Scope             string
	ConnectivityScope string
	GwAllocChecker    bool
}

// Capabilities is GetCapabilities as the plugin answers it.
func (d *Driver) Capabilities() *CapabilitiesResponse {
	c, _ := d.GetCapabilities()
	return &CapabilitiesResponse{Scope: c.Scope, ConnectivityScope: c.ConnectivityScope, GwAllocChecker: true}
}

// GwAllocCheck validates the options (so that a bad one fails the create
// before any address is reserved) and says which gateways to skip.
func (d *Driver) GwAllocCheck(req *GwAllocCheckRequest) (*GwAllocCheckResponse, error) {
	o, err := ParseOptions("", req.Options)
	if err != nil {
		return nil, err
	}
	return &GwAllocCheckResponse{SkipIPv4: o.noGatewayV4(), SkipIPv6: o.noGatewayV6()}, nil
}

// noGatewayV4 says the network's bridge gets no IPv4 gateway address and
// its containers no IPv4 default route.
func (o NetworkOptions) noGatewayV4() bool {
	return o.GwModeV4 == gwIsolated || (o.InhibitIPv4 && o.Internal)
}

func (o NetworkOptions) noGatewayV6() bool { return o.GwModeV6 == gwIsolated }
