package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// podProbe turns a container's tcpSocket or httpGet probe into a function probing the Pod's
// host address; nil probe -> nil. exec probes are not supported.
func (m *podManager) podProbe(pod *corev1.Pod, c corev1.Container, p *corev1.Probe, host func() string) (func() bool, error) {
	if p == nil {
		return nil, nil
	}
	portOf := func(v intstr.IntOrString) (int, error) {
		if v.Type == intstr.Int {
			return v.IntValue(), nil
		}
		for _, cp := range c.Ports {
			if cp.Name == v.StrVal {
				return int(cp.ContainerPort), nil
			}
		}
		return 0, fmt.Errorf("Unsupported: probe port %q names no container port", v.StrVal)
	}
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	switch {
	case p.TCPSocket != nil:
		port, err := portOf(p.TCPSocket.Port)
		if err != nil {
			return nil, err
		}
		return func() bool {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(host(), strconv.Itoa(port)), timeout)
			if err != nil {
				return false
			}
			conn.Close()
			return true
		}, nil
	case p.HTTPGet != nil:
		port, err := portOf(p.HTTPGet.Port)
		if err != nil {
			return nil, err
		}
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			return nil, fmt.Errorf("Unsupported: HTTPS probes")
		}
		return func() bool { return httpProbe(host(), port, p.HTTPGet.Path, timeout) }, nil
	}
	return nil, fmt.Errorf("Unsupported: probes other than tcpSocket and httpGet")
}

// httpProbe is the kubelet's httpGet probe: any status from 200 to 399 is a success.
func httpProbe(host string, port int, path string, timeout time.Duration) bool {
	if path == "" {
		path = "/"
	}
	client := http.Client{Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Get("http://" + net.JoinHostPort(host, strconv.Itoa(port)) + path)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

// probeTiming is a probe's schedule as the kubelet reads it (its defaults included).
func probeTiming(p *corev1.Probe) (delay, period time.Duration, threshold int) {
	delay = time.Duration(p.InitialDelaySeconds) * time.Second
	period = time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	if p.PeriodSeconds == 0 {
		period = 10 * time.Second
	}
	threshold = int(p.FailureThreshold)
	if threshold <= 0 {
		threshold = 3
	}
	return delay, period, threshold
}
