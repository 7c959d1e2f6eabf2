package vm

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

//go:embed guest/init.sh guest/stage2.sh
var guestScripts embed.FS

// bootModules are the modules the initramfs loads to reach the host's root:
// the virtio PCI transport, 9p over virtio and overlayfs. Their dependencies
// come from modules.dep. Every other module is loaded later by modprobe from
// the host's /lib/modules, which the guest sees through the 9p root.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// busyboxPath is the statically linked busybox (Debian's busybox-static)
// that runs the initramfs.
const busyboxPath = "/bin/busybox"

// busyboxApplets get a symlink in the initramfs's /bin.
var busyboxApplets = []string{
	"sh", "mount", "mkdir", "insmod", "switch_root", "cat", "cp", "ln",
	"echo", "poweroff", "hostname", "sleep",
}

// moduleName normalises a module file or name: no directory, no .ko
// suffix (compressed or not), '-' read as '_' like modprobe does.
func moduleName(s string) string {
	s = filepath.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// resolveModules returns the module files (relative to the module
// directory) to load, dependencies first, for the wanted modules. A wanted
// module built into the kernel (modules.builtin) needs no file; one that is
// neither is an error.
func resolveModules(modDir string, want []string) ([]string, error) {
	deps := map[string][]string{} // name -> [own path, dependency paths...]
	if err := readModulesFile(filepath.Join(modDir, "modules.dep"), func(line string) {
		path, rest, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		deps[moduleName(path)] = append([]string{path}, strings.Fields(rest)...)
	}); err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if err := readModulesFile(filepath.Join(modDir, "modules.builtin"), func(line string) {
		builtin[moduleName(line)] = true
	}); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var add func(name string) error
	add = func(name string) error {
		name = moduleName(name)
		if seen[name] {
			return nil
		}
		seen[name] = true
		d, ok := deps[name]
		if !ok {
			if builtin[name] {
				return nil
			}
			return fmt.Errorf("vm: module %s not found in %s (neither a module nor built in)", name, modDir)
		}
		// modules.dep lists the full closure with the module loaded last
		// first; load in the reverse of that order.
		for _, dep := range slices.Backward(d[1:]) {
			if err := add(dep); err != nil {
				return err
			}
		}
		order = append(order, d[0])
		return nil
	}
	for _, m := range want {
		if err := add(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func readModulesFile(path string, line func(string)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			line(l)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("vm: read %s: %w", path, err)
	}
	return nil
}

// checkStatic makes sure busybox is statically linked: the initramfs has no
// libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("vm: busybox at %s: %w (apt-get install busybox-static)", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("vm: %s is dynamically linked; the initramfs needs busybox-static", path)
		}
	}
	return nil
}

// buildInitramfs writes a gzip-compressed newc cpio archive to out holding
// busybox, the guest scripts and the boot modules (decompressed) of k.
func buildInitramfs(ctx context.Context, k Kernel, busybox string, modules []string, out string) error {
	if err := checkStatic(busybox); err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("vm: read busybox: %w", err)
	}
	initScript, err := guestScripts.ReadFile("guest/init.sh")
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	stage2, err := guestScripts.ReadFile("guest/stage2.sh")
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}

	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	w := newCpioWriter(zw)
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "modules"} {
		w.dir(d)
	}
	// the kernel opens /dev/console for /init before devtmpfs is mounted
	w.charDev("dev/console", 0o600, 5, 1)
	w.file("bin/busybox", 0o755, bb)
	for _, a := range busyboxApplets {
		w.symlink("bin/"+a, "busybox")
	}
	w.file("init", 0o755, initScript)
	w.file("stage2", 0o755, stage2)
	var order strings.Builder
	for _, rel := range modules {
		ko, err := readModule(ctx, filepath.Join(k.Modules, rel))
		if err != nil {
			return err
		}
		name := moduleName(rel) + ".ko"
		w.file("modules/"+name, 0o644, ko)
		order.WriteString(name + "\n")
	}
	w.file("modules/order", 0o644, []byte(order.String()))
	if err := w.close(); err != nil {
		return fmt.Errorf("vm: write initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("vm: write initramfs: %w", err)
	}
	return writeFileAtomic(out, buf.Bytes())
}

// readModule returns the module file's ELF contents, decompressing
// .ko.xz/.ko.zst/.ko.gz so that busybox insmod needs no decompressor.
func readModule(ctx context.Context, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vm: read module: %w", err)
	}
	if strings.HasSuffix(path, ".ko") {
		return b, nil
	}
	var out bytes.Buffer
	if err := decompress(ctx, b, &out); err != nil {
		return nil, fmt.Errorf("vm: decompress module %s: %w", path, err)
	}
	return out.Bytes(), nil
}

// writeFileAtomic writes b to path through a temporary file and a rename,
// so that a concurrent reader sees the old or the new file, never half.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("vm: write %s: %w", path, err)
	}
	return nil
}

// cpioWriter writes the "newc" cpio format the kernel unpacks as initramfs.
// Every entry has uid/gid 0 and mtime 0, so the archive is reproducible.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

func newCpioWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

func (c *cpioWriter) dir(name string) { c.entry(name, cpioDir|0o755, nil, 0, 0) }

func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, cpioFile|perm, data, 0, 0)
}

func (c *cpioWriter) symlink(name, target string) {
	c.entry(name, cpioSymlink|0o777, []byte(target), 0, 0)
}

func (c *cpioWriter) charDev(name string, perm, major, minor uint32) {
	c.entry(name, cpioCharDev|perm, nil, major, minor)
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	ino := c.ino
	c.ino++
	if name == "TRAILER!!!" {
		ino, nlink = 0, 1
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	b.Write(make([]byte, (4-len(data)%4)%4))
	_, c.err = c.w.Write(b.Bytes())
}

// close writes the trailer entry.
func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}
