// Command manifestcheck validates ftpalg's deployment files offline:
//
//   - Kubernetes manifests: each document against the Kubernetes schema compiled into client-go
//     (the structured-merge-diff schema that server-side apply uses: undeclared fields, wrong
//     types), then strictly decoded into the k8s.io/api Go types (quantities, int-or-string,
//     unknown and duplicate fields), then ftpalg's invariants (hostNetwork, hostUsers,
//     capabilities, probes on the metrics port, resources, ...).
//   - The Compose file: loaded with compose-go (schema of the Compose specification, embedded),
//     then the same invariants in Compose terms.
//
// Usage: manifestcheck [-compose FILE] KUBERNETES_MANIFEST...
//
// It lives in its own module so that the Kubernetes and Compose libraries stay out of ftpalg's.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	compose := flag.String("compose", "", "a compose file to check too")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: manifestcheck [-compose FILE] KUBERNETES_MANIFEST...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 && *compose == "" {
		flag.Usage()
		os.Exit(2)
	}
	var errs []error
	if flag.NArg() > 0 {
		docs, e := checkKubernetes(flag.Args())
		errs = append(errs, e...)
		if len(e) == 0 {
			for _, d := range docs {
				gvk := d.obj.GetObjectKind().GroupVersionKind()
				fmt.Printf("ok  %s %s\n", d, gvk.Kind)
			}
		}
	}
	if *compose != "" {
		e := checkCompose(*compose)
		errs = append(errs, e...)
		if len(e) == 0 {
			fmt.Printf("ok  %s compose\n", *compose)
		}
	}
	for _, err := range errs {
		fmt.Fprintf(os.Stderr, "manifestcheck: %v\n", err)
	}
	if len(errs) > 0 {
		os.Exit(1)
	}
}
