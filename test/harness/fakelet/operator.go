package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// pgshift-operator Pods: the image of `make deploy` (ghcr.io/pgshift/pgshift-operator:TAG,
// or any IMG=.../pgshift-operator:TAG) runs as the build output (--operator-bin), in a
// container of its own (containerexec.go) laid out as deploy/Dockerfile lays out the image:
//   /usr/local/bin/pgshift-operator, /usr/local/bin/pgshift   the build's binaries
//   /opt/pgclient                                              .cache/pgclient (PostgreSQL
//                                                              18 client tools, on PATH)
//   /usr, /etc, /lib*, /bin, /sbin                             the host's, read-only
//   user 65532 (the image's USER), HOME and WORKDIR /var/lib/pgshift-operator
// with the Pod's volumes at their mount paths (the ServiceAccount's projected token, ca.crt
// and namespace at /var/run/secrets/kubernetes.io/serviceaccount; emptyDirs), a private
// /tmp, the Pod's name as hostname, /etc/hosts naming every Service (cluster DNS) and
// KUBERNETES_SERVICE_HOST/PORT set to the API server's own address (its serving certificate
// names 127.0.0.1; the `kubernetes` Service has no endpoints in this harness), and a network
// namespace of its own connected to the host by fakelet's relays (netns.go): its ports are
// its own (two operator Pods at once do not clash) and are reached on the Pod's address.

var operatorImageRE = regexp.MustCompile(`^(?:[^/@]+/)*pgshift-operator(?::[A-Za-z0-9_.\-]+)?(?:@sha256:[0-9a-f]{64})?$`)

func isOperatorImage(image string) bool { return operatorImageRE.MatchString(image) }

// The image's own settings (deploy/Dockerfile).
const (
	operatorImageUser = 65532
	operatorImageHome = "/var/lib/pgshift-operator"
	operatorImagePath = "/opt/pgclient/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

type processPod struct {
	m      *podManager
	pod    *corev1.Pod
	c      corev1.Container
	podDir string
	hostIP string
	owner  runAs // the container's user (and fsGroup): owns its volumes' files
	gid    int   // the process's group
	groups []int
	noNew  bool
	probe  func() bool

	mu    sync.Mutex // guards the hosts file, net and gate
	net   *podNet    // while the process runs
	gate  *os.File   // the helper execs the process once fakelet writes here
	gateR *os.File   // the helper's end, closed here once it started
}

func (p *processPod) name() string        { return "operator " + p.hostIP }
func (p *processPod) logFile() string     { return filepath.Join(p.podDir, "container.log") }
func (p *processPod) etc(f string) string { return filepath.Join(p.podDir, "etc", f) }
func (p *processPod) specFile() string    { return filepath.Join(p.podDir, "run", "container.json") }

func (m *podManager) resolveOperator(pod *corev1.Pod, rt *podRuntime) (*processPod, error) {
	c := pod.Spec.Containers[0]
	if _, err := os.Stat(m.o.operatorBin); err != nil {
		return nil, fmt.Errorf("ImageNotPresent: the operator binary %s is missing (make build)", m.o.operatorBin)
	}
	switch {
	case len(c.Command) == 0:
	case len(c.Command) == 1 && path.Base(c.Command[0]) == "pgshift-operator":
	default:
		return nil, fmt.Errorf("Unsupported: container command %q (fakelet runs the image's entrypoint only)", c.Command)
	}
	p := &processPod{m: m, pod: pod, c: c, podDir: rt.podDir}
	uid, gid := int64(operatorImageUser), int64(operatorImageUser)
	var fsGroup *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		uid, gid = ptr.Deref(sc.RunAsUser, uid), ptr.Deref(sc.RunAsGroup, gid)
		fsGroup = sc.FSGroup
		for _, g := range sc.SupplementalGroups {
			p.groups = append(p.groups, int(g))
		}
	}
	p.noNew = false
	if sc := c.SecurityContext; sc != nil {
		uid, gid = ptr.Deref(sc.RunAsUser, uid), ptr.Deref(sc.RunAsGroup, gid)
		p.noNew = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		if sc.Privileged != nil && *sc.Privileged {
			return nil, fmt.Errorf("Unsupported: privileged containers")
		}
	}
	if uid == 0 {
		if runAsNonRoot(pod) {
			return nil, fmt.Errorf("CreateContainerConfigError: container has runAsNonRoot and would run as root")
		}
		return nil, fmt.Errorf("Unsupported: fakelet does not run containers as root")
	}
	p.gid = int(gid)
	p.owner = runAs{uid: uint32(uid), gid: uint32(gid), set: true}
	if fsGroup != nil {
		p.groups = append(p.groups, int(*fsGroup))
		p.owner.gid = uint32(*fsGroup)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("Unsupported: fakelet must run as root to give a process Pod its own mount namespace")
	}
	for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
		if _, err := m.podProbe(pod, c, pr, func() string { return "" }); err != nil {
			return nil, err
		}
	}
	probe, err := m.podProbe(pod, c, c.ReadinessProbe, func() string { return p.hostIP })
	if err != nil {
		return nil, err
	}
	p.probe = probe
	return p, nil
}

func runAsNonRoot(pod *corev1.Pod) bool {
	c := pod.Spec.Containers[0]
	if c.SecurityContext != nil && c.SecurityContext.RunAsNonRoot != nil {
		return *c.SecurityContext.RunAsNonRoot
	}
	return pod.Spec.SecurityContext != nil && ptr.Deref(pod.Spec.SecurityContext.RunAsNonRoot, false)
}

func (p *processPod) ready() bool {
	if p.probe != nil {
		return p.probe()
	}
	return true
}

// liveness is the container's liveness probe on the spec's schedule, or nil.
func (p *processPod) liveness() *livenessCheck {
	pr := p.c.LivenessProbe
	if pr == nil {
		return nil
	}
	probe, err := p.m.podProbe(p.pod, p.c, pr, func() string { return p.hostIP })
	if err != nil || probe == nil {
		return nil
	}
	delay, period, threshold := probeTiming(pr)
	return &livenessCheck{probe: probe, delay: delay, period: period, threshold: threshold}
}

func (p *processPod) prepare() error {
	for _, d := range []string{filepath.Join(p.podDir, "run"), filepath.Join(p.podDir, "etc"), filepath.Join(p.podDir, "rootfs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	_ = os.Chmod(filepath.Join(p.podDir, "run"), 0o700)
	if err := p.m.materializeVolumes(p.pod, p.podDir, p.owner); err != nil {
		return err
	}
	env, err := p.env()
	if err != nil {
		return err
	}
	if err := p.writeEtc(); err != nil {
		return err
	}
	spec := containerSpec{
		Rootfs:      filepath.Join(p.podDir, "rootfs"),
		SystemDirs:  []string{"/usr", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"},
		DeviceDirs:  []string{"/dev", "/proc", "/sys"},
		Dirs:        []string{"/tmp", "/run", "/opt", "/var/lib", operatorImageHome},
		Symlinks:    [][2]string{{"/var/run", "../run"}},
		Tmpfs:       []string{"/usr/local"},
		Hostname:    p.pod.Name,
		UID:         int(p.owner.uid),
		GID:         p.gid,
		Groups:      p.groups,
		NoNewPrivs:  p.noNew,
		WorkingDir:  orDefault(p.c.WorkingDir, operatorImageHome),
		Argv:        append([]string{"/usr/local/bin/pgshift-operator"}, p.c.Args...),
		Env:         env,
		ReadOnlyFS:  p.c.SecurityContext != nil && ptr.Deref(p.c.SecurityContext.ReadOnlyRootFilesystem, false),
		ParentDeath: int(syscall.SIGTERM),
	}
	spec.Mounts = append(spec.Mounts,
		bindMount{Source: p.m.o.operatorBin, Target: "/usr/local/bin/pgshift-operator", ReadOnly: true},
		bindMount{Source: p.etc("hosts"), Target: "/etc/hosts", ReadOnly: true},
		bindMount{Source: p.etc("hostname"), Target: "/etc/hostname", ReadOnly: true},
		bindMount{Source: p.etc("passwd"), Target: "/etc/passwd", ReadOnly: true},
		bindMount{Source: p.etc("group"), Target: "/etc/group", ReadOnly: true})
	if _, err := os.Stat(p.m.o.pgshiftBin); err == nil {
		spec.Mounts = append(spec.Mounts, bindMount{Source: p.m.o.pgshiftBin, Target: "/usr/local/bin/pgshift", ReadOnly: true})
	}
	if _, err := os.Stat(filepath.Join(p.m.o.pgClientDir, "bin", "pg_dump")); err != nil {
		return permanent(fmt.Sprintf("ImageNotPresent: no PostgreSQL client tools in %s (scripts/setup.sh)", p.m.o.pgClientDir))
	}
	spec.Mounts = append(spec.Mounts, bindMount{Source: p.m.o.pgClientDir, Target: "/opt/pgclient", ReadOnly: true})
	vms := append([]corev1.VolumeMount{}, p.c.VolumeMounts...)
	sort.SliceStable(vms, func(i, j int) bool { return len(path.Clean(vms[i].MountPath)) < len(path.Clean(vms[j].MountPath)) })
	for _, vm := range vms {
		src, err := p.m.hostPath(p.pod, p.c, vm.MountPath, p.podDir)
		if err != nil {
			return err
		}
		if err := p.owner.mkdirMode(src, 0o777); err != nil {
			return err
		}
		spec.Mounts = append(spec.Mounts, bindMount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(p.specFile()+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p.specFile()+".tmp", p.specFile())
}

func (p *processPod) command() (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, containerHelperArg, p.specFile())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true,
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET}
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{r} // fd 3 in the helper
	p.mu.Lock()
	p.gate, p.gateR = w, r
	p.mu.Unlock()
	return cmd, nil
}

// started connects the new process's network namespace (the helper waits for it), then lets
// the helper exec the container's process.
func (p *processPod) started(pid int) error {
	p.mu.Lock()
	gate := p.gate
	p.gate = nil
	p.gateR.Close()
	p.gateR = nil
	p.mu.Unlock()
	defer gate.Close()
	own := map[int]bool{}
	for _, cp := range p.c.Ports {
		own[int(cp.ContainerPort)] = true
	}
	pn, err := openPodNet(pid, p.name(), own)
	if err != nil {
		return err
	}
	for _, cp := range p.c.Ports {
		if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
			continue
		}
		addr := net.JoinHostPort(p.hostIP, strconv.Itoa(int(cp.ContainerPort)))
		if err := pn.inbound(addr, int(cp.ContainerPort)); err != nil {
			pn.close()
			return fmt.Errorf("port %d: %w", cp.ContainerPort, err)
		}
	}
	host, port := p.m.apiServer()
	api := net.JoinHostPort(host, port)
	if err := pn.outbound(api, api); err != nil {
		pn.close()
		return fmt.Errorf("API server relay: %w", err)
	}
	pn.syncServices(p.m.services.hostsEntries())
	p.mu.Lock()
	p.net = pn
	p.mu.Unlock()
	if _, err := gate.Write([]byte{1}); err != nil {
		return err
	}
	return nil
}

func (p *processPod) exited() {
	p.mu.Lock()
	pn := p.net
	p.net = nil
	for _, f := range []**os.File{&p.gate, &p.gateR} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
	p.mu.Unlock()
	if pn != nil {
		pn.close()
	}
}

// env is the process environment: the image's, then the kubelet's, then the container's.
func (p *processPod) env() ([]string, error) {
	vars := map[string]string{
		"PATH": operatorImagePath, "HOME": operatorImageHome, "HOSTNAME": p.pod.Name,
	}
	host, port := p.m.apiServer()
	vars["KUBERNETES_SERVICE_HOST"], vars["KUBERNETES_SERVICE_PORT"] = host, port
	vars["KUBERNETES_SERVICE_PORT_HTTPS"] = port
	vars["KUBERNETES_PORT"] = "tcp://" + net.JoinHostPort(host, port)
	own, err := p.m.env(p.pod, p.c)
	if err != nil {
		return nil, err
	}
	for k, v := range own {
		vars[k] = v
	}
	var out []string
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}

// apiServer is where a Pod reaches the API server (fakelet's own kubeconfig server).
func (m *podManager) apiServer() (string, string) {
	u, err := url.Parse(m.o.apiServerURL)
	if err != nil || u.Port() == "" {
		return "127.0.0.1", "443"
	}
	return u.Hostname(), u.Port()
}

// writeEtc writes the files the container sees in /etc: hosts, hostname, and passwd/group
// with the image's user added (getpwuid of the container's uid works, as in the image).
func (p *processPod) writeEtc() error {
	if err := os.WriteFile(p.etc("hostname"), []byte(p.pod.Name+"\n"), 0o644); err != nil {
		return err
	}
	for _, f := range []struct{ name, line string }{
		{"passwd", fmt.Sprintf("pgshift-operator:x:%d:%d::%s:/usr/sbin/nologin\n", p.owner.uid, uint32(p.gid), operatorImageHome)},
		{"group", fmt.Sprintf("pgshift-operator:x:%d:\n", uint32(p.gid))},
	} {
		host, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			return err
		}
		text := string(host)
		if !strings.Contains(text, fmt.Sprintf(":x:%d:", p.owner.uid)) || f.name == "group" {
			if !strings.HasSuffix(text, "\n") {
				text += "\n"
			}
			text += f.line
		}
		if err := os.WriteFile(p.etc(f.name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return p.refreshHosts(p.m.services.hostsEntries())
}

// refreshHosts makes the Pod's /etc/hosts name every Service. The file is bind-mounted into
// the container, so it is changed in place (a rename would not be seen): new Services are
// appended (what a reader sees is always whole lines of the old or new file); anything else
// rewrites it.
func (p *processPod) refreshHosts(services []serviceHost) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# fakelet: the Pod's /etc/hosts; Services at their fakelet service address\n")
	fmt.Fprintf(&b, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", p.hostIP, p.pod.Name)
	for _, s := range services {
		names := []string{s.name + "." + s.ns + ".svc.cluster.local", s.name + "." + s.ns + ".svc", s.name + "." + s.ns}
		if s.ns == p.pod.Namespace {
			names = append(names, s.name)
		}
		fmt.Fprintf(&b, "%s\t%s\n", s.ip, strings.Join(names, " "))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return writeInPlace(p.etc("hosts"), b.String())
}

// refreshAllHosts updates the cluster hosts file and that of every process Pod (the proxy
// calls it when Services change).
func (m *podManager) refreshAllHosts(services []serviceHost) {
	m.writeClusterHosts(services)
	m.mu.Lock()
	var pods []*processPod
	for _, rt := range m.runtimes {
		if rt.ctr != nil {
			if p, ok := rt.ctr.w.(*processPod); ok {
				pods = append(pods, p)
			}
		}
	}
	m.mu.Unlock()
	for _, p := range pods {
		if _, err := os.Stat(p.etc("hosts")); err != nil {
			continue // not prepared yet: prepare writes it
		}
		if err := p.refreshHosts(services); err != nil {
			log.Printf("pod %s/%s: /etc/hosts: %v", p.pod.Namespace, p.pod.Name, err)
		}
		p.mu.Lock()
		pn := p.net
		p.mu.Unlock()
		if pn != nil {
			pn.syncServices(services)
		}
	}
}
