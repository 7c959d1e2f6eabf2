package ctl

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The shell's grammar is the cobra tree itself: subcommands are keywords,
// and a command's trailing keywords (detail, json, …) are listed in its
// "keywords" annotation. A command taking a free argument (an address, a
// file) names it in the "arg" annotation. Abbreviation, `?` help and tab
// completion all read the tree, so a new command needs nothing here.

// Annotation keys.
const (
	annKeywords = "keywords" // space-separated trailing keywords
	annArg      = "arg"      // name of the free argument ("ADDRESS")
	annArgHelp  = "arg-help" // its description
	annGroup    = "group"    // set on commands that only hold subcommands
	annOptArg   = "opt-arg"  // name of an optional free argument among subcommands and keywords
)

// keywordHelp describes the trailing keywords.
var keywordHelp = map[string]string{
	"detail":  "Show detailed information",
	"json":    "Machine-readable output (JSON)",
	"packets": "Include every NHRP packet sent and received",

	"received-routes":   "Routes the neighbour sent, refused ones marked",
	"advertised-routes": "Routes sent to the neighbour",
}

// withKeywords annotates a command with the keywords it takes and makes
// cobra accept exactly those, each at most once.
func withKeywords(c *cobra.Command, kws ...string) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[annKeywords] = strings.Join(kws, " ")
	c.Args = func(cmd *cobra.Command, args []string) error {
		seen := map[string]bool{}
		for _, a := range args {
			if !slices.Contains(kws, a) {
				return fmt.Errorf("unknown keyword %q after %q (expected: %s)", a, pathOf(cmd), strings.Join(kws, ", "))
			}
			if seen[a] {
				return fmt.Errorf("%q given twice", a)
			}
			seen[a] = true
		}
		return nil
	}
	return c
}

// withArg annotates a command that takes one free argument.
func withArg(c *cobra.Command, name, help string) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[annArg] = name
	c.Annotations[annArgHelp] = help
	return c
}

// withOptArg annotates a command that takes, beside its subcommands and
// trailing keywords, one optional free argument: a word that is neither
// (`show ip bgp 10.1.0.0/24 json` beside `show ip bgp summary`). cobra
// accepts the keywords and at most one other word, which RunE reads with
// freeArg.
func withOptArg(c *cobra.Command, name, help string, kws ...string) *cobra.Command {
	withKeywords(c, kws...)
	c.Annotations[annOptArg] = name
	c.Annotations[annArgHelp] = help
	c.Args = func(cmd *cobra.Command, args []string) error {
		seen := map[string]bool{}
		free := 0
		for _, a := range args {
			if !slices.Contains(kws, a) {
				if free++; free > 1 {
					return fmt.Errorf("unexpected %q after %q (expected one %s, then: %s)", a, pathOf(cmd), name, strings.Join(kws, ", "))
				}
				continue
			}
			if seen[a] {
				return fmt.Errorf("%q given twice", a)
			}
			seen[a] = true
		}
		return nil
	}
	return c
}

// freeArg returns the free argument of a withOptArg command, or "".
func freeArg(cmd *cobra.Command, args []string) string {
	for _, a := range args {
		if !slices.Contains(keywords(cmd), a) {
			return a
		}
	}
	return ""
}

// optArgWord reports whether w is taken as c's optional free argument:
// c has one, none was given yet, and w names no subcommand or keyword.
func optArgWord(c *cobra.Command, w string, taken int) bool {
	if c.Annotations[annOptArg] == "" || taken > 0 {
		return false
	}
	_, _, err := next(c, w)
	return errors.Is(err, ErrUnknown)
}

// has reports whether a keyword was given.
func has(args []string, kw string) bool { return slices.Contains(args, kw) }

// Item is one possible next word: a command or keyword with its
// description, the free argument (<NAME>), or <cr> (the line may end).
type Item struct {
	Word string
	Help string
}

// children lists the visible subcommands.
func children(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() {
			out = append(out, s)
		}
	}
	return out
}

func keywords(c *cobra.Command) []string {
	if c.Annotations == nil || c.Annotations[annKeywords] == "" {
		return nil
	}
	return strings.Fields(c.Annotations[annKeywords])
}

// ErrAmbiguous and ErrUnknown classify Expand's errors.
var (
	ErrAmbiguous = errors.New("ambiguous command")
	ErrUnknown   = errors.New("unknown command")
)

// next resolves one word at command c: a subcommand (returned) or a
// keyword (returned as its full spelling, with a nil command).
func next(c *cobra.Command, w string) (*cobra.Command, string, error) {
	type cand struct {
		name string
		cmd  *cobra.Command
	}
	var cands []cand
	for _, s := range children(c) {
		cands = append(cands, cand{s.Name(), s})
		for _, a := range s.Aliases {
			cands = append(cands, cand{a, s})
		}
	}
	for _, k := range keywords(c) {
		cands = append(cands, cand{k, nil})
	}
	for _, x := range cands {
		if x.name == w {
			return x.cmd, x.name, nil
		}
	}
	var matches []cand
	var names []string
	for _, x := range cands {
		if strings.HasPrefix(x.name, w) && !slices.ContainsFunc(matches, func(m cand) bool { return m.cmd != nil && m.cmd == x.cmd }) {
			matches = append(matches, x)
			names = append(names, x.name)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0].cmd, matches[0].name, nil
	case 0:
		if !c.HasParent() {
			return nil, "", fmt.Errorf("%w %q", ErrUnknown, w)
		}
		return nil, "", fmt.Errorf("%w %q after %q", ErrUnknown, w, pathOf(c))
	}
	return nil, "", fmt.Errorf("%w %q: could be %s", ErrAmbiguous, w, strings.Join(names, ", "))
}

// Expand replaces unambiguous abbreviations in a command line by the full
// words (`sh ip nh` → `show ip nhrp`); an ambiguous or unknown word is an
// error. Flags and free arguments are left as they are.
func Expand(root *cobra.Command, args []string) ([]string, error) {
	c := root
	out := make([]string, 0, len(args))
	optTaken := 0
	for i := 0; i < len(args); i++ {
		w := args[i]
		if strings.HasPrefix(w, "-") {
			out = append(out, w)
			if f := flagNamed(c, w); f != nil && f.Value.Type() != "bool" && !strings.Contains(w, "=") && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			continue
		}
		if c.Annotations[annArg] != "" {
			out = append(out, args[i:]...)
			break
		}
		if optArgWord(c, w, optTaken) {
			out = append(out, w)
			optTaken++
			continue
		}
		sub, word, err := next(c, w)
		if err != nil {
			return nil, err
		}
		if sub != nil && optTaken > 0 {
			return nil, fmt.Errorf("%w %q after the %s of %q", ErrUnknown, w, c.Annotations[annOptArg], pathOf(c))
		}
		out = append(out, word)
		if sub != nil {
			c = sub
		}
	}
	return out, nil
}

// commandAt walks the expanded words, returning the command reached and
// how many free arguments follow it.
func commandAt(root *cobra.Command, words []string) (*cobra.Command, []string, int, error) {
	c := root
	var used []string
	free := 0
	for i := 0; i < len(words); i++ {
		w := words[i]
		if strings.HasPrefix(w, "-") {
			if f := flagNamed(c, w); f != nil && f.Value.Type() != "bool" && !strings.Contains(w, "=") {
				i++
			}
			continue
		}
		if c.Annotations[annArg] != "" {
			free++
			continue
		}
		if optArgWord(c, w, free) {
			free++
			continue
		}
		sub, word, err := next(c, w)
		if err != nil {
			return nil, nil, 0, err
		}
		if sub != nil {
			c, used, free = sub, nil, 0
		} else {
			used = append(used, word)
		}
	}
	return c, used, free, nil
}

// Candidates lists what may come next after words (complete words) when
// the word being typed starts with partial: subcommands, unused keywords,
// the free argument and <cr> when the command may end there.
func Candidates(root *cobra.Command, words []string, partial string) ([]Item, error) {
	for i, w := range words {
		if isPipeWord(w) {
			rest := words[i+1:]
			if m := strings.TrimPrefix(w, "|"); m != "" {
				rest = append([]string{m}, rest...)
			}
			return pipeCandidates(rest, partial), nil
		}
	}
	c, used, free, err := commandAt(root, words)
	if err != nil {
		return nil, err
	}
	var out []Item
	if arg := c.Annotations[annArg]; arg != "" {
		if free == 0 {
			out = append(out, Item{Word: "<" + arg + ">", Help: c.Annotations[annArgHelp]})
			return out, nil
		}
		if partial == "" {
			out = append(out, Item{Word: "<cr>"})
		}
		return out, nil
	}
	if arg := c.Annotations[annOptArg]; arg != "" && free == 0 && len(used) == 0 {
		out = append(out, Item{Word: "<" + arg + ">", Help: c.Annotations[annArgHelp]})
	}
	for _, s := range children(c) {
		if (c.Annotations[annOptArg] == "" || free == 0 && len(used) == 0) && strings.HasPrefix(s.Name(), partial) {
			out = append(out, Item{Word: s.Name(), Help: s.Short})
		}
	}
	for _, k := range keywords(c) {
		if !slices.Contains(used, k) && strings.HasPrefix(k, partial) {
			out = append(out, Item{Word: k, Help: keywordHelp[k]})
		}
	}
	if c.Runnable() && c != root && c.Annotations[annGroup] == "" {
		if partial == "" {
			out = append(out, Item{Word: "<cr>"})
		}
		if (partial == "" || partial == "|") && strings.HasPrefix(pathOf(c), "show ") {
			out = append(out, Item{Word: "|", Help: "Output modifiers (begin, count, exclude, include)"})
		}
	}
	return out, nil
}

// flagNamed returns the flag a word names ("--socket", "--text=x"), if any.
func flagNamed(c *cobra.Command, w string) *pflag.Flag {
	name := strings.TrimLeft(w, "-")
	name, _, _ = strings.Cut(name, "=")
	for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags(), c.InheritedFlags()} {
		if f := fs.Lookup(name); f != nil {
			return f
		}
		if len(name) == 1 {
			if f := fs.ShorthandLookup(name); f != nil {
				return f
			}
		}
	}
	return nil
}

// HelpText formats candidates as vtysh does for `?`.
func HelpText(items []Item) string {
	width := 0
	for _, it := range items {
		width = max(width, len(it.Word))
	}
	var b strings.Builder
	for _, it := range items {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, it.Word, it.Help)
	}
	return strings.TrimRight(b.String(), " \n")
}

// SplitLine splits the text before the cursor into complete words and
// the word being typed (empty after a space).
func SplitLine(s string) (words []string, partial string) {
	words = strings.Fields(s)
	if len(words) > 0 && !strings.HasSuffix(s, " ") && !strings.HasSuffix(s, "\t") {
		partial = words[len(words)-1]
		words = words[:len(words)-1]
	}
	return words, partial
}

// pathOf is a command's words without the program name ("show ip nhrp").
func pathOf(c *cobra.Command) string {
	p := c.CommandPath()
	if r := c.Root(); r != c {
		p = strings.TrimPrefix(p, r.Name()+" ")
	}
	return p
}
