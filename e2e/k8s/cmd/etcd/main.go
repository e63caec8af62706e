// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 at the version that
// k8s.io/kubernetes v1.36.3 itself depends on (see go.mod). Equivalent to upstream's etcd main package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
