package packaging

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// GitVersions derives the versions of a build of the repository at root
// from git: the package's, 0.0.<commits>+g<hash> (".dirty" with
// uncommitted changes; it sorts forward with every commit), the one
// compiled into the commands (git describe --always --dirty, as make build
// sets it), and the last commit's time.
func GitVersions(ctx context.Context, root string) (deb, binary string, date time.Time, err error) {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("packaging: git %s: %w", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	count, err := git("rev-list", "--count", "HEAD")
	if err != nil {
		return "", "", time.Time{}, err
	}
	hash, err := git("rev-parse", "--short=7", "HEAD")
	if err != nil {
		return "", "", time.Time{}, err
	}
	binary, err = git("describe", "--always", "--dirty")
	if err != nil {
		return "", "", time.Time{}, err
	}
	ct, err := git("log", "-1", "--format=%ct")
	if err != nil {
		return "", "", time.Time{}, err
	}
	sec, err := strconv.ParseInt(ct, 10, 64)
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("packaging: commit time %q: %w", ct, err)
	}
	deb = "0.0." + count + "+g" + hash
	if strings.HasSuffix(binary, "-dirty") {
		deb += ".dirty"
	}
	return deb, binary, time.Unix(sec, 0).UTC(), nil
}
