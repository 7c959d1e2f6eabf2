package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// writeFiles creates files (path → content) under root.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindKernel(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"boot/vmlinuz-6.1.0-9-amd64":                  "",
		"lib/modules/6.1.0-9-amd64/modules.dep":       "",
		"boot/vmlinuz-6.1.0-56-amd64":                 "",
		"lib/modules/6.1.0-56-amd64/modules.dep":      "",
		"boot/vmlinuz-6.12.0-1-amd64":                 "", // no modules: not bootable here
		"boot/vmlinuz-6.1.0-56-amd64.old-dkms":        "",
		"lib/modules/6.1.0-56-amd64.old-dkms/foo.txt": "", // no modules.dep
	})
	for _, tc := range []struct{ want, ver string }{
		{"", "6.1.0-56-amd64"},
		{"6.1.0-9-amd64", "6.1.0-9-amd64"},
	} {
		k, err := findKernel(root, tc.want)
		if err != nil {
			t.Fatalf("findKernel(%q): %v", tc.want, err)
		}
		want := Kernel{
			Version: tc.ver,
			Image:   filepath.Join(root, "boot", "vmlinuz-"+tc.ver),
			Modules: filepath.Join(root, "lib", "modules", tc.ver),
		}
		if diff := cmp.Diff(want, k); diff != "" {
			t.Errorf("findKernel(%q) (-want +got):\n%s", tc.want, diff)
		}
	}
	if _, err := findKernel(root, "6.12.0-1-amd64"); err == nil {
		t.Error("findKernel accepted a kernel without modules")
	}
	if _, err := findKernel(t.TempDir(), ""); err == nil {
		t.Error("findKernel found a kernel in an empty tree")
	}
}

func TestCompareVersions(t *testing.T) {
	ordered := []string{"5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64", "6.1.0-56-amd64b", "6.12.1-1-amd64"}
	for i := range ordered {
		for j := range ordered {
			got := compareVersions(ordered[i], ordered[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got != want {
				t.Errorf("compareVersions(%q, %q) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"modules.dep": strings.Join([]string{
			"kernel/fs/netfs/netfs.ko:",
			"kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko",
			"kernel/net/9p/9pnet.ko:",
			"kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko",
			"kernel/drivers/virtio/virtio_ring.ko:",
			"kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko",
			"kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
		}, "\n"),
		"modules.builtin": "kernel/fs/overlayfs/overlay.ko\n",
	})
	got, err := resolveModules(dir, []string{"9p", "9pnet-virtio", "overlay"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko", "kernel/net/9p/9pnet.ko", "kernel/fs/9p/9p.ko",
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/net/9p/9pnet_virtio.ko.xz",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("resolveModules (-want +got):\n%s", diff)
	}
	if _, err := resolveModules(dir, []string{"virtio_pci"}); err == nil {
		t.Error("resolveModules accepted a module that is neither a file nor built in")
	}
}

type cpioEntry struct {
	Name        string
	Mode        uint32
	Data        string
	Major, Minr uint32
}

// readCpio parses a newc archive independently of cpioWriter.
func readCpio(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	pad := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad cpio header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("bad cpio field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, major, minor, nameSize := field(1), int(field(6)), field(9), field(10), int(field(11))
		name := string(b[off+110 : off+110+nameSize-1])
		dataOff := pad(off + 110 + nameSize)
		if name == "TRAILER!!!" {
			if rest := b[dataOff:]; len(bytes.Trim(rest, "\x00")) != 0 {
				t.Fatalf("%d bytes after the trailer", len(rest))
			}
			return out
		}
		out = append(out, cpioEntry{name, mode, string(b[dataOff : dataOff+size]), major, minor})
		off = pad(dataOff + size)
	}
}

func TestCpioWriter(t *testing.T) {
	var buf bytes.Buffer
	w := newCpioWriter(&buf)
	w.dir("bin")
	w.file("bin/busybox", 0o755, []byte("12345"))
	w.symlink("bin/sh", "busybox")
	w.charDev("dev/console", 0o600, 5, 1)
	w.file("empty", 0o644, nil)
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	want := []cpioEntry{
		{"bin", 0o040755, "", 0, 0},
		{"bin/busybox", 0o100755, "12345", 0, 0},
		{"bin/sh", 0o120777, "busybox", 0, 0},
		{"dev/console", 0o020600, "", 5, 1},
		{"empty", 0o100644, "", 0, 0},
	}
	if diff := cmp.Diff(want, readCpio(t, buf.Bytes())); diff != "" {
		t.Errorf("archive (-want +got):\n%s", diff)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
}

// TestJobScript runs the generated script with the host's sh, from
// another directory, and checks that it enters the directory and executes
// the command with exactly the given environment and arguments.
func TestJobScript(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "it's a dir")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "ODD=a 'b' \"c\" $HOME `x`\nline2"}
	argv := []string{"sh", "-c", `pwd; printf '[%s]\n' "$ODD" "${HOME-unset}" "$@"`, "zero", "one two", "thr'ee", ""}
	script, err := jobScript([]string{"env"}, dir, env, argv)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v\n%s\nscript:\n%s", err, out, script)
	}
	want := dir + "\n[a 'b' \"c\" $HOME `x`\nline2]\n[unset]\n[one two]\n[thr'ee]\n[]\n"
	if diff := cmp.Diff(want, string(out)); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
	if _, err := jobScript([]string{"env"}, dir, env, []string{"A=B", "x"}); err == nil {
		t.Error("jobScript accepted a command that env would take for a variable")
	}
}

func TestNewMAC(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		m := NewMAC()
		if len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("NewMAC() = %s: want a locally administered unicast address", m)
		}
		if seen[m.String()] {
			t.Fatalf("NewMAC() returned %s twice", m)
		}
		seen[m.String()] = true
	}
}

// TestBzImagePayload builds a bzImage-shaped file around a gzip payload
// and checks that the ELF inside comes out through the header fields.
func TestBzImagePayload(t *testing.T) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	fmt.Fprint(zw, "pretend ELF")
	zw.Close()
	img := make([]byte, 0x1000)
	img[0x1f1] = 3 // setup sectors: protected-mode code at (3+1)*512
	copy(img[0x202:], "HdrS")
	img[0x206], img[0x207] = 0x0f, 0x02 // boot protocol 2.15
	putLE32 := func(off, v int) {
		img[off], img[off+1], img[off+2], img[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	putLE32(0x248, 0x100)   // payload_offset
	putLE32(0x24c, z.Len()) // payload_length
	copy(img[4*512+0x100:], z.Bytes())
	path := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	payload, err := bzImagePayload(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := decompress(t.Context(), payload, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "pretend ELF" {
		t.Errorf("payload = %q", got)
	}
	if err := checkPVH(path); err == nil {
		t.Error("checkPVH accepted a file that is no ELF")
	}
	copy(img[0x202:], "XXXX")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bzImagePayload(path); err == nil {
		t.Error("bzImagePayload accepted a file without the HdrS magic")
	}
}

// TestPrepareCache builds an image from the installed kernel into a fresh
// cache and checks what is rebuilt when: nothing on a second call, the
// initramfs alone when busybox changes, and images of other kernel
// versions are removed.
func TestPrepareCache(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: `make test` installs the kernel only as root")
	}
	k, err := FindKernel()
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	stale := filepath.Join(cache, "0.0.1-old")
	writeFiles(t, cache, map[string]string{
		"0.0.1-old/vmlinux.key": "x",
		"notanimage/keep":       "",
	})
	bb := filepath.Join(t.TempDir(), "busybox")
	copyFile(t, busyboxPath, bb)

	img, err := prepare(t.Context(), cache, k, bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPVH(img.Vmlinux); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale image %s not removed (%v)", stale, err)
	}
	if _, err := os.Stat(filepath.Join(cache, "notanimage", "keep")); err != nil {
		t.Errorf("a directory that is not an image was touched: %v", err)
	}
	ids := func() [2]string { return [2]string{fileID(t, img.Vmlinux), fileID(t, img.Initramfs)} }
	first := ids()

	if _, err := prepare(t.Context(), cache, k, bb); err != nil {
		t.Fatal(err)
	}
	if second := ids(); second != first {
		t.Errorf("second prepare with the same inputs rebuilt: %v -> %v", first, second)
	}

	f, err := os.OpenFile(bb, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("changed"))
	f.Close()
	if _, err := prepare(t.Context(), cache, k, bb); err != nil {
		t.Fatal(err)
	}
	third := ids()
	if third[0] != first[0] {
		t.Error("the kernel was re-extracted although the kernel image did not change")
	}
	if third[1] == first[1] {
		t.Error("the initramfs was not rebuilt after busybox changed")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// fileID identifies one version of a file: a rebuild renames a new file
// over it, which changes the inode.
func fileID(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("ino %d mtime %d", st.Ino, fi.ModTime().UnixNano())
}

// TestReserve: VM slots are taken one or several at once and given back;
// no more than the machine's number run at once.
func TestReserve(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir()) // slots of our own
	t.Setenv(SlotsEnv, "2")
	ctx := context.Background()
	r1, err := Reserve(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	if _, err := Reserve(short(), 2); err == nil {
		t.Fatal("two slots reserved while one of two is taken")
	}
	r2, err := Reserve(short(), 1)
	if err != nil {
		t.Fatalf("the second slot: %v", err)
	}
	if _, err := Reserve(short(), 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third slot of two: %v, want a deadline error", err)
	}
	r1()
	r2()
	r, err := Reserve(short(), 2)
	if err != nil {
		t.Fatalf("both slots once free: %v", err)
	}
	r()
	if _, err := Reserve(ctx, 3); err == nil {
		t.Fatal("three of two slots reserved")
	}
}
