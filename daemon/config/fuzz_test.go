package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParse: any file is either rejected with *Errors naming a line, or
// accepted as a Config whose rendered running configuration reads back to
// the same Config.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "tunnel: {}\n"))
	f.Add([]byte(inClear(minimal+twoISPs) + "firewall:\n  zones:\n    lan: [lan0]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b, "fuzz.yaml")
		if err != nil {
			var es *Errors
			if c != nil || !errors.As(err, &es) || len(es.List) == 0 || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse: %v (%T), config %v", err, err, c != nil)
			}
			return
		}
		back, err := Parse(c.YAML(), "rendered")
		if err != nil {
			t.Fatalf("rendered config does not parse: %v\n%s", err, c.YAML())
		}
		if diff := cmp.Diff(c, back, cmpNet...); diff != "" {
			t.Fatalf("render round trip (-file +rendered):\n%s", diff)
		}
	})
}
