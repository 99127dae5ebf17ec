package harness

import (
	"os"
	"strings"
)

// Released cometbft versions of the other CometBFT lines the compatibility
// tests run, with the validators[].protocol that serves each. Like
// CometBFT038, each is installed from the Go module proxy into the cache
// directory (BuildCometBFTRelease) and can be overridden by an environment
// variable naming another module version of the same line.
const (
	// CometBFTV1 is the v1.0 line (cometbft.privval.v1): protocol v1.
	CometBFTV1    = "v1.0.1"
	CometBFTV1Env = "KMSHA_E2E_COMETBFTV1"
	// CometBFT037 is the v0.37 line (no vote extensions): protocol v0.37.
	CometBFT037    = "v0.37.18"
	CometBFT037Env = "KMSHA_E2E_COMETBFT037"
)

// ReleaseVersion is def, or the module version the environment variable
// env names.
func ReleaseVersion(def, env string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

// reportedVersions lists the releases whose binary reports another version
// than its module version: v0.37.18's version/version.go still says
// TMCoreSemVer = "0.37.16".
var reportedVersions = map[string]string{
	"v0.37.18": "0.37.16",
}

// ReportedVersion is what `cometbft version` and /status print for the
// release of module version version.
func ReportedVersion(version string) string {
	if r, ok := reportedVersions[version]; ok {
		return r
	}
	return strings.TrimPrefix(version, "v")
}
