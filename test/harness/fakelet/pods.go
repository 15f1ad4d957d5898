package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

const podCIDRPrefix = "10.88.0." // API addresses; the host side is 127.0.0.N

// podRuntime is what fakelet runs for one Pod (by UID).
type podRuntime struct {
	uid        types.UID
	key        string
	hostN      int
	ctr        *container // nil when the pod failed before starting
	failure    string     // reason: message, when the pod cannot run
	failReason string     // the pod's reason when its container fails for good
	podDir     string
	address    func() string // host:port for pods.json
	dataDir    string
	owner      runAs // who owns the files of its volumes
}

type podManager struct {
	cs       kubernetes.Interface
	o        options
	as       runAs
	services serviceResolver
	pods     corelisters.PodLister
	pvcs     corelisters.PersistentVolumeClaimLister
	queue    workqueue.TypedRateLimitingInterface[string]

	mu          sync.Mutex
	runtimes    map[string]*podRuntime // by namespace/name
	usedN       map[int]bool
	lastN       int                     // the address last given: the next search starts after it
	podsWritten string                  // what pods.json holds
	tokenRenew  map[types.UID]time.Time // when a pod's projected tokens are renewed
}

func newPodManager(cs kubernetes.Interface, f informers.SharedInformerFactory, o options, as runAs,
	services serviceResolver) *podManager {
	m := &podManager{
		cs: cs, o: o, as: as, services: services,
		pods:       f.Core().V1().Pods().Lister(),
		pvcs:       f.Core().V1().PersistentVolumeClaims().Lister(),
		queue:      workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		runtimes:   map[string]*podRuntime{},
		usedN:      map[int]bool{},
		lastN:      o.firstHost - 1,
		tokenRenew: map[types.UID]time.Time{},
	}
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			m.queue.Add(key)
		}
	}
	_, _ = f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	})
	// Pods waiting for a claim to be bound are retried when claims change.
	_, _ = f.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, o any) {
			pvc := o.(*corev1.PersistentVolumeClaim)
			pods, _ := m.pods.Pods(pvc.Namespace).List(labelsEverything())
			for _, p := range pods {
				enqueue(p)
			}
		},
	})
	return m
}

func (m *podManager) run(ctx context.Context) {
	go func() { <-ctx.Done(); m.queue.ShutDown() }()
	for i := 0; i < 4; i++ {
		go func() {
			for {
				key, quit := m.queue.Get()
				if quit {
					return
				}
				if err := m.sync(ctx, key); err != nil {
					if _, waiting := err.(waitError); !waiting && ctx.Err() == nil {
						log.Printf("pod %s: %v (retrying)", key, err)
					}
					m.queue.AddRateLimited(key)
				} else {
					m.queue.Forget(key)
				}
				m.queue.Done(key)
			}
		}()
	}
	// Status also changes without API events (readiness, restarts): resync every few seconds.
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.mu.Lock()
			for k := range m.runtimes {
				m.queue.Add(k)
			}
			m.mu.Unlock()
			m.renewTokens()
		}
	}
}

func (m *podManager) sync(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := m.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Gone without passing through fakelet's graceful deletion: deleted with
		// --grace-period=0 --force. The kubelet then still gives the container its minimum
		// grace period of 2 s.
		m.mu.Lock()
		if rt := m.runtimes[key]; rt != nil && rt.ctr != nil {
			rt.ctr.grace = min(rt.ctr.grace, 2*time.Second)
		}
		m.mu.Unlock()
		m.teardown(key, nil)
		return nil
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	rt := m.runtimes[key]
	m.mu.Unlock()
	if rt != nil && rt.uid != pod.UID { // a new Pod of the same name (StatefulSet)
		m.teardown(key, rt)
		rt = nil
	}
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp != nil {
			return nil
		}
		return m.bind(ctx, pod)
	}
	if pod.Spec.NodeName != m.o.nodeName {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		m.teardown(key, rt)
		err := m.cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		log.Printf("pod %s: deleted", key)
		return nil
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		return nil
	}
	if rt == nil {
		rt, err = m.start(pod)
		if err != nil {
			return err // transient, e.g. a claim not bound yet
		}
	}
	m.writePods() // a container's address may be known only once it started
	return m.updateStatus(ctx, pod, rt)
}

func (m *podManager) bind(ctx context.Context, pod *corev1.Pod) error {
	err := m.cs.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: m.o.nodeName},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("binding: %w", err)
	}
	log.Printf("pod %s/%s: bound to %s", pod.Namespace, pod.Name, m.o.nodeName)
	return nil
}

type waitError struct{ msg string }

func (e waitError) Error() string { return e.msg }

// start resolves the pod into a workload and starts it. A pod that can never run gets a
// runtime with a failure (and no container).
func (m *podManager) start(pod *corev1.Pod) (*podRuntime, error) {
	key := pod.Namespace + "/" + pod.Name
	rt := &podRuntime{uid: pod.UID, key: key,
		podDir: filepath.Join(m.o.stateDir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))}
	w, err := m.resolve(pod, rt)
	if _, wait := err.(waitError); wait {
		return nil, err
	}
	if err != nil {
		rt.failure = err.Error()
		log.Printf("pod %s: cannot run: %s", key, rt.failure)
	} else {
		n, err := m.allocate()
		if err != nil {
			return nil, err
		}
		rt.hostN = n
		hostIP := "127.0.0." + strconv.Itoa(n)
		notify := func() { m.queue.Add(key) }
		switch w := w.(type) {
		case *pgServer:
			w.spec.hostIP = hostIP
			rt.ctr = newContainer(w, w.spec.grace, stopPlan{syscall.SIGINT, syscall.SIGQUIT}, notify)
			rt.failReason, rt.dataDir = "PostgresFailed", w.spec.dataDir
			rt.address = func() string { return fmt.Sprintf("%s:%d", hostIP, w.spec.port) }
			log.Printf("pod %s: starting PostgreSQL %d on %s:%d (pod IP %s%d), PGDATA %s",
				key, w.spec.major, hostIP, w.spec.port, podCIDRPrefix, n, w.spec.dataDir)
		case *pgBouncer:
			w.hostIP = hostIP
			// SIGINT: PgBouncer's safe shutdown (waits for server connections to be
			// released); SIGTERM: immediate shutdown.
			rt.ctr = newContainer(w, graceOf(pod), stopPlan{syscall.SIGINT, syscall.SIGTERM}, notify)
			m.readinessFromSpec(rt.ctr, w.c.ReadinessProbe)
			rt.failReason, rt.owner = "PgBouncerFailed", m.as
			rt.address = func() string { return fmt.Sprintf("%s:%d", hostIP, w.port.Load()) }
			log.Printf("pod %s: starting PgBouncer (%s) on %s (pod IP %s%d)", key, pgbouncerBinary, hostIP, podCIDRPrefix, n)
		case *processPod:
			w.hostIP = hostIP
			rt.ctr = newContainer(w, graceOf(pod), stopPlan{syscall.SIGTERM, syscall.SIGKILL}, notify)
			m.readinessFromSpec(rt.ctr, w.c.ReadinessProbe)
			rt.ctr.liveness = w.liveness()
			rt.failReason, rt.owner = "ContainerFailed", w.owner
			rt.address = func() string { return hostIP + ":" + firstPort(w.c) }
			log.Printf("pod %s: starting %s (%s) as uid %d on %s (pod IP %s%d)", key, w.c.Image, m.o.operatorBin,
				w.owner.uid, hostIP, podCIDRPrefix, n)
		}
		go rt.ctr.supervise()
	}
	m.mu.Lock()
	m.runtimes[key] = rt
	m.mu.Unlock()
	m.writePods()
	return rt, nil
}

// graceOf is the pod's termination grace period (the kubelet's default 30 s).
func graceOf(pod *corev1.Pod) time.Duration {
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(max(*g, 1)) * time.Second
	}
	return 30 * time.Second
}

// readinessFromSpec applies a container's readiness probe schedule: its initial delay and
// failure threshold; fakelet probes every 0.5 s rather than every periodSeconds, so that
// tests do not wait for the kubelet's (default 10 s) period.
func (m *podManager) readinessFromSpec(c *container, p *corev1.Probe) {
	if p == nil {
		return
	}
	delay, _, threshold := probeTiming(p)
	c.readiness = readinessPolicy{delay: delay, period: 500 * time.Millisecond, threshold: threshold}
}

func (m *podManager) allocate() (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Round robin, as a CNI's IPAM does: an address just freed is not given again at once, so a
	// client still holding a deleted Pod's address (a test checking it is gone, a stale
	// endpoint) does not reach another Pod's server there.
	span := 254 - m.o.firstHost + 1
	for i := 1; i <= span; i++ {
		n := m.o.firstHost + (m.lastN-m.o.firstHost+i+span)%span
		if !m.usedN[n] {
			m.usedN[n] = true
			m.lastN = n
			return n, nil
		}
	}
	return 0, fmt.Errorf("no free pod address in 127.0.0.%d..254", m.o.firstHost)
}

// resolve maps the pod onto what fakelet runs for its image.
func (m *podManager) resolve(pod *corev1.Pod, rt *podRuntime) (workload, error) {
	if len(pod.Spec.InitContainers) > 0 || len(pod.Spec.Containers) != 1 {
		return nil, fmt.Errorf("Unsupported: fakelet runs pods of exactly one container (postgres:MAJOR, %s)",
			"edoburu/pgbouncer:TAG, pgshift-operator:TAG")
	}
	c := pod.Spec.Containers[0]
	switch {
	case postgresMajor(c.Image) > 0:
		spec, err := m.resolvePostgres(pod, rt)
		if err != nil {
			return nil, err
		}
		return &pgServer{spec: spec, as: m.as, hostsFile: m.clusterHostsFile()}, nil
	case isPgBouncerImage(c.Image):
		return m.resolvePgBouncer(pod, rt)
	case isOperatorImage(c.Image):
		return m.resolveOperator(pod, rt)
	}
	return nil, fmt.Errorf("UnsupportedImage: fakelet runs only postgres:MAJOR, edoburu/pgbouncer:TAG and .../pgshift-operator:TAG images, not %q", c.Image)
}

// resolvePostgres maps the pod onto a pgSpec: image -> binaries, env -> credentials,
// volumes -> folders.
func (m *podManager) resolvePostgres(pod *corev1.Pod, rt *podRuntime) (pgSpec, error) {
	var spec pgSpec
	c := pod.Spec.Containers[0]
	spec.major = postgresMajor(c.Image)
	native := filepath.Join(m.o.pgCache, strconv.Itoa(spec.major), "native")
	spec.binDir, spec.libDir = filepath.Join(native, "bin"), filepath.Join(native, "lib")
	if _, err := os.Stat(filepath.Join(spec.binDir, "postgres")); err != nil {
		return spec, fmt.Errorf("ImageNotPresent: no PostgreSQL %d build in %s (scripts/setup.sh --pg-only %d)",
			spec.major, native, spec.major)
	}
	if len(c.Command) > 0 && !(len(c.Command) == 1 && (c.Command[0] == "postgres" || c.Command[0] == "docker-entrypoint.sh")) {
		return spec, fmt.Errorf("Unsupported: container command %q (fakelet runs the postgres entrypoint only)", c.Command)
	}
	env, err := m.env(pod, c)
	if err != nil {
		return spec, err
	}
	spec.user = orDefault(env["POSTGRES_USER"], "postgres")
	spec.password = env["POSTGRES_PASSWORD"]
	spec.database = orDefault(env["POSTGRES_DB"], spec.user)
	spec.authMethod = orDefault(env["POSTGRES_HOST_AUTH_METHOD"], "scram-sha-256")
	spec.initdbArgs = strings.Fields(env["POSTGRES_INITDB_ARGS"])
	pgdata := orDefault(env["PGDATA"], "/var/lib/postgresql/data")
	spec.args = c.Args
	if len(spec.args) > 0 && spec.args[0] == "postgres" {
		spec.args = spec.args[1:]
	}
	spec.port = 5432
	for i := 0; i+1 < len(spec.args); i++ {
		if spec.args[i] == "-c" && strings.HasPrefix(spec.args[i+1], "port=") {
			if p, err := strconv.Atoi(strings.TrimPrefix(spec.args[i+1], "port=")); err == nil {
				spec.port = p
			}
		}
	}
	spec.dataDir, err = m.hostPath(pod, c, pgdata, rt.podDir)
	if err != nil {
		return spec, err
	}
	spec.runDir = filepath.Join(rt.podDir, "run")
	spec.logFile = filepath.Join(rt.podDir, "postgres.log")
	if err := os.MkdirAll(rt.podDir, 0o755); err != nil {
		return spec, err
	}
	spec.grace = 30 * time.Second
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && *g < 30 {
		spec.grace = time.Duration(max(*g, 2)) * time.Second
	}
	return spec, nil
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

// env resolves the container's environment: values, Secret and ConfigMap references.
func (m *podManager) env(pod *corev1.Pod, c corev1.Container) (map[string]string, error) {
	out := map[string]string{}
	ctx := context.Background()
	for _, from := range c.EnvFrom {
		switch {
		case from.SecretRef != nil:
			s, err := m.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				return nil, waitError{fmt.Sprintf("envFrom secret %s: %v", from.SecretRef.Name, err)}
			}
			for k, v := range s.Data {
				out[from.Prefix+k] = string(v)
			}
		case from.ConfigMapRef != nil:
			cm, err := m.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				return nil, waitError{fmt.Sprintf("envFrom configmap %s: %v", from.ConfigMapRef.Name, err)}
			}
			for k, v := range cm.Data {
				out[from.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			s, err := m.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
			if err != nil {
				return nil, waitError{fmt.Sprintf("env %s: secret %s: %v", e.Name, r.Name, err)}
			}
			v, ok := s.Data[r.Key]
			if !ok {
				return nil, waitError{fmt.Sprintf("env %s: secret %s has no key %s", e.Name, r.Name, r.Key)}
			}
			out[e.Name] = string(v)
		case e.ValueFrom.FieldRef != nil:
			v, err := fieldValue(pod, e.ValueFrom.FieldRef.FieldPath)
			if err != nil {
				return nil, err
			}
			out[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			cm, err := m.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
			if err != nil {
				return nil, waitError{fmt.Sprintf("env %s: configmap %s: %v", e.Name, r.Name, err)}
			}
			out[e.Name] = cm.Data[r.Key]
		}
	}
	return out, nil
}

// hostPath maps a container path onto a host folder through the container's volume mounts:
// PersistentVolumeClaims to their volume folder (outlives the pod), anything else to a
// folder of the pod (removed with it).
func (m *podManager) hostPath(pod *corev1.Pod, c corev1.Container, p string, podDir string) (string, error) {
	p = path.Clean(p)
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		vm := &c.VolumeMounts[i]
		mp := path.Clean(vm.MountPath)
		if (p == mp || strings.HasPrefix(p, mp+"/")) && (best == nil || len(mp) > len(path.Clean(best.MountPath))) {
			best = vm
		}
	}
	if best == nil {
		return filepath.Join(podDir, "rootfs", p), nil
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, path.Clean(best.MountPath)), "/")
	var base string
	for _, v := range pod.Spec.Volumes {
		if v.Name != best.Name {
			continue
		}
		if v.PersistentVolumeClaim != nil {
			pvc, err := m.pvcs.PersistentVolumeClaims(pod.Namespace).Get(v.PersistentVolumeClaim.ClaimName)
			if err != nil {
				return "", waitError{fmt.Sprintf("claim %s: %v", v.PersistentVolumeClaim.ClaimName, err)}
			}
			if pvc.Status.Phase != corev1.ClaimBound {
				return "", waitError{fmt.Sprintf("claim %s is %s, waiting for Bound", pvc.Name, pvc.Status.Phase)}
			}
			base = volumeDir(m.o.stateDir, pvc.Spec.VolumeName)
		} else {
			base = podVolumeDir(podDir, v.Name)
		}
	}
	if base == "" {
		return "", fmt.Errorf("Unsupported: volume mount %s names no volume", best.Name)
	}
	return filepath.Join(base, best.SubPath, rel), nil
}

func (m *podManager) teardown(key string, rt *podRuntime) {
	m.mu.Lock()
	if rt == nil {
		rt = m.runtimes[key]
	}
	if rt == nil || m.runtimes[key] != rt {
		m.mu.Unlock()
		return
	}
	delete(m.runtimes, key)
	m.mu.Unlock()
	if rt.ctr != nil {
		rt.ctr.shutdown()
		log.Printf("pod %s: %s stopped", key, rt.ctr.w.name())
	}
	_ = os.RemoveAll(rt.podDir) // volumes of claims live elsewhere and stay
	m.mu.Lock()
	delete(m.usedN, rt.hostN)
	delete(m.tokenRenew, rt.uid)
	m.mu.Unlock()
	m.writePods()
}

func (m *podManager) stopAll(grace time.Duration) {
	m.mu.Lock()
	var all []*podRuntime
	for _, rt := range m.runtimes {
		all = append(all, rt)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, rt := range all {
		if rt.ctr == nil {
			continue
		}
		wg.Add(1)
		go func(c *container) {
			defer wg.Done()
			c.grace = min(c.grace, grace)
			c.shutdown()
		}(rt.ctr)
	}
	wg.Wait()
}

// updateStatus writes the pod status the kubelet would: phase, IP, conditions, container state.
func (m *podManager) updateStatus(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	c := pod.Spec.Containers[0]
	st := pod.Status.DeepCopy()
	now := metav1.Now()
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.HostIP, st.HostIPs = "127.0.0.1", []corev1.HostIP{{IP: "127.0.0.1"}}
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "fakelet://" + c.Image}
	ready := false
	if rt.ctr == nil || rt.ctr.state().fatal != "" {
		reason, msg := "Failed", rt.failure
		if rt.ctr != nil {
			reason, msg = rt.failReason, rt.ctr.state().fatal
			if i := strings.Index(msg, ": "); i > 0 && !strings.Contains(msg[:i], " ") {
				reason, msg = msg[:i], msg[i+2:]
			}
		} else if i := strings.Index(msg, ": "); i > 0 {
			reason, msg = msg[:i], msg[i+2:]
		}
		st.Phase, st.Reason, st.Message = corev1.PodFailed, reason, msg
		cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 1, Reason: reason, Message: msg, FinishedAt: now}}
	} else {
		s := rt.ctr.state()
		st.PodIP = podCIDRPrefix + strconv.Itoa(rt.hostN)
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
		cs.ContainerID = "fakelet://" + string(pod.UID)
		cs.RestartCount = int32(s.restarts)
		st.Phase = corev1.PodRunning
		if s.running {
			cs.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(s.startedAt)}}
			cs.Started = ptr.To(true)
		} else {
			st.Phase = corev1.PodPending
			if s.restarts > 0 {
				st.Phase = corev1.PodRunning
			}
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating",
				Message: s.waiting}}
			if s.lastExit != "" && s.waiting == "" {
				cs.State.Waiting.Reason, cs.State.Waiting.Message = "CrashLoopBackOff", s.lastExit
			}
		}
		ready = s.ready
	}
	cs.Ready = ready
	st.ContainerStatuses = []corev1.ContainerStatus{cs}
	setCond := func(t corev1.PodConditionType, ok bool) {
		status := corev1.ConditionFalse
		if ok {
			status = corev1.ConditionTrue
		}
		for i := range st.Conditions {
			if st.Conditions[i].Type == t {
				if st.Conditions[i].Status != status {
					st.Conditions[i].Status, st.Conditions[i].LastTransitionTime = status, now
				}
				return
			}
		}
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, LastTransitionTime: now})
	}
	setCond(corev1.PodScheduled, true)
	setCond(corev1.PodInitialized, true)
	setCond(corev1.ContainersReady, ready)
	setCond(corev1.PodReady, ready)
	sort.Slice(st.Conditions, func(i, j int) bool { return st.Conditions[i].Type < st.Conditions[j].Type })
	if statusEqual(&pod.Status, st) {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Status = *st
	_, err := m.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func statusEqual(a, b *corev1.PodStatus) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// writePods records, for tests, where each pod's server really listens.
func (m *podManager) writePods() {
	m.mu.Lock()
	out := map[string]map[string]string{}
	for k, rt := range m.runtimes {
		if rt.ctr != nil {
			out[k] = map[string]string{
				"podIP":   podCIDRPrefix + strconv.Itoa(rt.hostN),
				"address": rt.address(),
			}
			if rt.dataDir != "" {
				out[k]["dataDir"] = rt.dataDir
			}
			if _, ok := rt.ctr.w.(*processPod); ok {
				if pid := rt.ctr.state().pid; pid != 0 {
					out[k]["pid"] = strconv.Itoa(pid) // tests kill -9 it
				}
			}
		}
	}
	m.mu.Unlock()
	b, _ := json.Marshal(out)
	m.mu.Lock()
	same := string(b) == m.podsWritten
	m.podsWritten = string(b)
	m.mu.Unlock()
	if !same {
		writeJSONAtomic(m.o.podsFile, out)
	}
}

func writeJSONAtomic(file string, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil {
		_ = os.Rename(tmp, file)
	}
}

// noteTokenExpiry records when a pod's projected token is to be renewed: at 80 % of its
// lifetime, as the kubelet does.
func (m *podManager) noteTokenExpiry(pod *corev1.Pod, expires time.Time, ttl time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	at := expires.Add(-ttl / 5)
	if cur, ok := m.tokenRenew[pod.UID]; !ok || at.Before(cur) || cur.Before(time.Now()) {
		m.tokenRenew[pod.UID] = at
	}
}

// renewTokens rewrites the volumes of pods whose tokens are due (new files in place).
func (m *podManager) renewTokens() {
	now := time.Now()
	m.mu.Lock()
	var due []*podRuntime
	for _, rt := range m.runtimes {
		if at, ok := m.tokenRenew[rt.uid]; ok && now.After(at) && rt.ctr != nil {
			due = append(due, rt)
			delete(m.tokenRenew, rt.uid)
		}
	}
	m.mu.Unlock()
	for _, rt := range due {
		ns, name, _ := cache.SplitMetaNamespaceKey(rt.key)
		pod, err := m.pods.Pods(ns).Get(name)
		if err != nil || pod.UID != rt.uid {
			continue
		}
		if err := m.materializeVolumes(pod, rt.podDir, rt.owner); err != nil {
			log.Printf("pod %s: renewing its volumes: %v", rt.key, err)
		} else {
			log.Printf("pod %s: projected token renewed", rt.key)
		}
	}
}

// firstPort is the container's first declared port ("" when none).
func firstPort(c corev1.Container) string {
	if len(c.Ports) == 0 {
		return ""
	}
	return strconv.Itoa(int(c.Ports[0].ContainerPort))
}
