package config

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"
)

// decoder walks a YAML node tree, collecting every error with its field
// path and line instead of stopping at the first one, and remembering the
// line of every field it saw so later checks can point at them.
type decoder struct {
	opts  Options
	errs  []Error
	warns []Error
	lines map[string]int // field path → line
	// netPaths are the field paths of the decoded Config.Networks.
	netPaths []string
}

func newDecoder() *decoder { return &decoder{lines: map[string]int{}} }

// errorf records an error at node n (or at line 0 when n is nil).
func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	line, col := 0, 0
	if n != nil {
		line, col = n.Line, n.Column
	}
	d.errs = append(d.errs, Error{Path: path, Line: line, Column: col, Msg: fmt.Sprintf(format, args...)})
}

// errorAt records an error at a field seen earlier (its line), for checks
// that involve several fields.
func (d *decoder) errorAt(path, format string, args ...any) {
	d.errs = append(d.errs, Error{Path: path, Line: d.line(path), Msg: fmt.Sprintf(format, args...)})
}

// warnAt records a warning at a field seen earlier: the file is valid,
// but the operator must know (a certificate about to expire).
func (d *decoder) warnAt(path, format string, args ...any) {
	d.warns = append(d.warns, Error{Path: path, Line: d.line(path), Msg: fmt.Sprintf(format, args...)})
}

// failed reports whether an error was recorded at path or below it.
func (d *decoder) failed(path string) bool {
	for _, e := range d.errs {
		if e.Path == path || strings.HasPrefix(e.Path, path+"[") || strings.HasPrefix(e.Path, path+".") {
			return true
		}
	}
	return false
}

// line returns the line of a field path, or of its nearest parent seen.
func (d *decoder) line(path string) int {
	for p := path; p != ""; {
		if l, ok := d.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// has reports whether the file set a field.
func (d *decoder) has(path string) bool {
	_, ok := d.lines[path]
	return ok
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// kindName names what a node is, for "want X, got Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	switch n.ShortTag() {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int":
		return "the number " + n.Value
	case "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!null":
		return "nothing"
	}
	return fmt.Sprintf("%q", n.Value)
}

// fields maps the keys of a mapping to the functions decoding their values.
type fields map[string]func(n *yaml.Node, path string)

// mapping decodes a mapping node: every key must be known and appear once.
func (d *decoder) mapping(n *yaml.Node, path string, fs fields) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		if n.ShortTag() == "!!null" {
			return // an empty section
		}
		d.errorf(n, path, "want a mapping, got %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		p := join(path, key)
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "keys must be names")
			continue
		}
		if seen[key] {
			d.errorf(k, p, "set twice")
			continue
		}
		seen[key] = true
		f, ok := fs[key]
		if !ok {
			d.errorf(k, p, "unknown key %q (known keys: %s)", key, strings.Join(sortedKeys(fs), ", "))
			continue
		}
		d.lines[p] = k.Line
		f(v, p)
	}
}

func sortedKeys(fs fields) []string {
	out := make([]string, 0, len(fs))
	for k := range fs {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// scalar returns a scalar node's value, or records an error.
func (d *decoder) scalar(n *yaml.Node, path, want string) (*yaml.Node, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		d.errorf(n, path, "want %s, got %s", want, kindName(n))
		return n, false
	}
	return n, true
}

// str decodes a string. Numbers and booleans are refused: a name written
// as 123 is almost always a mistake elsewhere in the line.
func (d *decoder) str(n *yaml.Node, path string, out *string) bool {
	n, ok := d.scalar(n, path, "a string")
	if !ok {
		return false
	}
	if n.ShortTag() != "!!str" {
		d.errorf(n, path, "want a string, got %s (quote it)", kindName(n))
		return false
	}
	*out = n.Value
	return true
}

// text decodes any scalar as text (passwords may look like numbers).
func (d *decoder) text(n *yaml.Node, path string, out *string) bool {
	n, ok := d.scalar(n, path, "a string")
	if ok {
		*out = n.Value
	}
	return ok
}

func (d *decoder) boolean(n *yaml.Node, path string, out *bool) bool {
	n, ok := d.scalar(n, path, "true or false")
	if !ok {
		return false
	}
	if n.ShortTag() != "!!bool" {
		d.errorf(n, path, "want true or false, got %s", kindName(n))
		return false
	}
	v, err := strconv.ParseBool(strings.ToLower(n.Value))
	if err != nil {
		d.errorf(n, path, "want true or false, got %q", n.Value)
		return false
	}
	*out = v
	return true
}

// integer decodes a whole number in [lo, hi] (decimal, 0x hex or 0o octal).
func (d *decoder) integer(n *yaml.Node, path string, lo, hi int64, out *int64) bool {
	n, ok := d.scalar(n, path, "a number")
	if !ok {
		return false
	}
	if n.ShortTag() != "!!int" {
		d.errorf(n, path, "want a whole number, got %s", kindName(n))
		return false
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil {
		d.errorf(n, path, "want a whole number, got %q", n.Value)
		return false
	}
	if v < lo || v > hi {
		d.errorf(n, path, "%d out of range %d-%d", v, lo, hi)
		return false
	}
	*out = v
	return true
}

// intField decodes an int in [lo, hi].
func (d *decoder) intField(n *yaml.Node, path string, lo, hi int, out *int) bool {
	var v int64
	if !d.integer(n, path, int64(lo), int64(hi), &v) {
		return false
	}
	*out = int(v)
	return true
}

// duration decodes a number of seconds or a Go duration ("90s", "2h").
func (d *decoder) duration(n *yaml.Node, path string, lo, hi time.Duration, out *time.Duration) bool {
	n, ok := d.scalar(n, path, "a duration")
	if !ok {
		return false
	}
	var v time.Duration
	switch n.ShortTag() {
	case "!!int":
		s, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil || s > math.MaxInt64/int64(time.Second) || s < 0 {
			d.errorf(n, path, "want a duration, got %q", n.Value)
			return false
		}
		v = time.Duration(s) * time.Second
	case "!!str":
		var err error
		if v, err = time.ParseDuration(n.Value); err != nil {
			d.errorf(n, path, "want a duration (seconds, or like 90s, 10m, 2h), got %q", n.Value)
			return false
		}
	default:
		d.errorf(n, path, "want a duration (seconds, or like 90s, 10m, 2h), got %s", kindName(n))
		return false
	}
	if v < lo || v > hi {
		d.errorf(n, path, "%v out of range %v-%v", v, lo, hi)
		return false
	}
	*out = v
	return true
}

func (d *decoder) addr(n *yaml.Node, path string, out *netip.Addr) bool {
	var s string
	if !d.str(n, path, &s) {
		return false
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		d.errorf(resolve(n), path, "%q is not an IP address", s)
		return false
	}
	*out = a
	return true
}

// prefix decodes an address with a prefix length. Host bits are allowed
// when host is true (a tunnel address 172.16.1.1/16), else refused.
func (d *decoder) prefix(n *yaml.Node, path string, host bool, out *netip.Prefix) bool {
	var s string
	if !d.str(n, path, &s) {
		return false
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if _, aerr := netip.ParseAddr(s); aerr == nil {
			d.errorf(resolve(n), path, "%q has no prefix length (write it like %s/24)", s, s)
		} else {
			d.errorf(resolve(n), path, "%q is not an address/prefix-length", s)
		}
		return false
	}
	if !host && p.Masked() != p {
		d.errorf(resolve(n), path, "%s has host bits set (the network is %s)", p, p.Masked())
		return false
	}
	*out = p
	return true
}

// seq decodes a list, calling f for each item.
func (d *decoder) seq(n *yaml.Node, path string, f func(i int, item *yaml.Node, path string)) {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		if n.ShortTag() == "!!null" {
			return
		}
		d.errorf(n, path, "want a list, got %s", kindName(n))
		return
	}
	for i, item := range n.Content {
		p := index(path, i)
		d.lines[p] = item.Line
		f(i, item, p)
	}
}

// oneOf decodes a string that must be one of choices.
func (d *decoder) oneOf(n *yaml.Node, path string, out *string, choices ...string) bool {
	var s string
	if !d.str(n, path, &s) {
		return false
	}
	if !slices.Contains(choices, s) {
		d.errorf(resolve(n), path, "%q is not one of %s", s, strings.Join(choices, ", "))
		return false
	}
	*out = s
	return true
}

// offSection decodes a section that may be `off` (also `false`) instead
// of a mapping: it sets *off for it, reports any other scalar (keys names
// the section's keys), and returns true when n was a scalar: the section
// has nothing more to decode.
func (d *decoder) offSection(n *yaml.Node, p, keys string, off *bool) bool {
	rn := resolve(n)
	if rn.Kind != yaml.ScalarNode || rn.ShortTag() == "!!null" {
		return false
	}
	if (rn.ShortTag() == "!!str" && rn.Value == "off") || (rn.ShortTag() == "!!bool" && strings.EqualFold(rn.Value, "false")) {
		*off = true
		return true
	}
	d.errorf(rn, p, "want a mapping (%s) or off, got %s", keys, kindName(rn))
	return true
}
