package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// workload is one kind of container that fakelet runs as a real process (postgres,
// pgbouncer, the operator). The container type below supervises it the way the kubelet
// supervises a container under restartPolicy Always.
type workload interface {
	// prepare runs before every start (initdb, config files, tokens). A permanentError
	// fails the Pod for good, a waitError keeps the container waiting (retried every
	// second, no restart counted), any other error counts as a crash.
	prepare() error
	// command is the process to start; the container sets its output and death signal.
	command() (*exec.Cmd, error)
	// ready is one readiness probe of the running process.
	ready() bool
	logFile() string
	name() string // for fakelet's log, e.g. "postgres 127.0.0.100"
}

// startHook is implemented by workloads that finish their setup once the process exists
// (and before it may go on); an error kills it and counts as a crash.
type startHook interface{ started(pid int) error }

// exitHook is implemented by workloads that clean up after each exit of the process.
type exitHook interface{ exited() }

// stopPlan is how a container is stopped: `first` at once, `second` after the grace
// period, SIGKILL 10 s later.
type stopPlan struct{ first, second syscall.Signal }

// livenessCheck is a liveness probe: after `delay`, every `period`; `threshold` failures in
// a row kill the process (it is then restarted like any crash).
type livenessCheck struct {
	probe     func() bool
	delay     time.Duration
	period    time.Duration
	threshold int
}

// readinessPolicy: after `delay`, probe every `period`; `threshold` failures in a row turn a
// ready container not ready (one success makes it ready).
type readinessPolicy struct {
	delay     time.Duration
	period    time.Duration
	threshold int
}

// container supervises one workload: prepare, start, probe, restart with backoff, stop.
// All fields below mu are guarded by it; the rest is set before supervise() starts.
type container struct {
	w         workload
	grace     time.Duration
	stop      stopPlan
	readiness readinessPolicy
	liveness  *livenessCheck
	notify    func() // called on every state change

	mu        sync.Mutex
	running   bool
	ready     bool
	startedAt time.Time
	restarts  int
	lastExit  string
	waiting   string // why the process is not started yet
	fatal     string // a permanent failure: the pod becomes Failed
	stopping  bool
	proc      *os.Process
	done      chan struct{}
}

func newContainer(w workload, grace time.Duration, stop stopPlan, notify func()) *container {
	return &container{w: w, grace: grace, stop: stop, notify: notify, done: make(chan struct{}),
		readiness: readinessPolicy{period: 500 * time.Millisecond, threshold: 1}}
}

type ctrState struct {
	pid            int
	running, ready bool
	startedAt      time.Time
	restarts       int
	lastExit       string
	waiting        string
	fatal          string
}

func (c *container) state() ctrState {
	c.mu.Lock()
	defer c.mu.Unlock()
	pid := 0
	if c.proc != nil {
		pid = c.proc.Pid
	}
	return ctrState{pid, c.running, c.ready, c.startedAt, c.restarts, c.lastExit, c.waiting, c.fatal}
}

func (c *container) log(format string, a ...any) {
	log.Printf("%s: %s", c.w.name(), fmt.Sprintf(format, a...))
}

func (c *container) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

// supervise runs until shutdown(): the process is restarted when it exits on its own.
func (c *container) supervise() {
	// Pdeathsig is per OS thread: keep this goroutine on the thread that starts the process
	// so that a killed fakelet also stops its processes.
	runtime.LockOSThread()
	defer close(c.done)
	backoff := time.Second
	for {
		if c.isStopping() {
			return
		}
		err := c.w.prepare()
		if w, ok := err.(waitError); ok {
			c.mu.Lock()
			changed := c.waiting != w.msg
			c.waiting = w.msg
			c.mu.Unlock()
			if changed {
				c.log("waiting: %s", w.msg)
				c.notify()
			}
			c.sleep(time.Second)
			continue
		}
		c.mu.Lock()
		c.waiting = ""
		c.mu.Unlock()
		if err == nil {
			err = c.runOnce()
		}
		if c.isStopping() {
			return
		}
		c.mu.Lock()
		if _, ok := err.(permanentError); ok {
			c.fatal = err.Error()
			c.mu.Unlock()
			c.log("failed: %v", err)
			c.notify()
			return
		}
		if err != nil {
			c.lastExit = err.Error()
		}
		c.restarts++
		c.mu.Unlock()
		c.log("exited (%v); restarting in %v", err, backoff)
		c.notify()
		c.sleep(backoff)
		if backoff < 10*time.Second {
			backoff *= 2
		}
	}
}

// sleep waits d, or less when the container is being stopped.
func (c *container) sleep(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end) && !c.isStopping(); {
		time.Sleep(min(100*time.Millisecond, time.Until(end)))
	}
}

func (c *container) runOnce() error {
	cmd, err := c.w.command()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(c.w.logFile(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	cmd.SysProcAttr.Pdeathsig = c.stop.first
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	if h, ok := c.w.(exitHook); ok {
		defer h.exited()
	}
	if h, ok := c.w.(startHook); ok {
		if err := h.started(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return fmt.Errorf("setting up the container: %w", err)
		}
	}
	c.mu.Lock()
	c.proc = cmd.Process
	c.running = true
	c.startedAt = time.Now()
	stopping := c.stopping
	c.mu.Unlock()
	if stopping {
		_ = cmd.Process.Signal(c.stop.first)
	}
	c.notify()
	probeStop := make(chan struct{})
	go c.probeReadiness(probeStop)
	if c.liveness != nil {
		go c.probeLiveness(probeStop, cmd.Process)
	}
	err = cmd.Wait()
	close(probeStop)
	c.mu.Lock()
	c.running, c.ready, c.proc = false, false, nil
	c.mu.Unlock()
	if err == nil {
		err = fmt.Errorf("exited with status 0")
	}
	return err
}

func (c *container) probeReadiness(stop <-chan struct{}) {
	select {
	case <-stop:
		return
	case <-time.After(c.readiness.delay):
	}
	t := time.NewTicker(c.readiness.period)
	defer t.Stop()
	failures := 0
	for {
		ok := c.w.ready()
		if ok {
			failures = 0
		} else {
			failures++
		}
		c.mu.Lock()
		was := c.ready
		if c.running && (ok || failures >= c.readiness.threshold) {
			c.ready = ok
		}
		changed := was != c.ready
		c.mu.Unlock()
		if changed {
			c.log("ready=%v", ok)
			c.notify()
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func (c *container) probeLiveness(stop <-chan struct{}, proc *os.Process) {
	l := c.liveness
	select {
	case <-stop:
		return
	case <-time.After(l.delay):
	}
	t := time.NewTicker(l.period)
	defer t.Stop()
	failures := 0
	for {
		if l.probe() {
			failures = 0
		} else if failures++; failures >= l.threshold {
			c.log("liveness probe failed %d times; killing the process", failures)
			_ = proc.Signal(syscall.SIGKILL)
			return
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// shutdown stops the process (stop.first, stop.second after the grace period, then
// SIGKILL) and waits for the supervisor to end.
func (c *container) shutdown() {
	c.mu.Lock()
	c.stopping = true
	proc := c.proc
	c.mu.Unlock()
	if proc != nil {
		_ = proc.Signal(c.stop.first)
	}
	select {
	case <-c.done:
		return
	case <-time.After(c.grace):
	}
	c.mu.Lock()
	proc = c.proc
	c.mu.Unlock()
	if proc != nil {
		c.log("still running after %v; sending %v", c.grace, c.stop.second)
		_ = proc.Signal(c.stop.second)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		if proc != nil {
			_ = proc.Kill()
		}
		<-c.done
	}
}
