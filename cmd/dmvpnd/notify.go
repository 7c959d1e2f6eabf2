package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/opendmvpn/dmvpn/daemon/config"
)

// notifier tells the service manager how dmvpnd is doing, the sd_notify
// protocol (systemd's Type=notify): each state is a datagram of
// newline-separated KEY=VALUE lines sent to the unix socket named by
// $NOTIFY_SOCKET ('@' starts an abstract address). Without the variable
// it does nothing. The variable is removed from the environment when read,
// so charon and other children do not talk to the manager in dmvpnd's
// name.
type notifier struct {
	addr string
}

// newNotifier reads and unsets $NOTIFY_SOCKET.
func newNotifier() *notifier {
	addr := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	return &notifier{addr: addr}
}

// Enabled reports whether a service manager listens.
func (n *notifier) Enabled() bool { return n != nil && n.addr != "" }

// Ready says the node is up (its tunnel, and charon when IPsec is on).
func (n *notifier) Ready(status string) error {
	return n.send("READY=1", "STATUS="+status)
}

// Reloading says a reload started; Ready follows when it is over.
func (n *notifier) Reloading() error {
	return n.send("RELOADING=1", fmt.Sprintf("MONOTONIC_USEC=%d", monotonicUsec()), "STATUS=reloading the configuration")
}

// Stopping says dmvpnd is stopping.
func (n *notifier) Stopping() error {
	return n.send("STOPPING=1", "STATUS=stopping")
}

// Status updates the free-text status systemctl status shows.
func (n *notifier) Status(status string) error { return n.send("STATUS=" + status) }

// send writes one datagram; a line must not itself hold a newline.
func (n *notifier) send(lines ...string) error {
	if !n.Enabled() {
		return nil
	}
	for i, l := range lines {
		lines[i] = strings.ReplaceAll(l, "\n", " ")
	}
	return sendDatagram(n.addr, strings.Join(lines, "\n")+"\n")
}

// running is the status line of a running node.
func running(cfg *config.Config, dataplane string) string {
	return fmt.Sprintf("running: %s %s on %s, %s data plane", cfg.Role, cfg.Node, cfg.Tunnel.Interface, dataplane)
}
