package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/gateway"
)

func TestRunFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr bool
		check   func(*gateway.Config) bool
	}{
		{name: "defaults", args: nil, check: func(c *gateway.Config) bool {
			return len(c.Ports) == 1 && c.Ports[0] == 21 && c.FailOpen && c.PinholeTimeout == 30*time.Second && c.LogFormat == "json" && c.Queues == 1
		}},
		{name: "ports list", args: []string{"--ports", "21,2121,21"}, check: func(c *gateway.Config) bool {
			return len(c.Ports) == 2 && c.Ports[1] == 2121
		}},
		{name: "fail closed", args: []string{"--fail-open=false", "--queues", "2", "--queue", "7"}, check: func(c *gateway.Config) bool {
			return !c.FailOpen && c.Queues == 2 && c.Queue == 7
		}},
		{name: "bad port", args: []string{"--ports", "70000"}, wantErr: true},
		{name: "zero port", args: []string{"--ports", "0"}, wantErr: true},
		{name: "bad format", args: []string{"--log-format", "xml"}, wantErr: true},
		{name: "timeout too long", args: []string{"--pinhole-timeout", "10m"}, wantErr: true},
		{name: "too many queues", args: []string{"--queue", "65535", "--queues", "2"}, wantErr: true},
		{name: "stray argument", args: []string{"now"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseRunFlags(tt.args, io.Discard)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && !tt.check(cfg) {
				t.Errorf("config = %+v", cfg)
			}
		})
	}
}

// TestCommandLine: the subcommands' argument handling (what needs no kernel).
func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"cleanup", "now"}, 2, "cleanup takes no arguments"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"help"}, 0, "cleanup"},
		{[]string{"version"}, 0, "ftpalg "},
	} {
		var stdout, stderr bytes.Buffer
		if code := realMain(tc.args, &stdout, &stderr); code != tc.code {
			t.Errorf("%v: exit %d, want %d (%s%s)", tc.args, code, tc.code, &stdout, &stderr)
		}
		if !strings.Contains(stdout.String()+stderr.String(), tc.out) {
			t.Errorf("%v: output %q lacks %q", tc.args, stdout.String()+stderr.String(), tc.out)
		}
	}
}
