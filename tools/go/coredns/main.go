// Command coredns is CoreDNS with only the plugins the local test cluster's Corefile uses (tools/cluster/cluster-up.sh):
// the way CoreDNS documents compiling a server with a chosen plugin set. Its own main package links every plugin
// (cloud DNS providers, etcd, ...), which triples the cold build for nothing the cluster runs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// plugins are the Corefile directives this build serves; they run in CoreDNS's own order (dnsserver.Directives).
var plugins = map[string]bool{"bind": true, "cache": true, "errors": true, "kubernetes": true, "ready": true}

func main() {
	var directives []string
	for _, name := range dnsserver.Directives {
		if plugins[name] {
			directives = append(directives, name)
		}
	}
	dnsserver.Directives = directives
	coremain.Run()
}
