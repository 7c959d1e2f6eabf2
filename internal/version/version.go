// Package version names the build of dmvpnd and dmvpnctl.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is set at build time (-ldflags "-X …/internal/version.Version=…",
// as `make build` does from git describe); "dev" otherwise.
var Version = "dev"

// Info describes the build.
type Info struct {
	Version string `json:"version"`
	// Commit is the VCS revision when the build recorded one.
	Commit string `json:"commit,omitempty"`
	Go     string `json:"go"`
	OS     string `json:"os"`
	Arch   string `json:"arch"`
}

// Get returns the build's description.
func Get() Info {
	i := Info{Version: Version, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				i.Commit = s.Value
			}
		}
	}
	return i
}
