package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// checkCompose loads file the way docker compose does (compose-go validates it against the
// Compose specification's JSON schema, embedded in the module: no network), then checks
// ftpalg's invariants on its one service.
func checkCompose(file string) []error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithName("ftpalg"),
		// The file must stand alone: no .env, no host environment.
		cli.WithEnv(nil),
		cli.WithInterpolation(false),
	)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", file, err)}
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", file, err)}
	}
	var errs []error
	fail := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", file, fmt.Sprintf(format, a...)))
	}
	if len(p.Services) != 1 {
		fail("want exactly one service, got %d", len(p.Services))
	}
	s, ok := p.Services["ftpalg"]
	if !ok {
		fail("no service named ftpalg")
		return errs
	}
	checks := []struct {
		ok   bool
		what string
	}{
		{s.Image != "", "image must be set"},
		{s.NetworkMode == "host", fmt.Sprintf("network_mode must be host, got %q", s.NetworkMode)},
		{s.UserNSMode == "host", fmt.Sprintf("userns_mode must be host, got %q", s.UserNSMode)},
		{slices.Equal(s.CapDrop, []string{"ALL"}), fmt.Sprintf("cap_drop must be [ALL], got %v", s.CapDrop)},
		{slices.Equal(s.CapAdd, []string{"NET_ADMIN"}), fmt.Sprintf("cap_add must be [NET_ADMIN], got %v", s.CapAdd)},
		{!s.Privileged, "must not be privileged"},
		{s.Restart == types.RestartPolicyUnlessStopped, fmt.Sprintf("restart must be unless-stopped, got %q", s.Restart)},
		{len(s.Entrypoint) == 0, "entrypoint overrides the image's /ftpalg"},
		{len(s.Command) > 0 && s.Command[0] == "run", fmt.Sprintf("command must start with run, got %q", []string(s.Command))},
		{s.User == "" || s.User == "0" || s.User == "0:0", fmt.Sprintf("user must be 0 (a non-root UID does not get an added capability), got %q", s.User)},
		{s.ReadOnly, "read_only must be true"},
		{slices.Contains(s.SecurityOpt, "no-new-privileges:true"), "security_opt needs no-new-privileges:true"},
		{s.StopSignal == "" || s.StopSignal == "SIGTERM", fmt.Sprintf("stop_signal must be SIGTERM, got %q", s.StopSignal)},
		{s.HealthCheck == nil || s.HealthCheck.Disable, "a healthcheck cannot run in a FROM scratch image (no shell, no curl)"},
	}
	for _, c := range checks {
		if !c.ok {
			fail("service ftpalg: %s", c.what)
		}
	}
	return errs
}
