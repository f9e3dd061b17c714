// Command deploy-render prints what deploy/ describes the way the tools that consume it
// read it, so the test command can validate the result without a cluster or a
// container engine (neither runs on the build machines):
//
//	deploy-render kustomize DIR   the manifests `kustomize build DIR` prints (krusty,
//	                              the library inside kustomize and kubectl), as YAML
//	deploy-render compose FILE    the project `docker compose config` prints (compose-go,
//	                              the loader inside docker compose): schema, merge keys,
//	                              interpolation and references checked, as YAML
//
// Errors (an invalid kustomization, a compose file compose-go refuses) go to stderr with
// exit status 1. Versions are pinned in go.mod.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	if len(os.Args) != 3 {
		fail(fmt.Errorf("usage: deploy-render kustomize DIR | compose FILE"))
	}
	var out []byte
	var err error
	switch os.Args[1] {
	case "kustomize":
		out, err = kustomize(os.Args[2])
	case "compose":
		out, err = compose(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func kustomize(dir string) ([]byte, error) {
	options := krusty.MakeDefaultOptions()
	resources, err := krusty.MakeKustomizer(options).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	return resources.AsYaml()
}

func compose(file string) ([]byte, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	options, err := cli.NewProjectOptions(
		[]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithOsEnv,
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return nil, err
	}
	return project.MarshalYAML()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "deploy-render:", err)
	os.Exit(1)
}
