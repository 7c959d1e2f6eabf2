package ctl

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Shell completion (bash, zsh) outside the interactive shell: the scripts
// cobra generates for dmvpnctl (packaging installs them) run
// `dmvpnctl __complete WORDS… PARTIAL` and read one candidate per line
// ("word<TAB>description") and a last line ":DIRECTIVE". The candidates
// are the interactive shell's own (Candidates): the same tree, keywords
// and abbreviations (`dmvpnctl sh ip nh <TAB>`).

// completeRequest reports whether args ask for completions, and whether
// with descriptions.
func completeRequest(args []string) (ok, withDesc bool) {
	if len(args) == 0 {
		return false, false
	}
	switch args[0] {
	case cobra.ShellCompRequestCmd:
		return true, true
	case cobra.ShellCompNoDescRequestCmd:
		return true, false
	}
	return false, false
}

// complete answers a completion request: args are the words after the
// program name and the request word, the last one the word being typed.
func complete(args []string, out io.Writer, withDesc bool) int {
	root := NewRoot(Options{})
	var words []string
	partial := ""
	if len(args) > 0 {
		words, partial = args[:len(args)-1], args[len(args)-1]
	}
	directive := cobra.ShellCompDirectiveNoFileComp
	emit := func(word, help string) {
		if withDesc && help != "" {
			fmt.Fprintf(out, "%s\t%s\n", word, strings.SplitN(help, "\n", 2)[0])
		} else {
			fmt.Fprintln(out, word)
		}
	}
	if slices.ContainsFunc(words, isPipeWord) {
		items, _ := Candidates(root, words, partial)
		for _, it := range items {
			if !strings.HasPrefix(it.Word, "<") {
				emit(it.Word, it.Help)
			}
		}
		fmt.Fprintf(out, ":%d\n", directive)
		return 0
	}
	c, _, _, err := commandAt(root, words)
	if err != nil {
		fmt.Fprintf(out, ":%d\n", cobra.ShellCompDirectiveError)
		return 0
	}
	if len(words) > 0 {
		if f := flagNamed(c, words[len(words)-1]); f != nil && f.Value.Type() != "bool" && !strings.Contains(words[len(words)-1], "=") {
			// The value of a flag: --socket takes a path.
			fmt.Fprintf(out, ":%d\n", cobra.ShellCompDirectiveDefault)
			return 0
		}
	}
	if strings.HasPrefix(partial, "-") {
		seen := map[string]bool{}
		for _, fs := range []*pflag.FlagSet{c.Flags(), c.InheritedFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if !f.Hidden && !seen[f.Name] && strings.HasPrefix("--"+f.Name, partial) {
					seen[f.Name] = true
					emit("--"+f.Name, f.Usage)
				}
			})
		}
		fmt.Fprintf(out, ":%d\n", directive)
		return 0
	}
	items, err := Candidates(root, words, partial)
	if err != nil {
		fmt.Fprintf(out, ":%d\n", cobra.ShellCompDirectiveError)
		return 0
	}
	for _, it := range items {
		switch {
		case it.Word == "<cr>":
		case strings.HasPrefix(it.Word, "<"):
			// The free argument (a file, an address): let the shell
			// complete file names.
			directive = cobra.ShellCompDirectiveDefault
		default:
			emit(it.Word, it.Help)
		}
	}
	fmt.Fprintf(out, ":%d\n", directive)
	return 0
}
