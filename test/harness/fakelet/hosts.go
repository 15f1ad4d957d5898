package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// Cluster DNS for the Pods that run as plain host processes (PostgreSQL, PgBouncer). The
// operator names servers by their Services ("svc.ns.svc", --connect service-dns), and those
// names also reach the servers themselves: a logical-replication subscription's conninfo is
// the DSN the operator was given, so the target's PostgreSQL dials "source.ns.svc". fakelet
// keeps one hosts file (state dir, "hosts") that maps every Service's names to its service
// address 127.1.X.Y, where the Service proxy listens on the Service's own ports (proxy.go),
// and starts these processes through `fakelet __hosts FILE UID GID -- PROGRAM ARGS...`: in a
// mount namespace of their own (Go makes its mounts private) the file is bind-mounted over
// /etc/hosts, then the helper drops to UID/GID and execs PROGRAM (same pid). glibc reads
// /etc/hosts at each lookup, so Services made later resolve without a restart. The file is
// changed in place (a bind mount keeps the inode it was given).

const hostsHelperArg = "__hosts"

// clusterHostsText is the hosts file of host-process Pods: every Service under its
// namespace-qualified names (a short name would depend on the Pod's namespace).
func clusterHostsText(services []serviceHost) string {
	var b strings.Builder
	b.WriteString("# fakelet: cluster DNS of PostgreSQL and PgBouncer Pods (Services at their service address)\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, s := range services {
		fmt.Fprintf(&b, "%s\t%s.%s.svc.cluster.local %s.%s.svc %s.%s\n", s.ip, s.name, s.ns, s.name, s.ns, s.name, s.ns)
	}
	return b.String()
}

// writeInPlace makes file `path` hold `want` without replacing its inode (it is bind-mounted
// into Pods): a pure addition is appended, so that readers see whole lines of the old or new
// text; anything else is rewritten.
func writeInPlace(path, want string) error {
	cur, err := os.ReadFile(path)
	if err == nil && string(cur) == want {
		return nil
	}
	if err == nil && strings.HasPrefix(want, string(cur)) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(want[len(cur):])
		f.Close()
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(want), 0); err != nil {
		return err
	}
	return f.Truncate(int64(len(want)))
}

// withClusterHosts runs cmd through the __hosts helper. Without root (no mount namespace)
// cmd is returned as it is: Service names then do not resolve in those Pods.
func withClusterHosts(cmd *exec.Cmd, hostsFile string) (*exec.Cmd, error) {
	if os.Geteuid() != 0 || hostsFile == "" {
		return cmd, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	uid, gid := -1, -1
	attr := cmd.SysProcAttr
	if attr != nil && attr.Credential != nil {
		uid, gid = int(attr.Credential.Uid), int(attr.Credential.Gid)
	}
	args := append([]string{self, hostsHelperArg, hostsFile, strconv.Itoa(uid), strconv.Itoa(gid), "--", cmd.Path}, cmd.Args...)
	w := exec.Command(self)
	w.Args = args
	w.Env, w.Dir = cmd.Env, cmd.Dir
	w.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	return w, nil
}

// hostsHelper is main() of `fakelet __hosts FILE UID GID -- PROGRAM ARGV0 ARGS...`; it only
// returns on error.
func hostsHelper(args []string) error {
	if len(args) < 6 || args[3] != "--" {
		return fmt.Errorf("usage: %s FILE UID GID -- PROGRAM ARGV0 [ARGS...]", hostsHelperArg)
	}
	uid, err1 := strconv.Atoi(args[1])
	gid, err2 := strconv.Atoi(args[2])
	if err1 != nil || err2 != nil {
		return fmt.Errorf("bad uid/gid %q %q", args[1], args[2])
	}
	if err := syscall.Mount(args[0], "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on /etc/hosts: %w", args[0], err)
	}
	var sig int32 // the parent-death signal fakelet set; a credential change clears it
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, 2 /* PR_GET_PDEATHSIG */, uintptr(unsafe.Pointer(&sig)), 0); e != 0 {
		return fmt.Errorf("pdeathsig: %v", e)
	}
	if uid >= 0 {
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
		if err := syscall.Setuid(uid); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}
	if sig != 0 {
		if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(sig), 0); e != 0 {
			return fmt.Errorf("pdeathsig: %v", e)
		}
		if os.Getppid() == 1 {
			return fmt.Errorf("fakelet is gone")
		}
	}
	return syscall.Exec(args[4], args[5:], os.Environ())
}

// clusterHostsFile is the hosts file host-process Pods see as /etc/hosts.
func (m *podManager) clusterHostsFile() string {
	if m.o.stateDir == "" {
		return ""
	}
	dir, _ := filepath.Abs(m.o.stateDir)
	return filepath.Join(dir, "hosts")
}

// writeClusterHosts brings the cluster hosts file up to date (the proxy's Services changed).
func (m *podManager) writeClusterHosts(services []serviceHost) {
	if f := m.clusterHostsFile(); f != "" {
		if err := writeInPlace(f, clusterHostsText(services)); err != nil {
			log.Printf("cluster hosts file %s: %v", f, err)
		}
	}
}
