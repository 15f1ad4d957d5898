package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runAs is the OS identity PostgreSQL runs as (initdb and postgres refuse root).
type runAs struct {
	uid, gid uint32
	set      bool // false when fakelet itself is not root: run as ourselves
}

func lookupRunAs(name string) (runAs, error) {
	if os.Geteuid() != 0 {
		return runAs{}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return runAs{}, fmt.Errorf("OS user %q (scripts/setup.sh creates it): %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return runAs{uid: uint32(uid), gid: uint32(gid), set: true}, nil
}

func (r runAs) chown(path string) error {
	if !r.set {
		return nil
	}
	return os.Chown(path, int(r.uid), int(r.gid))
}

// mkdirOwned makes dir (0700, owned by the server's user); missing parents get 0755 and the
// same owner, so that the server can reach dir.
func (r runAs) mkdirOwned(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		if err := r.chown(dir); err != nil {
			return err
		}
		return os.Chmod(dir, 0o700)
	}
	parent := filepath.Dir(dir)
	if _, err := os.Stat(parent); err != nil {
		if err := r.mkdirOwned(parent); err != nil {
			return err
		}
		_ = os.Chmod(parent, 0o755)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	return r.chown(dir)
}

func (r runAs) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if r.set {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid}
	}
	return cmd
}

var imageRE = regexp.MustCompile(`^(?:(?:docker\.io/)?(?:library/)?)postgres:(\d+)(?:[.\-].*)?$`)

// postgresMajor returns the major version of a postgres:MAJOR[...] image, or 0.
func postgresMajor(image string) int {
	m := imageRE.FindStringSubmatch(image)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// pgSpec is what one postgres container needs, resolved from the Pod.
type pgSpec struct {
	major      int
	binDir     string
	libDir     string
	hostIP     string // 127.0.0.N: the server listens only here
	port       int
	dataDir    string // host folder for PGDATA
	runDir     string // unix socket and scratch, per pod
	logFile    string
	user       string
	password   string
	database   string
	authMethod string
	initdbArgs []string
	args       []string // extra server arguments from the container
	grace      time.Duration
}

// pgServer is the postgres workload: initdb once, then the server on the Pod's address.
type pgServer struct {
	spec      pgSpec
	as        runAs
	hostsFile string // its /etc/hosts (hosts.go)
}

func (s *pgServer) name() string    { return "postgres " + s.spec.hostIP }
func (s *pgServer) logFile() string { return s.spec.logFile }

func (s *pgServer) prepare() error {
	if err := s.as.mkdirOwned(s.spec.runDir); err != nil {
		return err
	}
	return s.initdb()
}

func (s *pgServer) env() []string {
	return []string{
		"LD_LIBRARY_PATH=" + s.spec.libDir, "PATH=" + s.spec.binDir + ":/usr/bin:/bin",
		"LANG=C.UTF-8", "LC_ALL=C.UTF-8", "HOME=" + s.spec.runDir,
	}
}

func (s *pgServer) log(format string, a ...any) {
	log.Printf("%s: %s", s.name(), fmt.Sprintf(format, a...))
}

// initdb does what the official image's entrypoint does on an empty PGDATA.
func (s *pgServer) initdb() error {
	if _, err := os.Stat(filepath.Join(s.spec.dataDir, "PG_VERSION")); err == nil {
		return nil
	}
	if s.spec.password == "" && s.spec.authMethod != "trust" {
		return permanent("Database is uninitialized and superuser password is not specified " +
			"(set POSTGRES_PASSWORD, as the official image requires)")
	}
	if err := s.as.mkdirOwned(s.spec.dataDir); err != nil {
		return err
	}
	pwfile := filepath.Join(s.spec.runDir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.spec.password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := s.as.chown(pwfile); err != nil {
		return err
	}
	args := []string{"-D", s.spec.dataDir, "--username=" + s.spec.user, "--pwfile=" + pwfile,
		"--auth-local=trust", "--auth-host=" + s.spec.authMethod, "--encoding=UTF8", "--locale=C.UTF-8"}
	args = append(args, s.spec.initdbArgs...)
	if out, err := s.run(filepath.Join(s.spec.binDir, "initdb"), nil, args...); err != nil {
		return fmt.Errorf("initdb: %v: %s", err, tail(out))
	}
	hba := fmt.Sprintf("\n# fakelet, as the official image: any address with a password\nhost all all all %s\nhost replication all all %s\n",
		s.spec.authMethod, s.spec.authMethod)
	f, err := os.OpenFile(filepath.Join(s.spec.dataDir, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(hba)
	f.Close()
	if err != nil {
		return err
	}
	if s.spec.database != "postgres" {
		stmt := fmt.Sprintf("CREATE DATABASE \"%s\"\n", strings.ReplaceAll(s.spec.database, `"`, `""`))
		out, err := s.run(filepath.Join(s.spec.binDir, "postgres"), []byte(stmt),
			"--single", "-D", s.spec.dataDir, "postgres")
		if err != nil {
			return fmt.Errorf("creating database %s: %v: %s", s.spec.database, err, tail(out))
		}
	}
	s.log("initialized %s (PostgreSQL %d)", s.spec.dataDir, s.spec.major)
	return nil
}

func (s *pgServer) run(bin string, stdin []byte, args ...string) ([]byte, error) {
	cmd := s.as.command(bin, args...)
	cmd.Env = s.env()
	cmd.Dir = s.spec.runDir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	return cmd.CombinedOutput()
}

type permanentError struct{ msg string }

func (e permanentError) Error() string { return e.msg }
func permanent(msg string) error       { return permanentError{msg} }

func tail(out []byte) string {
	s := strings.TrimSpace(string(out))
	if len(s) > 600 {
		s = "..." + s[len(s)-600:]
	}
	return s
}

func (s *pgServer) command() (*exec.Cmd, error) {
	args := []string{"-D", s.spec.dataDir, "-c", fmt.Sprintf("port=%d", s.spec.port)}
	args = append(args, s.spec.args...)
	// No unix sockets: the pod's address is its only way in (and socket paths below the
	// checkout can pass the 107-byte limit).
	args = append(args, "-c", "listen_addresses="+s.spec.hostIP, "-c", "unix_socket_directories=")
	cmd := s.as.command(filepath.Join(s.spec.binDir, "postgres"), args...)
	cmd.Env = s.env()
	cmd.Dir = s.spec.runDir
	// Service names resolve (a subscription's conninfo names the other server's Service).
	return withClusterHosts(cmd, s.hostsFile)
}

// ready is the readiness probe: a real PostgreSQL startup handshake, as pg_isready does.
func (s *pgServer) ready() bool {
	return pgAcceptsConnections(net.JoinHostPort(s.spec.hostIP, strconv.Itoa(s.spec.port)),
		s.spec.user, s.spec.database)
}

// pgAcceptsConnections sends a startup message and reads the first answer: an
// authentication request (or any error but "starting up / shutting down") means the server
// accepts connections.
func pgAcceptsConnections(addr, user, database string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var body bytes.Buffer
	_ = binary.Write(&body, binary.BigEndian, int32(196608)) // protocol 3.0
	for _, kv := range []string{"user", user, "database", database, ""} {
		body.WriteString(kv)
		body.WriteByte(0)
	}
	msg := make([]byte, 4, 4+body.Len())
	binary.BigEndian.PutUint32(msg, uint32(4+body.Len()))
	msg = append(msg, body.Bytes()...)
	if _, err := c.Write(msg); err != nil {
		return false
	}
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return false
	}
	switch hdr[0] {
	case 'R':
		return true
	case 'E':
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n <= 0 || n > 1<<16 {
			return false
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c, payload); err != nil {
			return false
		}
		// SQLSTATE 57P03: cannot_connect_now (starting up, shutting down, recovering).
		return !bytes.Contains(payload, []byte("C57P03\x00"))
	}
	return false
}
