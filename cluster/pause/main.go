// Command pause is the pod sandbox's process on the single-node test cluster (docs/pods.md): it holds the
// pod's namespaces, reaps zombies and exits on SIGINT/SIGTERM, as upstream's pause.c does. No registry is
// reachable there, so registry.k8s.io/pause cannot be pulled; scripts/images.sh builds this into
// localhost/pacsflow/pause from scratch (a static binary, uid 65535) and containerd's CRI uses it as the
// sandbox image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
