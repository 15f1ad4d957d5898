// Command etcd is upstream etcd's server, built from the Go module proxy as a test tool for
// pgshift's Kubernetes tests (Debian's etcd is too old for recent kube-apiservers).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
