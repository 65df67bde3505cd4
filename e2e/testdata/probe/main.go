// Command probe is the e2e suite's network client and UDP echo server for
// published ports, static so that it runs on the host, in the uplink and in
// the busybox containers alike (busybox has no UDP nc, and its wget -T
// crashes on this machine's kernel). Every mode is bounded in time.
//
//	probe [-t SECONDS] http URL                 print the body of GET URL
//	probe [-t SECONDS] udp HOST:PORT MESSAGE    send MESSAGE, print the reply
//	probe udp-echo ADDR:PORT NAME               answer each datagram with "NAME:" + it
//	probe bind tcp|udp ADDR:PORT                exit 0 if the port can be bound now
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	timeout := flag.Duration("t", 3*time.Second, "time limit of a client mode")
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		fail(fmt.Errorf("usage: probe [-t D] http URL | udp HOST:PORT MSG | udp-echo ADDR NAME | bind PROTO ADDR"))
	}
	var err error
	switch args[0] {
	case "http":
		err = get(args[1], *timeout)
	case "udp":
		err = udp(args[1], arg(args, 2), *timeout)
	case "udp-echo":
		err = echo(args[1], arg(args, 2))
	case "bind":
		err = bind(args[1], arg(args, 2))
	default:
		err = fmt.Errorf("unknown mode %q", args[0])
	}
	if err != nil {
		fail(err)
	}
}

func arg(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	fail(fmt.Errorf("%s: missing argument %d", args[0], i))
	return ""
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "probe:", err)
	os.Exit(1)
}

func get(url string, timeout time.Duration) error {
	c := &http.Client{Timeout: timeout}
	res, err := c.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<16))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, res.Status)
	}
	fmt.Print(string(body))
	return nil
}

// udp sends msg three times, spread over timeout (a datagram may be lost,
// a server may still be starting), and prints the first reply.
func udp(addr, msg string, timeout time.Duration) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	var last error
	for try := 0; try < 3; try++ {
		next := time.Now().Add(timeout / 3)
		if _, err := c.Write([]byte(msg)); err != nil {
			last = err // an ICMP error of the previous try
		} else {
			_ = c.SetReadDeadline(next)
			n, err := c.Read(buf)
			if err == nil {
				fmt.Print(string(buf[:n]))
				return nil
			}
			last = err
		}
		time.Sleep(time.Until(next)) // a refusal comes back at once: wait out this try
	}
	return fmt.Errorf("no reply from %s within %s: %v", addr, timeout, last)
}

func echo(addr, name string) error {
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		_, _ = c.WriteTo(append([]byte(name+":"), buf[:n]...), from)
	}
}

func bind(proto, addr string) error {
	var c io.Closer
	var err error
	if proto == "udp" {
		c, err = net.ListenPacket("udp", addr)
	} else {
		c, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return err
	}
	return c.Close()
}
