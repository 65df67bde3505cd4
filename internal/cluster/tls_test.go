package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pemFile writes one PEM block.
func pemFile(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// certs makes a CA and, signed by it, a server certificate for ip and a
// client certificate, as files in dir.
func certs(t *testing.T, dir string, ip net.IP) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ournet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pemFile(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER)
	for i, name := range []string{"server", "client"} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		if name == "server" {
			c.IPAddresses = []net.IP{ip}
		}
		der, err := x509.CreateCertificate(rand.Reader, c, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		pemFile(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
		kder, _ := x509.MarshalECPrivateKey(key)
		pemFile(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", kder)
	}
}

// A store that requires client certificates: with ETCD_CA/CERT/KEY the
// host registers and defines a network; without a client certificate, or
// trusting another CA, calls fail fast, naming the store.
func TestTLS(t *testing.T) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd not found: apt-get install etcd-server (make deps does)")
	}
	dir := t.TempDir()
	certs(t, dir, net.ParseIP("127.0.1.9"))
	client, peer := "https://"+freePort(t, "127.0.1.9"), "http://"+freePort(t, "127.0.1.9")
	cmd := exec.Command(bin, "--name", "tls", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "tls="+peer,
		"--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth", "--log-level", "error")
	logf, _ := os.Create(filepath.Join(dir, "etcd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); _ = cmd.Wait() })

	cfg := Config{Endpoints: []string{client}, Host: "tls-host", Advertise: netip.MustParseAddr("198.51.100.9"),
		CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client-key.pem"),
		CallTimeout: 2 * time.Second}
	s, err := Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := s.Register(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registering over TLS: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := s.Define(context.Background(), "tlsnet", Spec{Subnets: []string{"198.18.30.0/24"}}); err != nil {
		t.Fatalf("defining over TLS: %v", err)
	}

	// No client certificate: refused by the store, fast, named.
	noCert := cfg
	noCert.Cert, noCert.Key, noCert.Host = "", "", "tls-nocert"
	s2, err := Connect(noCert)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	start := time.Now()
	_, err = s2.Hosts(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cluster store (etcd at "+client) {
		t.Fatalf("without a client certificate: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("refusal took %s", took)
	}

	// Half a key pair, or a CA file that is not one: a clear setting error.
	half := cfg
	half.Key = ""
	if _, err := Connect(half); err == nil || !strings.Contains(err.Error(), "ETCD_CERT and ETCD_KEY go together") {
		t.Fatalf("half a key pair: %v", err)
	}
	bad := cfg
	bad.CA = filepath.Join(dir, "client-key.pem")
	if _, err := Connect(bad); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("a CA file with no certificate: %v", err)
	}
}
