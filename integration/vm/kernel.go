package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// KernelEnv names the environment variable that selects the kernel version
// when several are installed. Unset, the newest installed one is used.
const KernelEnv = "DMVPN_VM_KERNEL"

// Kernel is an installed Linux kernel the VM can boot: its compressed image
// and its modules, which the guest loads from the host's /lib/modules.
type Kernel struct {
	// Version is the kernel release, as `uname -r` prints it in the guest.
	Version string
	// Image is the compressed boot image (bzImage), /boot/vmlinuz-<Version>.
	Image string
	// Modules is the module directory, /lib/modules/<Version>.
	Modules string
}

// FindKernel picks the kernel to boot from what is installed: every
// /boot/vmlinuz-<version> that has a matching /lib/modules/<version>/modules.dep
// is a candidate, and the newest version wins unless KernelEnv names one.
func FindKernel() (Kernel, error) {
	return findKernel("/", os.Getenv(KernelEnv))
}

func findKernel(root, want string) (Kernel, error) {
	images, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return Kernel{}, fmt.Errorf("vm: list kernels: %w", err)
	}
	var found []Kernel
	for _, img := range images {
		ver := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		mods := filepath.Join(root, "lib", "modules", ver)
		if _, err := os.Stat(filepath.Join(mods, "modules.dep")); err != nil {
			continue
		}
		found = append(found, Kernel{Version: ver, Image: img, Modules: mods})
	}
	if want != "" {
		for _, k := range found {
			if k.Version == want {
				return k, nil
			}
		}
		return Kernel{}, fmt.Errorf("vm: %s=%s: no /boot/vmlinuz-%[2]s with /lib/modules/%[2]s installed", KernelEnv, want)
	}
	if len(found) == 0 {
		return Kernel{}, errors.New("vm: no kernel installed: need /boot/vmlinuz-<version> and /lib/modules/<version> (apt-get install linux-image-amd64)")
	}
	sort.Slice(found, func(i, j int) bool { return compareVersions(found[i].Version, found[j].Version) < 0 })
	return found[len(found)-1], nil
}

// compareVersions orders kernel releases: runs of digits compare as numbers,
// everything else byte-wise, so 6.1.0-56-amd64 sorts after 6.1.0-9-amd64.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ra, resta := versionRun(a)
		rb, restb := versionRun(b)
		na, errA := strconv.ParseUint(ra, 10, 64)
		nb, errB := strconv.ParseUint(rb, 10, 64)
		switch {
		case errA == nil && errB == nil:
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
		case ra != rb:
			return strings.Compare(ra, rb)
		}
		a, b = resta, restb
	}
	return strings.Compare(a, b)
}

// versionRun splits off the leading run of digits or of non-digits.
func versionRun(s string) (run, rest string) {
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	d := digit(s[0])
	i := 1
	for i < len(s) && digit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

// extractVmlinux writes the ELF kernel held compressed in the bzImage at
// image to out. QEMU boots such an ELF through its PVH entry point, which
// skips the in-guest decompression (about 2 s under TCG for an xz kernel).
func extractVmlinux(ctx context.Context, image, out string) error {
	payload, err := bzImagePayload(image)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".vmlinux-*")
	if err != nil {
		return fmt.Errorf("vm: extract kernel: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = decompress(ctx, payload, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vm: extract kernel from %s: %w", image, err)
	}
	if err := checkPVH(tmp.Name()); err != nil {
		return fmt.Errorf("vm: kernel from %s: %w", image, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("vm: extract kernel: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("vm: extract kernel: %w", err)
	}
	return nil
}

// bzImagePayload returns the compressed kernel of an x86 bzImage, located
// through the boot protocol header (payload_offset/payload_length, 2.08+).
func bzImagePayload(image string) ([]byte, error) {
	b, err := os.ReadFile(image)
	if err != nil {
		return nil, fmt.Errorf("vm: read kernel image: %w", err)
	}
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("vm: %s is not an x86 bzImage", image)
	}
	if proto := binary.LittleEndian.Uint16(b[0x206:]); proto < 0x0208 {
		return nil, fmt.Errorf("vm: %s: boot protocol %#x has no payload fields", image, proto)
	}
	setupSects := int(b[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(b[0x248:]))
	n := int(binary.LittleEndian.Uint32(b[0x24c:]))
	if n <= 0 || off < 0 || off+n > len(b) {
		return nil, fmt.Errorf("vm: %s: payload %d+%d outside the file (%d bytes)", image, off, n, len(b))
	}
	return b[off : off+n], nil
}

// decompress writes the decompressed payload to w. gzip is read in Go; xz
// and zstd (not in the standard library) go through their command-line tools.
func decompress(ctx context.Context, payload []byte, w io.Writer) error {
	var tool []string
	switch {
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		zr.Multistream(false)
		if _, err := io.Copy(w, zr); err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		return nil
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		// the kernel's build appends the uncompressed size after the stream
		tool = []string{"xz", "-dc", "--single-stream"}
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		tool = []string{"zstd", "-dcq"}
	default:
		return fmt.Errorf("unknown compression (magic % x)", payload[:min(len(payload), 6)])
	}
	cmd := exec.CommandContext(ctx, tool[0], tool[1:]...)
	cmd.Stdin = bytes.NewReader(payload)
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", tool[0], err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// checkPVH verifies that path is an x86-64 ELF kernel carrying the Xen
// PHYS32_ENTRY note (CONFIG_PVH), without which QEMU cannot boot it directly.
func checkPVH(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("not an ELF kernel: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF machine %v, want x86-64", f.Machine)
	}
	const xenElfnotePhys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Errorf("read ELF notes: %w", err)
		}
		for len(notes) >= 12 {
			nameSz := int(binary.LittleEndian.Uint32(notes[0:]))
			descSz := int(binary.LittleEndian.Uint32(notes[4:]))
			typ := binary.LittleEndian.Uint32(notes[8:])
			nameEnd := 12 + nameSz
			next := 12 + align4(nameSz) + align4(descSz)
			if nameEnd > len(notes) || next > len(notes) || next <= 0 {
				break
			}
			if string(bytes.TrimRight(notes[12:nameEnd], "\x00")) == "Xen" && typ == xenElfnotePhys32Entry {
				return nil
			}
			notes = notes[next:]
		}
	}
	return errors.New("no PVH entry note (kernel built without CONFIG_PVH)")
}

func align4(n int) int { return (n + 3) &^ 3 }
