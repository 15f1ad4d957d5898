package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// podNet is the network namespace of a process Pod (the operator), which has only its own
// loopback: it binds its ports there without clashing with anything on the host. fakelet
// connects it to the host by relays, as a CNI plugin and kube-proxy would by routes:
//   - inbound: the Pod's host address 127.0.0.N:<containerPort> (probes, Services, pods.json)
//     -> 127.0.0.1:<containerPort> inside the namespace;
//   - outbound: inside the namespace, 127.0.0.1:<API server port> -> the API server, and
//     each Service's service address 127.1.X.Y:<port> (what /etc/hosts names it) -> the
//     Service proxy's 127.0.0.1:<mapped port>.
//
// Sockets belong to the namespace they are made in: fakelet makes the inner ones on an OS
// thread that entered the namespace (setns) and never leaves it.
type podNet struct {
	ns   *os.File     // /proc/PID/ns/net
	name string       // for fakelet's log
	own  map[int]bool // the Pod's containerPorts: its process binds them on every address

	mu     sync.Mutex
	relays map[string]*relay // by listening side ("in 127.1.0.3:5432", "host 127.0.0.101:8081")
	closed bool
}

type relay struct {
	ln     net.Listener
	target string
}

func openPodNet(pid int, name string, own map[int]bool) (*podNet, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	pn := &podNet{ns: f, name: name, own: own, relays: map[string]*relay{}}
	if err := pn.do(loopbackUp); err != nil {
		f.Close()
		return nil, fmt.Errorf("bringing up lo: %w", err)
	}
	return pn, nil
}

// do runs f on a fresh OS thread inside the namespace. The thread stays locked, so the Go
// runtime ends it with the goroutine rather than reuse it elsewhere.
func (pn *podNet) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(sysSetns, pn.ns.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
			errc <- fmt.Errorf("setns: %v", e)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// loopbackUp sets lo up in the current thread's namespace (it then has 127.0.0.0/8).
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name, then the flags
	copy(ifr[:], "lo")
	binary.LittleEndian.PutUint16(ifr[16:], syscall.IFF_UP|syscall.IFF_LOOPBACK|syscall.IFF_RUNNING)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	return nil
}

// inbound relays hostAddr (on the host) to port `port` of the namespace's loopback.
func (pn *podNet) inbound(hostAddr string, port int) error {
	ln, err := net.Listen("tcp", hostAddr)
	if err != nil {
		return err
	}
	inner := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return pn.add("host "+hostAddr, &relay{ln: ln, target: inner}, func() (net.Conn, error) {
		var c net.Conn
		err := pn.do(func() (err error) { c, err = net.DialTimeout("tcp", inner, 3*time.Second); return })
		return c, err
	})
}

// outbound relays innerAddr (inside the namespace) to target (on the host).
func (pn *podNet) outbound(innerAddr, target string) error {
	var ln net.Listener
	if err := pn.do(func() (err error) { ln, err = net.Listen("tcp", innerAddr); return }); err != nil {
		return err
	}
	return pn.add("in "+innerAddr, &relay{ln: ln, target: target}, func() (net.Conn, error) {
		return net.DialTimeout("tcp", target, 3*time.Second)
	})
}

func (pn *podNet) add(key string, r *relay, dial func() (net.Conn, error)) error {
	pn.mu.Lock()
	if pn.closed {
		pn.mu.Unlock()
		r.ln.Close()
		return fmt.Errorf("closed")
	}
	if old := pn.relays[key]; old != nil {
		old.ln.Close()
	}
	pn.relays[key] = r
	pn.mu.Unlock()
	go func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dial()
				if err != nil {
					log.Printf("%s: relay %s -> %s: %v", pn.name, key, r.target, err)
					return
				}
				defer up.Close()
				splice(c, up)
			}()
		}
	}()
	return nil
}

// syncServices keeps one outbound relay per Service port: service address -> proxy. Ports
// that are the Pod's own containerPorts are left out: its process binds those on every
// address of the namespace (a listener on 127.1.X.Y:port would make that bind fail).
func (pn *podNet) syncServices(services []serviceHost) {
	want := map[string]string{}
	for _, s := range services {
		for port, target := range s.ports {
			if pn.own[port] {
				continue
			}
			want["in "+net.JoinHostPort(s.ip, strconv.Itoa(port))] = target
		}
	}
	pn.mu.Lock()
	var stale []string
	for key, r := range pn.relays {
		if t, ok := want[key]; (!ok || t != r.target) && key[:3] == "in " && isServiceAddress(key[3:]) {
			stale = append(stale, key)
		}
	}
	for _, key := range stale {
		pn.relays[key].ln.Close()
		delete(pn.relays, key)
	}
	var missing []string
	for key := range want {
		if _, ok := pn.relays[key]; !ok {
			missing = append(missing, key)
		}
	}
	pn.mu.Unlock()
	for _, key := range missing {
		if err := pn.outbound(key[3:], want[key]); err != nil {
			log.Printf("%s: service relay %s: %v", pn.name, key[3:], err)
		}
	}
}

func isServiceAddress(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	ip := net.ParseIP(host).To4()
	return ip != nil && ip[0] == 127 && ip[1] == 1
}

func (pn *podNet) close() {
	pn.mu.Lock()
	defer pn.mu.Unlock()
	if pn.closed {
		return
	}
	pn.closed = true
	for _, r := range pn.relays {
		r.ln.Close()
	}
	pn.ns.Close()
}

// splice copies both ways until both directions are done (half-closes passed on).
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(a, b)
	go pipe(b, a)
	<-done
	<-done
}

const sysSetns = 308 // setns(2) on linux/amd64 (the syscall package has no name for it)
