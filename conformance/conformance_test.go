// Package conformance runs the upstream Gateway API conformance suite, unmodified,
// against waypoint. The flags are the suite's own (registered by
// sigs.k8s.io/gateway-api/conformance/utils/flags); hack/conformance builds this test
// binary once and passes them. See README.md.
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/pkg/consts"
)

func TestConformance(t *testing.T) {
	// The suite refuses to run unless every installed Gateway API CRD carries this
	// bundle version (we never pass --allow-crds-mismatch).
	t.Logf("gateway-api conformance suite; expects CRD bundle-version %s", consts.BundleVersion)
	conformance.RunConformance(t)
}
