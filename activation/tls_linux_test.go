package activation_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
)

// selfSigned returns a throwaway certificate for "localhost".
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTLS wraps the hand-off listener in crypto/tls, as an HTTPS worker
// does, and completes a handshake over a connection that came through
// PROXY protocol: the wrapper is an ordinary net.Conn to TLS, and the
// original client address survives.
func TestTLS(t *testing.T) {
	hl, d, _ := newListener(t)
	l := tls.NewListener(hl, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	client, server := tcpPair(t)
	d.send(proxy4, rawFD(t, server))
	server.Close()

	done := make(chan error, 1)
	go func() {
		tc := tls.Client(client, &tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := tc.Write([]byte("ping")); err != nil {
			done <- err
			return
		}
		b := make([]byte, 4)
		_, err := tc.Read(b)
		if err == nil && string(b) != "pong" {
			err = fmt.Errorf("client read %q, want pong", b)
		}
		done <- err
	}()

	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := c.(*tls.Conn)
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4)
	if _, err := sc.Read(b); err != nil || string(b) != "ping" {
		t.Fatalf("server read %q, %v", b, err)
	}
	if _, err := sc.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("client: %v", err)
	}
	if got := sc.RemoteAddr().String(); got != "203.0.113.7:51234" {
		t.Errorf("RemoteAddr through TLS: %s", got)
	}
	if _, ok := sc.NetConn().(*activation.Conn); !ok {
		t.Errorf("tls.Conn.NetConn() = %T, want *activation.Conn", sc.NetConn())
	}
}
