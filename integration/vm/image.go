package vm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// CacheEnv names the environment variable that overrides the cache
// directory (default: build/vm in the repository).
const CacheEnv = "DMVPN_VM_CACHE"

// modulePath is this repository's module, used to find its root.
const modulePath = "github.com/opendmvpn/dmvpn"

// imageFormat changes whenever the way the image is built changes in a way
// its inputs do not show, so that caches built by older code are rebuilt.
const imageFormat = "dmvpn-vm image 1"

// Image is a bootable VM image for one kernel: the extracted ELF kernel and
// the initramfs, both in the cache directory.
type Image struct {
	// Kernel is the kernel the image boots.
	Kernel Kernel
	// Vmlinux is the decompressed ELF kernel, booted through PVH.
	Vmlinux string
	// Initramfs is the gzip-compressed cpio archive run as /init.
	Initramfs string
}

// CacheDir returns the directory that holds prepared images: $DMVPN_VM_CACHE
// if set, else build/vm under the repository root (RepoRoot).
func CacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%w; or set %s", err, CacheEnv)
	}
	return filepath.Join(root, "build", "vm"), nil
}

// RepoRoot returns the repository's root: the first directory, from the
// working directory up, whose go.mod declares this module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("vm: %w", err)
	}
	for {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("vm: no go.mod of %s above the working directory", modulePath)
		}
		dir = parent
	}
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == modulePath
		}
	}
	return false
}

// Prepare returns the image for kernel k, building it under
// cacheDir/<k.Version>/ when it is missing or its inputs changed: the
// kernel image, busybox, the boot modules and the guest scripts are hashed,
// and the hash is stored next to each output. Images of other kernel
// versions in cacheDir are removed. Concurrent callers, in this process or
// others, serialise on a lock file in cacheDir.
func Prepare(ctx context.Context, cacheDir string, k Kernel) (*Image, error) {
	return prepare(ctx, cacheDir, k, busyboxPath)
}

func prepare(ctx context.Context, cacheDir string, k Kernel, busybox string) (*Image, error) {
	dir := filepath.Join(cacheDir, k.Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	unlock, err := lockDir(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	img := &Image{
		Kernel:    k,
		Vmlinux:   filepath.Join(dir, "vmlinux"),
		Initramfs: filepath.Join(dir, "initramfs.cpio.gz"),
	}
	kernelKey, err := hashInputs(nil, k.Image)
	if err != nil {
		return nil, err
	}
	if err := ensure(img.Vmlinux, kernelKey, func() error {
		return extractVmlinux(ctx, k.Image, img.Vmlinux)
	}); err != nil {
		return nil, err
	}

	modules, err := resolveModules(k.Modules, bootModules)
	if err != nil {
		return nil, err
	}
	var scripts []string
	for _, name := range []string{"guest/init.sh", "guest/stage2.sh"} {
		b, err := guestScripts.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
		scripts = append(scripts, string(b))
	}
	files := []string{busybox}
	for _, m := range modules {
		files = append(files, filepath.Join(k.Modules, m))
	}
	initrdKey, err := hashInputs(append(scripts, k.Version, strings.Join(busyboxApplets, " ")), files...)
	if err != nil {
		return nil, err
	}
	if err := ensure(img.Initramfs, initrdKey, func() error {
		return buildInitramfs(ctx, k, busybox, modules, img.Initramfs)
	}); err != nil {
		return nil, err
	}

	// drop the images of kernels no longer in use (the vmlinux is ~65 MB);
	// only directories holding one of our stamps are taken for images
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	for _, e := range entries {
		stamp := filepath.Join(cacheDir, e.Name(), "vmlinux.key")
		if _, err := os.Stat(stamp); err == nil && e.IsDir() && e.Name() != k.Version {
			if err := os.RemoveAll(filepath.Join(cacheDir, e.Name())); err != nil {
				return nil, fmt.Errorf("vm: remove stale image: %w", err)
			}
		}
	}
	return img, nil
}

// hashInputs hashes the image format, the given strings and the contents
// of the given files.
func hashInputs(strs []string, files ...string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", imageFormat)
	for _, s := range strs {
		fmt.Fprintf(h, "%d:%s\x00", len(s), s)
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return "", fmt.Errorf("vm: hash inputs: %w", err)
		}
		fmt.Fprintf(h, "%s\x00", name)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("vm: hash %s: %w", name, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ensure runs build unless out exists and out.key holds key, then records
// key. A failed build leaves no key, so the next call retries.
func ensure(out, key string, build func() error) error {
	stamp := out + ".key"
	if old, err := os.ReadFile(stamp); err == nil && string(old) == key {
		if _, err := os.Stat(out); err == nil {
			return nil
		}
	}
	if err := os.Remove(stamp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vm: %w", err)
	}
	if err := build(); err != nil {
		return err
	}
	return writeFileAtomic(stamp, []byte(key))
}

// lockDir takes an exclusive flock on dir/.lock until unlock is called.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vm: lock cache: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vm: lock cache: %w", err)
	}
	return func() { f.Close() }, nil
}
