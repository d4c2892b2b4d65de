package e2e

// The real-node test's images, made here because no registry is reachable:
// each is an OCI image layout (one uncompressed layer, its config, a
// manifest and an index) packed as a tar that `ctr images import` loads.

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strings"
)

// imageFile is one regular file of a layer, at its absolute path in the
// image; a link is a symlink to another path.
type imageFile struct {
	name string
	mode int64
	data []byte
	link string
}

// imageConfig is what the container starts with, as an image's config
// says it.
type imageConfig struct {
	Entrypoint []string `json:",omitempty"`
	Cmd        []string `json:",omitempty"`
	Env        []string `json:",omitempty"`
	User       string   `json:",omitempty"`
}

// writeImage writes the OCI layout tar of one image to file, named ref
// (the full name the CRI looks up: docker.io/local/x:tag).
func writeImage(file, ref string, files []imageFile, cfg imageConfig) error {
	layer, err := layerTar(files)
	if err != nil {
		return err
	}
	blobs := map[string][]byte{}
	blob := func(mediaType string, data []byte) map[string]any {
		sum := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = data
		return map[string]any{"mediaType": mediaType, "digest": d, "size": len(data)}
	}
	layerDesc := blob("application/vnd.oci.image.layer.v1.tar", layer)
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux", "config": cfg,
		"rootfs": map[string]any{"type": "layers", "diff_ids": []any{layerDesc["digest"]}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": blob("application/vnd.oci.image.config.v1+json", config),
		"layers": []any{layerDesc},
	})
	manifestDesc := blob("application/vnd.oci.image.manifest.v1+json", manifest)
	manifestDesc["platform"] = map[string]string{"architecture": "amd64", "os": "linux"}
	manifestDesc["annotations"] = map[string]string{"io.containerd.image.name": ref}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []any{manifestDesc}})

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	add := func(name string, data []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	add("index.json", index)
	for _, d := range slices.Sorted(maps.Keys(blobs)) {
		add("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d])
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(file, out.Bytes(), 0o600)
}

// layerTar is a layer of files, with every parent directory before them.
func layerTar(files []imageFile) ([]byte, error) {
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	dirs := map[string]bool{}
	var mkdir func(dir string) error
	mkdir = func(dir string) error {
		if dir == "/" || dirs[dir] {
			return nil
		}
		if err := mkdir(path.Dir(dir)); err != nil {
			return err
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(dir, "/") + "/", Mode: 0o755, Typeflag: tar.TypeDir})
	}
	for _, f := range files {
		if err := mkdir(path.Dir(f.name)); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: strings.TrimPrefix(f.name, "/"), Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}
		if f.link != "" {
			h = &tar.Header{Name: h.Name, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: f.link}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if f.link == "" {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	err := tw.Close()
	return out.Bytes(), err
}

// hostFile is a file of this machine at the same path in the image,
// symlinks resolved.
func hostFile(name string, mode int64) (imageFile, error) {
	data, err := os.ReadFile(name)
	return imageFile{name: name, mode: mode, data: data}, err
}

// redisImageFiles is Debian's redis-server and the shared libraries it is
// linked with, at the paths the dynamic loader looks in: a Redis image
// like the stock one, as far as the manager can tell. redis-check-rdb is
// the same binary under the name restore checks backups with.
func redisImageFiles() ([]imageFile, error) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, err
	}
	bin, err := hostFile(server, 0o755)
	if err != nil {
		return nil, err
	}
	bin.name = "/usr/local/bin/redis-server"
	files := []imageFile{bin, {name: "/usr/local/bin/redis-check-rdb", link: "redis-server"}}
	ldd, err := exec.Command("ldd", server).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", server, err)
	}
	for _, lib := range regexp.MustCompile(`(?m)(/\S+\.so[.\d]*) \(`).FindAllStringSubmatch(string(ldd), -1) {
		f, err := hostFile(lib[1], 0o755)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// staticFile is a binary built here, at name in the image.
func staticFile(name, built string) (imageFile, error) {
	data, err := os.ReadFile(built)
	return imageFile{name: name, mode: 0o755, data: data}, err
}

// buildStatic builds a static binary of the package in dir, with the
// shipped image's flags, into out.
func buildStatic(dir, pkg, out string, ldflags string) error {
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w "+ldflags, "-o", out, pkg)
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if output, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, output)
	}
	return nil
}
