// report-summary prints a short summary of a Gateway API conformance report: per
// profile, the core and extended result with passed/failed/skipped counts, and the
// failed and skipped tests by name. It reads the report with the suite's own types
// (sigs.k8s.io/gateway-api/conformance/apis/v1), so it follows the suite's schema.
//
//	report-summary REPORT.yaml
package main

import (
	"fmt"
	"os"
	"strings"

	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: report-summary REPORT.yaml")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "report-summary: %v\n", err)
		os.Exit(1)
	}
	var report confv1.ConformanceReport
	if err := yaml.UnmarshalStrict(raw, &report); err != nil {
		fmt.Fprintf(os.Stderr, "report-summary: %s is not a conformance report: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	fmt.Print(summarize(&report))
}

func summarize(r *confv1.ConformanceReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "implementation: %s/%s %s (mode %s)\n", r.Organization, r.Project, r.Version, r.Mode)
	fmt.Fprintf(&b, "gateway API: %s, channel %s; report date %s\n", r.GatewayAPIVersion, r.GatewayAPIChannel, r.Date)
	if len(r.ProfileReports) == 0 {
		b.WriteString("profiles: none in the report (no test ran)\n")
	}
	for _, p := range r.ProfileReports {
		fmt.Fprintf(&b, "\nprofile %s\n", p.Name)
		status(&b, "core", p.Core)
		if p.Extended != nil {
			status(&b, "extended", p.Extended.Status)
			list(&b, "supported extended features", p.Extended.SupportedFeatures)
		}
	}
	if len(r.SucceededProvisionalTests) > 0 {
		b.WriteString("\n")
		list(&b, "succeeded provisional tests", r.SucceededProvisionalTests)
	}
	return b.String()
}

func status(b *strings.Builder, level string, s confv1.Status) {
	fmt.Fprintf(b, "  %-8s %-8s passed %d, failed %d, skipped %d\n",
		level, s.Result, s.Passed, s.Failed, s.Skipped)
	list(b, "failed", s.FailedTests)
	list(b, "skipped", s.SkippedTests)
}

func list(b *strings.Builder, what string, names []string) {
	if len(names) == 0 {
		return
	}
	fmt.Fprintf(b, "    %s (%d):\n", what, len(names))
	for _, n := range names {
		fmt.Fprintf(b, "      %s\n", n)
	}
}
