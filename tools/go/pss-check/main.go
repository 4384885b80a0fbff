// Command pss-check checks Kubernetes manifests against a Pod Security Standard offline, with the policy code of the
// API server's PodSecurity admission (k8s.io/pod-security-admission): what `kubectl apply` to a namespace labelled
// pod-security.kubernetes.io/enforce=restricted would refuse, without a cluster. --kube-version evaluates the policy
// as an API server of that minor does (its "latest"); the chart tests pass the test cluster's.
//
//	pss-check [--level=restricted|baseline] [--kube-version=v1.<minor>] FILE|- ...
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	psadmission "k8s.io/pod-security-admission/admission"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

func main() {
	os.Exit(pssCheck(os.Args[1:]))
}

// pssCheck evaluates every workload in the given manifest files (or stdin with "-") against a Pod Security
// Standard level with the same policy package the API server's PodSecurity admission uses, offline. It prints
// one line per violation and returns 1 if any workload violates the level.
func pssCheck(args []string) int {
	flags := flag.NewFlagSet("pss-check", flag.ContinueOnError)
	levelName := flags.String("level", "restricted", "the Pod Security Standard: restricted or baseline")
	kubeVersion := flags.String("kube-version", "latest", "evaluate as an API server of this minor (v1.<minor>)")
	if err := flags.Parse(args); err != nil || flags.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: pss-check [--level=restricted|baseline] [--kube-version=v1.<minor>] FILE|- ...")
		return 2
	}
	level, err := psapi.ParseLevel(*levelName)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	emulated, err := psapi.ParseVersion(*kubeVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), &emulated)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lv := psapi.LevelVersion{Level: level, Version: psapi.LatestVersion()}
	decoder := scheme.Codecs.UniversalDeserializer()
	violations, checked := 0, 0
	for _, path := range flags.Args() {
		in := io.Reader(os.Stdin)
		if path != "-" {
			file, err := os.Open(path)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			defer file.Close()
			in = file
		}
		reader := yaml.NewYAMLReader(bufio.NewReader(in))
		for {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
				return 2
			}
			obj, gvk, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				continue // not a built-in kind (CRDs, empty documents): no pod spec to check
			}
			meta, spec, err := psadmission.DefaultPodSpecExtractor{}.ExtractPodSpec(obj)
			if err != nil || spec == nil {
				continue
			}
			name := meta.Name
			if object, err := apimeta.Accessor(obj); err == nil {
				name = object.GetName()
			}
			checked++
			result := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, meta, spec))
			if !result.Allowed {
				violations++
				fmt.Printf("%s %s: violates PodSecurity %q: %s\n", gvk.Kind, name, lv.String(), result.ForbiddenDetail())
			}
		}
	}
	fmt.Printf("%d workload(s) checked against %q, %d violation(s)\n", checked, lv.String(), violations)
	if violations > 0 {
		return 1
	}
	return 0
}
