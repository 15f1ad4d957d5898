// Command fakelet stands in for a kubelet and kube-proxy in pgshift's Kubernetes tests.
//
// It registers one Node, binds every unscheduled Pod to it, and runs each Pod whose single
// container image is postgres:MAJOR[...] as a real PostgreSQL server of that major version
// (from .cache/postgres/MAJOR) on the Pod's own loopback address, and each edoburu/pgbouncer
// Pod as a real PgBouncer (pgbouncer.go). PersistentVolumeClaims get a PersistentVolume
// backed by a folder that outlives the Pod; secret, configMap and projected volumes are
// written into the pod's folder (podvolumes.go). Pods of any other image are marked Failed:
// nothing is faked as running. A service proxy listens on 127.0.0.1 for every
// Service port and forwards to ready endpoints from the Service's EndpointSlices.
//
// Pod addresses: EndpointSlice validation rejects loopback IPs, so a Pod's API address is
// 10.88.0.N (status.podIP) while its server listens on 127.0.0.N; the proxy and pods.json
// translate one to the other.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

type options struct {
	kubeconfig   string
	root         string
	stateDir     string
	servicesFile string
	podsFile     string
	nodeName     string
	pgCache      string
	osUser       string
	firstHost    int
	operatorBin  string // what the pgshift-operator image runs
	pgshiftBin   string
	pgClientDir  string // the image's /opt/pgclient
	apiServerURL string // from the kubeconfig: what in-cluster processes reach
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == containerHelperArg {
		err := containerHelper(os.Args[2])
		fmt.Fprintf(os.Stderr, "fakelet container: %v\n", err)
		os.Exit(127)
	}
	if len(os.Args) > 2 && os.Args[1] == hostsHelperArg {
		err := hostsHelper(os.Args[2:])
		fmt.Fprintf(os.Stderr, "fakelet %s: %v\n", hostsHelperArg, err)
		os.Exit(127)
	}
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "admin kubeconfig")
	flag.StringVar(&o.root, "root", ".", "the pgshift checkout (for .cache/postgres)")
	flag.StringVar(&o.stateDir, "state-dir", "", "pod and volume folders (default ROOT/.cache/k8s/state/fakelet)")
	flag.StringVar(&o.servicesFile, "services-file", "", "where Services are reachable (JSON)")
	flag.StringVar(&o.podsFile, "pods-file", "", "pod API and host addresses (JSON; default beside services-file)")
	flag.StringVar(&o.nodeName, "node-name", "fakelet", "the Node to register")
	flag.StringVar(&o.pgCache, "postgres-cache", "", "PostgreSQL builds, MAJOR/native/bin (default ROOT/.cache/postgres)")
	flag.StringVar(&o.osUser, "os-user", "pgshift", "OS user that runs PostgreSQL when fakelet runs as root")
	flag.IntVar(&o.firstHost, "first-host", 100, "pods get 127.0.0.N (API 10.88.0.N) for N from this to 254")
	flag.StringVar(&o.operatorBin, "operator-bin", os.Getenv("PGSHIFT_OPERATOR_BIN"), "the binary pgshift-operator images run (default $PGSHIFT_OPERATOR_BIN, else ROOT/build/pgshift-operator)")
	flag.StringVar(&o.pgshiftBin, "pgshift-bin", os.Getenv("PGSHIFT_BIN"), "the pgshift CLI of that image (default $PGSHIFT_BIN, else ROOT/build/pgshift)")
	flag.StringVar(&o.pgClientDir, "pg-client-dir", "", "PostgreSQL client tools for that image's /opt/pgclient (default ROOT/.cache/pgclient)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	root, _ := filepath.Abs(o.root)
	o.root = root
	if o.stateDir == "" {
		o.stateDir = filepath.Join(root, ".cache/k8s/state/fakelet")
	}
	if o.pgCache == "" {
		o.pgCache = filepath.Join(root, ".cache/postgres")
	}
	if o.operatorBin == "" {
		o.operatorBin = filepath.Join(root, "build/pgshift-operator")
	}
	if o.pgshiftBin == "" {
		o.pgshiftBin = filepath.Join(root, "build/pgshift")
	}
	if o.pgClientDir == "" {
		o.pgClientDir = filepath.Join(root, ".cache/pgclient")
	}
	for _, p := range []*string{&o.operatorBin, &o.pgshiftBin, &o.pgClientDir} {
		*p, _ = filepath.Abs(*p)
	}
	if o.servicesFile == "" {
		o.servicesFile = filepath.Join(root, ".cache/k8s/services.json")
	}
	if o.podsFile == "" {
		o.podsFile = filepath.Join(filepath.Dir(o.servicesFile), "pods.json")
	}
	if err := run(o); err != nil {
		log.Fatalf("fakelet: %v", err)
	}
}

func run(o options) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	o.apiServerURL = cfg.Host
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.stateDir, 0o755); err != nil {
		return err
	}
	runAs, err := lookupRunAs(o.osUser)
	if err != nil {
		return err
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	node := &nodeAgent{cs: cs, name: o.nodeName}
	if err := node.register(ctx); err != nil {
		return fmt.Errorf("registering node %s: %w", o.nodeName, err)
	}
	go node.heartbeat(ctx)

	factory := informers.NewSharedInformerFactory(cs, 0)
	proxy := newServiceProxy(factory, o.servicesFile)
	pods := newPodManager(cs, factory, o, runAs, proxy)
	proxy.onChange = pods.refreshAllHosts
	pods.writeClusterHosts(nil) // before any server starts: it is bind-mounted as they do
	vols := newVolumeManager(cs, factory, o, runAs)
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("cache of %v did not sync", typ)
		}
	}
	if !cache.WaitForCacheSync(ctx.Done()) {
		return fmt.Errorf("caches did not sync")
	}
	go vols.run(ctx)
	go proxy.run(ctx)
	go pods.run(ctx)
	log.Printf("fakelet: node %s ready; pods on 127.0.0.%d..254", o.nodeName, o.firstHost)
	<-ctx.Done()
	log.Printf("fakelet: shutting down, stopping PostgreSQL servers")
	pods.stopAll(10 * time.Second)
	return nil
}
