package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// serviceProxy stands in for kube-proxy: one listener on 127.0.0.1 per Service port, each
// connection forwarded to a ready endpoint of the Service's EndpointSlices (round robin).
// Open connections survive endpoint changes, as with kube-proxy's conntrack.
//
// Each Service also gets a service address 127.1.X.Y of its own (kept while fakelet runs),
// its ClusterIP in this harness: Pods reach Services by cluster DNS names that their
// /etc/hosts maps to these addresses. On the host the proxy listens there on the Service's
// own ports too (PostgreSQL Pods: a subscription's "host=svc.ns.svc", hosts.go); in the
// network namespace of a process Pod (the operator) fakelet listens there and forwards to
// this proxy (netns.go).
type serviceProxy struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	file     string
	changed  chan struct{}
	onChange func([]serviceHost) // after every sync: the Services, their addresses and ports

	mu        sync.Mutex
	listeners map[string]*svcListener // ns/name/port
	ports     map[string]int          // remembered, so a re-created Service keeps its port
	svcIPs    map[string]string       // ns/name -> 127.1.X.Y, remembered
	ipOrder   []string                // ns/name in the order their addresses were given
}

// serviceHost is a Service as Pods see it: its service address (where this proxy also
// serves each of its ports, on the host) and, for each of its TCP ports, the proxy's main
// listener for that port.
type serviceHost struct {
	ns, name, ip string
	ports        map[int]string // service port -> 127.0.0.1:P
}

type svcListener struct {
	key      string
	ns, name string
	port     corev1.ServicePort
	ln       net.Listener
	svcLn    net.Listener // on the Service's service address and own port (nil if taken)
	next     atomic.Uint64
}

func newServiceProxy(f informers.SharedInformerFactory, file string) *serviceProxy {
	p := &serviceProxy{
		services:  f.Core().V1().Services().Lister(),
		slices:    f.Discovery().V1().EndpointSlices().Lister(),
		file:      file,
		changed:   make(chan struct{}, 1),
		listeners: map[string]*svcListener{},
		svcIPs:    map[string]string{},
		ports:     map[string]int{},
	}
	poke := func(any) {
		select {
		case p.changed <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke}
	_, _ = f.Core().V1().Services().Informer().AddEventHandler(h)
	_, _ = f.Discovery().V1().EndpointSlices().Informer().AddEventHandler(h)
	return p
}

func (p *serviceProxy) run(ctx context.Context) {
	p.sync()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			for _, l := range p.listeners {
				l.ln.Close()
			}
			p.mu.Unlock()
			return
		case <-p.changed:
			p.sync()
		}
	}
}

func (p *serviceProxy) sync() {
	svcs, _ := p.services.List(labels.Everything())
	want := map[string]bool{}
	p.mu.Lock()
	defer func() {
		out := map[string]string{}
		for k, l := range p.listeners {
			out[k] = l.ln.Addr().String()
		}
		hosts := p.hostsEntriesLocked()
		p.mu.Unlock()
		writeJSONAtomic(p.file, out)
		if p.onChange != nil {
			p.onChange(hosts)
		}
	}()
	for _, s := range svcs {
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			key := fmt.Sprintf("%s/%s/%d", s.Namespace, s.Name, sp.Port)
			want[key] = true
			p.serviceIP(s.Namespace + "/" + s.Name)
			if l, ok := p.listeners[key]; ok {
				l.port = sp
				continue
			}
			port := p.ports[key]
			if port == 0 && sp.NodePort != 0 {
				port = int(sp.NodePort)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil && port != 0 {
				ln, err = net.Listen("tcp", "127.0.0.1:0")
			}
			if err != nil {
				log.Printf("proxy: service %s: %v", key, err)
				continue
			}
			l := &svcListener{key: key, ns: s.Namespace, name: s.Name, port: sp, ln: ln}
			p.listeners[key] = l
			p.ports[key] = ln.Addr().(*net.TCPAddr).Port
			log.Printf("proxy: service %s -> %s", key, ln.Addr())
			go p.serve(l, l.ln)
			// The Service's own port on its service address, which the cluster hosts file
			// names it by: what PostgreSQL Pods dial for a subscription to
			// "svc.ns.svc" (hosts.go). Like a ClusterIP, the port is the Service's.
			svcAddr := net.JoinHostPort(p.serviceIP(s.Namespace+"/"+s.Name), strconv.Itoa(int(sp.Port)))
			if sl, err := net.Listen("tcp", svcAddr); err != nil {
				log.Printf("proxy: service %s on %s: %v", key, svcAddr, err)
			} else {
				l.svcLn = sl
				go p.serve(l, sl)
			}
		}
	}
	for k, l := range p.listeners {
		if !want[k] {
			l.ln.Close()
			if l.svcLn != nil {
				l.svcLn.Close()
			}
			delete(p.listeners, k)
			log.Printf("proxy: service %s removed", k)
		}
	}
}

func (p *serviceProxy) serve(l *svcListener, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !strings.Contains(err.Error(), "use of closed") {
				log.Printf("proxy: %s: accept: %v", l.key, err)
			}
			return
		}
		go p.forward(l, c)
	}
}

// endpoints returns the host addresses of the ready endpoints for the listener's port.
func (p *serviceProxy) endpoints(l *svcListener) []string {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: l.name})
	slices, _ := p.slices.EndpointSlices(l.ns).List(sel)
	var out []string
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		port := int32(0)
		for _, sp := range s.Ports {
			if ptrValue(sp.Name) == l.port.Name && sp.Port != nil {
				port = *sp.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				out = append(out, net.JoinHostPort(hostAddress(a), strconv.Itoa(int(port))))
			}
		}
	}
	sort.Strings(out)
	return out
}

// hostAddress maps a pod's API address 10.88.0.N to where it listens, 127.0.0.N.
func hostAddress(ip string) string {
	if strings.HasPrefix(ip, podCIDRPrefix) {
		return "127.0.0." + strings.TrimPrefix(ip, podCIDRPrefix)
	}
	return ip
}

func (p *serviceProxy) forward(l *svcListener, c net.Conn) {
	defer c.Close()
	eps := p.endpoints(l)
	var up net.Conn
	for i := 0; i < len(eps) && up == nil; i++ {
		addr := eps[int(l.next.Add(1)-1)%len(eps)]
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			log.Printf("proxy: %s: endpoint %s: %v", l.key, addr, err)
			continue
		}
		up = conn
	}
	if up == nil {
		log.Printf("proxy: %s: no ready endpoint (%d known); closing connection", l.key, len(eps))
		return
	}
	defer up.Close()
	splice(up, c)
}

// serviceAddress is where the proxy serves port `port` of Service ns/name.
func (p *serviceProxy) serviceAddress(ns, name string, port int) (string, error) {
	if _, err := p.services.Services(ns).Get(name); err != nil {
		return "", fmt.Errorf("Service %s/%s: %v", ns, name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.listeners[fmt.Sprintf("%s/%s/%d", ns, name, port)]; ok {
		return l.ln.Addr().String(), nil
	}
	return "", fmt.Errorf("Service %s/%s has no TCP port %d (or it is not proxied yet)", ns, name, port)
}

// serviceByClusterIP names the Service whose ClusterIP is ip.
func (p *serviceProxy) serviceByClusterIP(ip string) (string, string, bool) {
	svcs, _ := p.services.List(labels.Everything())
	for _, s := range svcs {
		for _, cip := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
			if cip == ip {
				return s.Namespace, s.Name, true
			}
		}
	}
	return "", "", false
}

// serviceIP gives Service ns/name its service address. REQUIRES: p.mu is held.
func (p *serviceProxy) serviceIP(key string) string {
	if ip, ok := p.svcIPs[key]; ok {
		return ip
	}
	n := len(p.svcIPs) + 1
	ip := fmt.Sprintf("127.1.%d.%d", n/256, n%256)
	p.svcIPs[key] = ip
	p.ipOrder = append(p.ipOrder, key)
	return ip
}

// hostsEntries lists the proxied Services, in the order their addresses were given.
func (p *serviceProxy) hostsEntries() []serviceHost {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hostsEntriesLocked()
}

// REQUIRES: p.mu is held.
func (p *serviceProxy) hostsEntriesLocked() []serviceHost {
	byService := map[string]map[int]string{}
	for _, l := range p.listeners {
		k := l.ns + "/" + l.name
		if byService[k] == nil {
			byService[k] = map[int]string{}
		}
		byService[k][int(l.port.Port)] = l.ln.Addr().String()
	}
	var out []serviceHost
	for _, key := range p.ipOrder {
		if ports, ok := byService[key]; ok {
			ns, name, _ := strings.Cut(key, "/")
			out = append(out, serviceHost{ns: ns, name: name, ip: p.svcIPs[key], ports: ports})
		}
	}
	return out
}
