package gateway

import (
	"time"

	"github.com/ftpalg/ftpalg/conntrack/rules"
)

// Config is the daemon's configuration (cmd/ftpalg fills it from the command line).
type Config struct {
	Ports          []uint16
	Queue          uint16
	Queues         uint16
	PinholeTimeout time.Duration
	LogFormat      string
	MetricsListen  string
	FailOpen       bool
	AllowLowPorts  bool
	Loose          bool
	Version        string // reported in the ready line and ftpalg_build_info
}

// Rules is the nftables table the daemon installs for c.
func (c *Config) Rules() rules.Config {
	return rules.Config{
		Table:    "ftpalg",
		Ports:    c.Ports,
		Queue:    c.Queue,
		Queues:   c.Queues,
		FailOpen: c.FailOpen,
	}
}
