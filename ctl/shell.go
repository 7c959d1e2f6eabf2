package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/reeflective/console"
	"github.com/reeflective/readline"
	"github.com/spf13/cobra"

	"github.com/opendmvpn/dmvpn/daemon/control"
)

// Shell runs the interactive shell against the daemon at socket: on a
// terminal, with a prompt naming the node, history, tab completion, `?`
// help and abbreviations; otherwise it runs the lines of stdin as
// commands. It returns the exit status.
func Shell(ctx context.Context, socket string, stdin io.Reader, stdout, stderr io.Writer, exit func()) int {
	return ShellWith(ctx, Options{Socket: socket}, stdin, stdout, stderr, exit)
}

// ShellWith is Shell with every option (the API on TCP: Remote).
func ShellWith(ctx context.Context, opts Options, stdin io.Reader, stdout, stderr io.Writer, exit func()) int {
	if opts.Socket == "" {
		opts.Socket = NewRoot(Options{}).PersistentFlags().Lookup("socket").DefValue
	}
	c := control.NewClient(opts.Socket)
	if opts.Remote.Server != "" {
		var err error
		if c, err = opts.Remote.client(); err != nil {
			printError(stderr, err)
			return 1
		}
	}
	var st control.Status
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := c.Get(cctx, control.PathStatus, &st)
	cancel()
	var api *control.APIError
	if err != nil && !errors.As(err, &api) {
		printError(stderr, err)
		return 1
	}
	node := st.Node
	if node == "" {
		node = "dmvpn"
	}
	if f, ok := stdin.(*os.File); ok && isTerminal(f) {
		return interactive(ctx, opts, node, exit)
	}
	return lines(ctx, opts, stdin, stdout, stderr)
}

// lines runs each line of r as a command (vtysh -c style scripting).
func lines(ctx context.Context, opts Options, r io.Reader, stdout, stderr io.Writer) int {
	status := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "!") {
			continue
		}
		if line == "exit" || line == "quit" {
			break
		}
		if err := runLine(ctx, Options{Socket: opts.Socket, Remote: opts.Remote}, strings.Fields(line), stdout, stderr); err != nil {
			printError(stderr, err)
			status = 1
		}
	}
	return status
}

// runLine runs one command line with a fresh command tree.
func runLine(ctx context.Context, opts Options, args []string, stdout, stderr io.Writer) error {
	cmdArgs, p, err := splitPipe(args)
	if err != nil {
		return err
	}
	return runPiped(ctx, NewRoot(opts), cmdArgs, p, stdout, stderr)
}

// interactive runs the readline shell until exit, quit or Ctrl-D.
func interactive(ctx context.Context, o Options, node string, exit func()) int {
	if exit == nil {
		exit = func() { os.Exit(0) }
	}
	app := console.New("dmvpnctl")
	sh := app.Shell()
	sh.SyntaxHighlighter = nil
	sh.Config.Set("history-autosuggest", false)
	sh.Config.Set("autopairs", false)
	menu := app.ActiveMenu()
	// An output modifier: the line hook takes it off the line and points
	// the command's output through it; the post-run hook (or the error
	// handler, when the command failed) closes it.
	var pw *pipeWriter
	endPipe := func() {
		if pw != nil {
			_ = pw.Close()
			pw = nil
		}
	}
	opts := Options{Socket: o.Socket, Remote: o.Remote, Interactive: true, Exit: exit}
	menu.SetCommands(func() *cobra.Command {
		root := NewRoot(opts)
		root.SetOut(os.Stdout)
		root.SetErr(os.Stderr)
		return root
	})
	menu.Prompt().Primary = func() string { return node + "# " }
	if home, err := os.UserHomeDir(); err == nil {
		menu.AddHistorySourceFile("history", filepath.Join(home, ".dmvpnctl_history"))
	}
	menu.ErrorHandler = func(err error) error {
		endPipe()
		// The console wraps errors with its phase ("Line error: …").
		if u := errors.Unwrap(err); u != nil {
			err = u
		}
		printError(os.Stderr, err)
		return nil
	}
	menu.AddInterrupt(io.EOF, func(*console.Console) {
		fmt.Println()
		exit()
	})
	app.PreCmdRunLineHooks = append(app.PreCmdRunLineHooks, func(args []string) ([]string, error) {
		endPipe()
		cmdArgs, p, err := splitPipe(args)
		if err != nil {
			return nil, err
		}
		expanded, err := Expand(menu.Command, cmdArgs)
		if err != nil || p == nil {
			return expanded, err
		}
		if err := requireShow(menu.Command, expanded); err != nil {
			return nil, err
		}
		pw = newPipeWriter(p, os.Stdout)
		menu.Command.SetOut(pw)
		return expanded, nil
	})
	app.PostCmdRunHooks = append(app.PostCmdRunHooks, func() error {
		endPipe()
		return nil
	})
	sh.Completer = func(line []rune, cursor int) readline.Completions {
		words, partial := SplitLine(string(line[:cursor]))
		items, err := Candidates(menu.Command, words, partial)
		if err != nil {
			return readline.CompleteMessage("%s", err.Error())
		}
		var vals []readline.Completion
		for _, it := range items {
			if strings.HasPrefix(it.Word, "<") {
				continue
			}
			vals = append(vals, readline.Completion{Value: it.Word + " ", Display: it.Word, Description: it.Help})
		}
		comps := readline.CompleteRaw(vals)
		comps.PREFIX = partial
		return comps
	}
	sh.Keymap.Register(map[string]func(){"dmvpn-help": func() {
		text := string(*sh.Line())
		if pos := sh.Cursor().Pos(); pos <= len([]rune(text)) {
			text = string([]rune(text)[:pos])
		}
		words, partial := SplitLine(text)
		items, err := Candidates(menu.Command, words, partial)
		var out string
		switch {
		case err != nil:
			out = "% " + err.Error()
		case len(items) == 0:
			out = "% There is no matched command."
		default:
			out = HelpText(items)
		}
		_, _ = os.Stdout.WriteString("?")
		_, _ = sh.Printf("%s", out)
	}})
	for _, km := range []string{"emacs", "emacs-standard", "vi-insert"} {
		_ = sh.Config.Bind(km, "?", "dmvpn-help", false)
	}
	if err := app.StartContext(ctx); err != nil {
		printError(os.Stderr, err)
		return 1
	}
	return 0
}
