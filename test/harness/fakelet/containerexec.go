package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A container of its own for a process Pod (the operator): fakelet re-executes itself as
// `fakelet __container SPEC.json` in new mount, UTS and network namespaces (cmd.SysProcAttr
// Unshareflags; Go makes every mount private there). This helper, still root, builds the
// container's root filesystem on a tmpfs (only this namespace sees it), bind-mounts the
// host's system folders read-only, the image's files and the Pod's volumes at their mount
// paths, chroots into it, sets the hostname to the Pod's name, drops to the Pod's user, waits
// until fakelet has connected the network namespace and execs the container's process
// (same pid). Nothing of it is visible outside the process.

const containerHelperArg = "__container"

// containerSpec is everything the helper needs; fakelet writes it (0600, root) before start.
type containerSpec struct {
	Rootfs      string      `json:"rootfs"`     // an empty host folder: the tmpfs goes on it
	SystemDirs  []string    `json:"systemDirs"` // host folders bound read-only at the same path
	DeviceDirs  []string    `json:"deviceDirs"` // bound recursively, read-write (/dev, /proc)
	Dirs        []string    `json:"dirs"`       // folders made in the root (image content)
	Symlinks    [][2]string `json:"symlinks"`   // [path, target]
	Tmpfs       []string    `json:"tmpfs"`      // extra tmpfs mounts (over bound folders)
	Mounts      []bindMount `json:"mounts"`     // image files, /etc overrides, volumes
	ReadOnlyFS  bool        `json:"readOnlyRootFilesystem"`
	Hostname    string      `json:"hostname"`
	UID         int         `json:"uid"`
	GID         int         `json:"gid"`
	Groups      []int       `json:"groups"`
	NoNewPrivs  bool        `json:"noNewPrivs"`
	WorkingDir  string      `json:"workingDir"`
	Argv        []string    `json:"argv"`
	Env         []string    `json:"env"`
	ParentDeath int         `json:"parentDeathSignal"`
}

type bindMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"` // in the container
	ReadOnly bool   `json:"readOnly"`
}

// containerHelper is main() of `fakelet __container SPEC`; it only returns on error.
func containerHelper(specPath string) error {
	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var s containerSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if err := buildRoot(&s); err != nil {
		return fmt.Errorf("building the container's root: %w", err)
	}
	if err := syscall.Sethostname([]byte(s.Hostname)); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if err := syscall.Chroot(s.Rootfs); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := syscall.Chdir(orDefault(s.WorkingDir, "/")); err != nil {
		return fmt.Errorf("working dir %s: %w", s.WorkingDir, err)
	}
	if err := syscall.Setgroups(s.Groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(s.GID); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	// From root to another uid: every capability goes (the spec's `drop: [ALL]`).
	if err := syscall.Setuid(s.UID); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	if s.NoNewPrivs { // allowPrivilegeEscalation: false
		if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, 38 /* PR_SET_NO_NEW_PRIVS */, 1, 0); e != 0 {
			return fmt.Errorf("no_new_privs: %v", e)
		}
	}
	// The credential change cleared the parent-death signal: set it again.
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(s.ParentDeath), 0); e != 0 {
		return fmt.Errorf("pdeathsig: %v", e)
	}
	if os.Getppid() == 1 {
		return fmt.Errorf("fakelet is gone")
	}
	// fd 3: fakelet writes one byte once the Pod's network is connected (netns.go).
	gate := os.NewFile(3, "gate")
	if n, _ := gate.Read(make([]byte, 1)); n != 1 {
		return fmt.Errorf("fakelet did not connect the Pod's network")
	}
	gate.Close()
	return syscall.Exec(s.Argv[0], s.Argv, s.Env)
}

func buildRoot(s *containerSpec) error {
	r := s.Rootfs
	in := func(p string) string { return filepath.Join(r, p) }
	if err := syscall.Mount("tmpfs", r, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs on %s: %w", r, err)
	}
	bind := func(src, dst string, ro, rec bool) error {
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			err = os.MkdirAll(dst, 0o755)
		} else if _, err = os.Stat(dst); os.IsNotExist(err) {
			if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
				err = os.WriteFile(dst, nil, 0o644)
			}
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w", dst, err)
		}
		flags := uintptr(syscall.MS_BIND)
		if rec {
			flags |= syscall.MS_REC
		}
		if err := syscall.Mount(src, dst, "", flags, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, dst, err)
		}
		if ro {
			if err := syscall.Mount("", dst, "", flags|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", dst, err)
			}
		}
		return nil
	}
	for _, d := range s.SystemDirs {
		fi, err := os.Lstat(d)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink != 0 { // merged /usr: /bin -> usr/bin
			t, _ := os.Readlink(d)
			if err := os.Symlink(t, in(d)); err != nil {
				return err
			}
			continue
		}
		if err := bind(d, in(d), true, true); err != nil {
			return err
		}
	}
	for _, d := range s.DeviceDirs {
		if err := bind(d, in(d), false, true); err != nil {
			return err
		}
	}
	for _, d := range s.Dirs {
		if err := os.MkdirAll(in(d), 0o755); err != nil {
			return err
		}
		if d == "/tmp" {
			_ = os.Chmod(in(d), 0o1777)
		}
	}
	for _, l := range s.Symlinks {
		if err := os.MkdirAll(filepath.Dir(in(l[0])), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(l[1], in(l[0])); err != nil {
			return err
		}
	}
	for _, t := range s.Tmpfs {
		if err := syscall.Mount("tmpfs", in(t), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("tmpfs on %s: %w", t, err)
		}
	}
	for _, m := range s.Mounts {
		dst, err := securePath(r, m.Target)
		if err != nil {
			return err
		}
		if err := bind(m.Source, dst, m.ReadOnly, false); err != nil {
			return err
		}
	}
	if s.ReadOnlyFS {
		if err := syscall.Mount("", r, "", syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV, ""); err != nil {
			return fmt.Errorf("read-only root: %w", err)
		}
	}
	return nil
}

// securePath resolves p inside root, following symlinks within root (/var/run -> ../run).
func securePath(root, p string) (string, error) {
	cur := root
	for _, part := range strings.Split(strings.Trim(filepath.Clean("/"+p), "/"), "/") {
		if part == "" {
			continue
		}
		next := filepath.Join(cur, part)
		for i := 0; i < 8; i++ {
			fi, err := os.Lstat(next)
			if err != nil || fi.Mode()&os.ModeSymlink == 0 {
				break
			}
			t, _ := os.Readlink(next)
			if filepath.IsAbs(t) {
				next = filepath.Join(root, t)
			} else {
				next = filepath.Join(filepath.Dir(next), t)
			}
			if !strings.HasPrefix(next, root) {
				return "", fmt.Errorf("%s leaves the container's root", p)
			}
		}
		cur = next
	}
	return cur, nil
}
