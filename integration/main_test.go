package integration

import (
	"os"
	"testing"

	"github.com/opendmvpn/dmvpn/integration/dphelper"
)

func TestMain(m *testing.M) {
	dphelper.MaybeRun() // a re-executed helper never returns
	os.Exit(m.Run())
}
