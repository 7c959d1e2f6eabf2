package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
)

// Output modifiers, as vtysh and IOS have them: a show command may end
// with `| include REGEX`, `| exclude REGEX`, `| begin REGEX` or
// `| count [REGEX]`. The output is filtered line by line as the command
// writes it, so a large table streams through the filter instead of being
// held whole.

// pipeModifiers are the modifiers and their help, in the order `?` lists
// them.
var pipeModifiers = []Item{
	{Word: "begin", Help: "Begin with the line that matches"},
	{Word: "count", Help: "Count the lines (that match)"},
	{Word: "exclude", Help: "Exclude lines that match"},
	{Word: "include", Help: "Include lines that match"},
}

// ErrPipe wraps every error of an output modifier.
var ErrPipe = errors.New("output modifier")

// pipeSpec is a parsed output modifier.
type pipeSpec struct {
	kind string         // begin, count, exclude, include
	re   *regexp.Regexp // nil for count without a regex
}

// isPipeWord reports whether a word starts an output modifier.
func isPipeWord(w string) bool { return strings.HasPrefix(w, "|") }

// splitPipe splits a command line at its output modifier: the command's
// words and the modifier, nil when there is none. The regular expression
// is the rest of the line, its words joined by single spaces.
func splitPipe(args []string) ([]string, *pipeSpec, error) {
	at := -1
	for i, w := range args {
		if isPipeWord(w) {
			at = i
			break
		}
	}
	if at < 0 {
		return args, nil, nil
	}
	cmd := args[:at]
	rest := append([]string{}, args[at+1:]...)
	if w := strings.TrimPrefix(args[at], "|"); w != "" {
		rest = append([]string{w}, rest...)
	}
	if len(rest) == 0 {
		return nil, nil, fmt.Errorf("%w: `|` needs one of begin, count, exclude, include", ErrPipe)
	}
	kind := ""
	for _, m := range pipeModifiers {
		if strings.HasPrefix(m.Word, rest[0]) {
			if kind != "" {
				return nil, nil, fmt.Errorf("%w: %q is ambiguous (begin, count, exclude, include)", ErrPipe, rest[0])
			}
			kind = m.Word
		}
	}
	if kind == "" {
		return nil, nil, fmt.Errorf("%w: unknown modifier %q (begin, count, exclude, include)", ErrPipe, rest[0])
	}
	p := &pipeSpec{kind: kind}
	expr := strings.Join(rest[1:], " ")
	switch {
	case expr == "" && kind != "count":
		return nil, nil, fmt.Errorf("%w: %s needs a regular expression", ErrPipe, kind)
	case expr != "":
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %w", ErrPipe, kind, err)
		}
		p.re = re
	}
	return cmd, p, nil
}

// requireShow checks that an expanded command line with a modifier is a
// show command.
func requireShow(root *cobra.Command, expanded []string) error {
	c, _, _, err := commandAt(root, expanded)
	if err != nil {
		return err
	}
	if p := pathOf(c); p != "show" && !strings.HasPrefix(p, "show ") {
		return fmt.Errorf("%w: `|` follows show commands only", ErrPipe)
	}
	return nil
}

// runPiped expands args (the command without its modifier), points root's
// output through the modifier, if any, and runs it.
func runPiped(ctx context.Context, root *cobra.Command, args []string, p *pipeSpec, stdout, stderr io.Writer) error {
	expanded, err := Expand(root, args)
	if err != nil {
		return err
	}
	out := stdout
	var pw *pipeWriter
	if p != nil {
		if err := requireShow(root, expanded); err != nil {
			return err
		}
		pw = newPipeWriter(p, stdout)
		out = pw
	}
	root.SetArgs(expanded)
	root.SetOut(out)
	root.SetErr(stderr)
	err = root.ExecuteContext(ctx)
	if pw != nil {
		if cerr := pw.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// pipeWriter filters what a command writes, line by line, into out.
// Close writes a partial last line and, for count, the count.
type pipeWriter struct {
	spec    *pipeSpec
	out     io.Writer
	partial []byte
	begun   bool
	count   int
	err     error
}

func newPipeWriter(spec *pipeSpec, out io.Writer) *pipeWriter {
	return &pipeWriter{spec: spec, out: out}
}

// Write implements io.Writer.
func (p *pipeWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 && p.err == nil {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.partial = append(p.partial, b...)
			break
		}
		if len(p.partial) > 0 {
			p.partial = append(p.partial, b[:i+1]...)
			p.line(p.partial)
			p.partial = p.partial[:0]
		} else {
			p.line(b[:i+1])
		}
		b = b[i+1:]
	}
	return n, p.err
}

// line handles one line, its newline included.
func (p *pipeWriter) line(l []byte) {
	text := bytes.TrimSuffix(l, []byte("\n"))
	match := p.spec.re == nil || p.spec.re.Match(text)
	switch p.spec.kind {
	case "include":
		if !match {
			return
		}
	case "exclude":
		if match {
			return
		}
	case "begin":
		if !p.begun && !match {
			return
		}
		p.begun = true
	case "count":
		if match {
			p.count++
		}
		return
	}
	_, p.err = p.out.Write(l)
}

// Close ends the output: a last line without a newline is filtered like
// the others, and count prints its count.
func (p *pipeWriter) Close() error {
	if len(p.partial) > 0 && p.err == nil {
		p.line(append(p.partial, '\n'))
		p.partial = nil
	}
	if p.spec.kind == "count" && p.err == nil {
		_, p.err = fmt.Fprintf(p.out, "Number of lines which match regexp = %d\n", p.count)
	}
	return p.err
}

// pipeCandidates lists what may follow `|` (words are those after it).
func pipeCandidates(words []string, partial string) []Item {
	if len(words) == 0 {
		var out []Item
		for _, m := range pipeModifiers {
			if strings.HasPrefix(m.Word, partial) {
				out = append(out, m)
			}
		}
		return out
	}
	if len(words) == 1 && partial == "" {
		out := []Item{{Word: "<REGEX>", Help: "A regular expression (Go syntax) the lines are matched against"}}
		if strings.HasPrefix("count", words[0]) {
			out = append(out, Item{Word: "<cr>"})
		}
		return out
	}
	if partial == "" {
		return []Item{{Word: "<cr>"}}
	}
	return nil
}
