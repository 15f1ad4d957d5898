package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
)

// PgBouncer Pods: image edoburu/pgbouncer:<tag> with its configuration mounted at
// /etc/pgbouncer (the image then runs `pgbouncer /etc/pgbouncer/pgbouncer.ini`; it only
// generates a configuration from environment variables when that file is absent, which
// fakelet does not reproduce). fakelet runs Debian's /usr/sbin/pgbouncer (whatever the tag
// asks for) on a rewritten copy of the ini, as the harness's OS user:
//   - listen_addr -> the Pod's host address 127.0.0.N (listen_port kept);
//   - unix_socket_dir -> empty (no sockets, as for postgres Pods); pidfile -> the pod folder;
//     logfile -> empty (pgbouncer logs to stderr, which goes to <pod folder>/pgbouncer.log);
//     user (switch to that OS user) is dropped: the harness user stands in for the image's;
//   - paths below the container's volume mounts (auth_file, %include, TLS files, ...) -> the
//     files fakelet wrote for those volumes;
//   - host= of [databases] and [peers] entries: a Service name (svc, svc.ns, svc.ns.svc,
//     svc.ns.svc.cluster.local) or ClusterIP with its port= (default 5432) -> svc.ns.svc and
//     the Service's port when fakelet runs as root (the process resolves it through the
//     cluster hosts file to the proxy on the Service's own address, hosts.go), else the
//     proxy's 127.0.0.1:<mapped port> for that Service port; a Pod IP 10.88.0.N ->
//     127.0.0.N. Until the Service exists the container waits (not ready) and retries.
// Everything else stays as written. The ini holds passwords: it is never logged.

var pgbouncerImageRE = regexp.MustCompile(`^(?:docker\.io/)?edoburu/pgbouncer(?::[A-Za-z0-9_.\-]+)?(?:@sha256:[0-9a-f]{64})?$`)

const pgbouncerBinary = "/usr/sbin/pgbouncer"

func isPgBouncerImage(image string) bool { return pgbouncerImageRE.MatchString(image) }

// serviceResolver is what the ini rewrite needs from the Service proxy.
type serviceResolver interface {
	// serviceAddress is where fakelet serves port `port` of Service ns/name (127.0.0.1:P);
	// an error says why not (yet).
	serviceAddress(ns, name string, port int) (string, error)
	// serviceByClusterIP names the Service with this ClusterIP.
	serviceByClusterIP(ip string) (ns, name string, ok bool)
	// hostsEntries lists every Service with its service address (for /etc/hosts).
	hostsEntries() []serviceHost
}

type pgBouncer struct {
	m       *podManager
	pod     *corev1.Pod
	c       corev1.Container
	as      runAs
	podDir  string
	iniPath string // in the container
	hostIP  string
	port    atomic.Int32 // listen_port of the ini, known after the first prepare
	probe   func() bool
}

func (b *pgBouncer) name() string    { return "pgbouncer " + b.hostIP }
func (b *pgBouncer) logFile() string { return filepath.Join(b.podDir, "pgbouncer.log") }
func (b *pgBouncer) runDir() string  { return filepath.Join(b.podDir, "run") }
func (b *pgBouncer) ini() string     { return filepath.Join(b.runDir(), "pgbouncer.ini") }

// resolvePgBouncer checks what fakelet can run of an edoburu/pgbouncer container.
func (m *podManager) resolvePgBouncer(pod *corev1.Pod, rt *podRuntime) (*pgBouncer, error) {
	c := pod.Spec.Containers[0]
	b := &pgBouncer{m: m, pod: pod, c: c, as: m.as, podDir: rt.podDir, iniPath: "/etc/pgbouncer/pgbouncer.ini"}
	if _, err := os.Stat(pgbouncerBinary); err != nil {
		return nil, fmt.Errorf("ImageNotPresent: %s is missing (scripts/setup.sh installs Debian's pgbouncer)", pgbouncerBinary)
	}
	args := append(append([]string{}, c.Command...), c.Args...)
	if len(args) > 0 && (args[0] == "/entrypoint.sh" || args[0] == "entrypoint.sh") {
		args = args[1:]
	}
	if len(args) > 0 && path.Base(args[0]) == "pgbouncer" {
		args = args[1:]
	}
	switch {
	case len(args) == 1 && strings.HasSuffix(args[0], ".ini"):
		b.iniPath = args[0]
	case len(args) != 0:
		return nil, fmt.Errorf("Unsupported: container command %q (fakelet runs `pgbouncer <file>.ini` only)", args)
	}
	mounted := false
	for _, vm := range c.VolumeMounts {
		mp := path.Clean(vm.MountPath)
		if b.iniPath == mp || strings.HasPrefix(b.iniPath, mp+"/") {
			mounted = true
		}
	}
	if !mounted {
		return nil, fmt.Errorf("Unsupported: %s is not on a volume: fakelet runs edoburu/pgbouncer only with "+
			"its configuration mounted (the image's generation from environment variables is not reproduced)", b.iniPath)
	}
	probe, err := m.podProbe(pod, c, c.ReadinessProbe, func() string { return b.hostIP })
	if err != nil {
		return nil, err
	}
	b.probe = probe
	return b, nil
}

func (b *pgBouncer) prepare() error {
	if err := b.as.mkdirOwned(b.runDir()); err != nil {
		return err
	}
	if err := b.m.materializeVolumes(b.pod, b.podDir, b.as); err != nil {
		return err
	}
	src, err := b.m.hostPath(b.pod, b.c, b.iniPath, b.podDir)
	if err != nil {
		return err
	}
	text, err := os.ReadFile(src)
	if os.IsNotExist(err) {
		return permanent(fmt.Sprintf("Unsupported: %s is not in its volume (edoburu's generation from "+
			"environment variables is not reproduced)", b.iniPath))
	}
	if err != nil {
		return err
	}
	out, port, err := b.rewrite(text)
	if err != nil {
		return err
	}
	b.port.Store(int32(port))
	if err := os.WriteFile(b.ini()+".tmp", out, 0o600); err != nil {
		return err
	}
	if err := b.as.chown(b.ini() + ".tmp"); err != nil {
		return err
	}
	return os.Rename(b.ini()+".tmp", b.ini())
}

func (b *pgBouncer) command() (*exec.Cmd, error) {
	cmd := b.as.command(pgbouncerBinary, b.ini())
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=" + b.runDir()}
	cmd.Dir = b.runDir()
	return withClusterHosts(cmd, b.m.clusterHostsFile())
}

func (b *pgBouncer) ready() bool {
	if b.probe != nil {
		return b.probe()
	}
	return true // no readiness probe: ready when running, as with the kubelet
}

var pgbouncerPathKeys = map[string]bool{
	"auth_file": true, "auth_hba_file": true, "client_tls_key_file": true, "client_tls_cert_file": true,
	"client_tls_ca_file": true, "server_tls_key_file": true, "server_tls_cert_file": true,
	"server_tls_ca_file": true,
}

// rewrite makes the ini runnable here (see the top of this file); it returns the new text
// and the listen port.
func (b *pgBouncer) rewrite(text []byte) ([]byte, int, error) {
	var out bytes.Buffer
	section := ""
	port := 6432
	sawPgbouncer := false
	ours := fmt.Sprintf("; fakelet: the Pod's address, no unix sockets, pidfile in the pod folder, log to stderr\n"+
		"listen_addr = %s\nunix_socket_dir =\npidfile = %s\nlogfile =\n", b.hostIP, filepath.Join(b.runDir(), "pgbouncer.pid"))
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		switch {
		case t == "" || t[0] == ';' || t[0] == '#':
		case strings.HasPrefix(t, "[") && strings.HasSuffix(t, "]"):
			section = strings.ToLower(strings.TrimSpace(t[1 : len(t)-1]))
			if section == "pgbouncer" {
				out.WriteString(line + "\n" + ours)
				sawPgbouncer = true
				continue
			}
		case strings.HasPrefix(t, "%include"):
			p := strings.TrimSpace(strings.TrimPrefix(t, "%include"))
			hp, err := b.mapPath(p)
			if err != nil {
				return nil, 0, err
			}
			line = "%include " + hp
		default:
			key, value, ok := strings.Cut(t, "=")
			if !ok {
				break
			}
			key, value = strings.TrimSpace(key), strings.TrimSpace(value)
			lk := strings.ToLower(key)
			switch section {
			case "pgbouncer":
				switch {
				case lk == "listen_port":
					p, err := strconv.Atoi(value)
					if err != nil {
						return nil, 0, permanent("invalid listen_port in " + b.iniPath)
					}
					port = p
				case lk == "listen_addr" || lk == "unix_socket_dir" || lk == "pidfile" || lk == "logfile" || lk == "user":
					line = "; fakelet replaced: " + key
				case pgbouncerPathKeys[lk] && strings.HasPrefix(value, "/"):
					hp, err := b.mapPath(value)
					if err != nil {
						return nil, 0, err
					}
					line = key + " = " + hp
				}
			case "databases", "peers":
				cs, err := b.rewriteConnString(value)
				if err != nil {
					return nil, 0, fmt.Errorf("[%s] %s: %w", section, key, err)
				}
				line = key + " = " + cs
			}
		}
		out.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return nil, 0, permanent("reading " + b.iniPath + ": " + err.Error())
	}
	if !sawPgbouncer {
		out.WriteString("[pgbouncer]\n" + ours)
	}
	return out.Bytes(), port, nil
}

// mapPath maps a path of the container onto the host: below a volume mount, the file
// fakelet wrote; elsewhere, as written (the host's file stands in for the image's).
func (b *pgBouncer) mapPath(p string) (string, error) {
	for _, vm := range b.c.VolumeMounts {
		mp := path.Clean(vm.MountPath)
		if q := path.Clean(p); q == mp || strings.HasPrefix(q, mp+"/") {
			return b.m.hostPath(b.pod, b.c, q, b.podDir)
		}
	}
	return p, nil
}

// connToken is one key=value of a libpq-style connect string, value as written.
type connToken struct{ key, raw string }

// splitConnString splits PgBouncer's connect string (key=value pairs, values optionally in
// single quotes with ” or \' inside) keeping each value's text as written.
func splitConnString(s string) ([]connToken, error) {
	var out []connToken
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i >= len(s) {
			return out, nil
		}
		j := i
		for j < len(s) && s[j] != '=' && s[j] != ' ' && s[j] != '\t' {
			j++
		}
		key := s[i:j]
		for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
			j++
		}
		if j >= len(s) || s[j] != '=' || key == "" {
			return nil, permanent("a connect string that is not key=value pairs")
		}
		j++
		for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
			j++
		}
		k := j
		if k < len(s) && s[k] == '\'' {
			k++
			for {
				if k >= len(s) {
					return nil, permanent("a connect string with an unterminated quote")
				}
				if s[k] == '\\' && k+1 < len(s) {
					k += 2
					continue
				}
				if s[k] == '\'' {
					if k+1 < len(s) && s[k+1] == '\'' {
						k += 2
						continue
					}
					k++
					break
				}
				k++
			}
		} else {
			for k < len(s) && s[k] != ' ' && s[k] != '\t' {
				k++
			}
		}
		out = append(out, connToken{strings.ToLower(key), s[j:k]})
		i = k
	}
}

func unquote(raw string) string {
	if len(raw) >= 2 && raw[0] == '\'' && raw[len(raw)-1] == '\'' {
		r := strings.ReplaceAll(raw[1:len(raw)-1], "''", "'")
		return strings.ReplaceAll(r, `\'`, "'")
	}
	return raw
}

// rewriteConnString points host=/port= at where this harness serves them.
func (b *pgBouncer) rewriteConnString(cs string) (string, error) {
	toks, err := splitConnString(cs)
	if err != nil {
		return "", err
	}
	hostAt, portAt := -1, -1
	for i, t := range toks {
		switch t.key {
		case "host":
			hostAt = i
		case "port":
			portAt = i
		}
	}
	if hostAt < 0 {
		return cs, nil // unix socket or pgbouncer's default: as written
	}
	host := unquote(toks[hostAt].raw)
	port := 5432
	if portAt >= 0 {
		if port, err = strconv.Atoi(unquote(toks[portAt].raw)); err != nil {
			return "", permanent("a port= that is not a number")
		}
	}
	if strings.Contains(host, ",") {
		for _, h := range strings.Split(host, ",") {
			if _, _, ok := b.serviceOf(h); ok {
				return "", permanent("Unsupported: a host= list naming a Service (fakelet maps one Service host)")
			}
		}
		return cs, nil
	}
	var addr string
	if ip := net.ParseIP(host); ip != nil && strings.HasPrefix(host, podCIDRPrefix) {
		addr = net.JoinHostPort(hostAddress(host), strconv.Itoa(port))
	} else if ns, svc, ok := b.serviceOf(host); ok {
		if addr, err = b.m.services.serviceAddress(ns, svc, port); err != nil {
			return "", waitError{fmt.Sprintf("host=%s port=%d: %v", host, port, err)}
		}
		if withHosts := os.Geteuid() == 0 && b.m.clusterHostsFile() != ""; withHosts {
			// The process resolves Service names through the cluster hosts file (hosts.go),
			// and the proxy serves each Service on its own address and port: the entry keeps
			// naming the Service (qualified), so SHOW DATABASES shows a Service name, as in a
			// real cluster.
			addr = net.JoinHostPort(svc+"."+ns+".svc", strconv.Itoa(port))
		}
	} else {
		return cs, nil
	}
	h, p, _ := net.SplitHostPort(addr)
	toks[hostAt].raw = h
	if portAt >= 0 {
		toks[portAt].raw = p
	} else {
		toks = append(toks, connToken{"port", p})
	}
	var parts []string
	for _, t := range toks {
		parts = append(parts, t.key+"="+t.raw)
	}
	return strings.Join(parts, " "), nil
}

// serviceOf names the Service a host of the connect string means, in cluster DNS terms.
func (b *pgBouncer) serviceOf(host string) (ns, name string, ok bool) {
	h := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(host)), ".")
	if net.ParseIP(h) != nil {
		return b.m.services.serviceByClusterIP(h)
	}
	if h == "" || h == "localhost" {
		return "", "", false
	}
	h = strings.TrimSuffix(h, ".cluster.local")
	parts := strings.Split(h, ".")
	switch {
	case len(parts) == 3 && parts[2] == "svc":
		return parts[1], parts[0], true
	case len(parts) == 2:
		return parts[1], parts[0], true
	case len(parts) == 1:
		return b.pod.Namespace, parts[0], true
	}
	return "", "", false // a name outside the cluster: as written
}
