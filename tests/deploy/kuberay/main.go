// Command kuberaycheck decodes clstream's KubeRay manifests into KubeRay's own ray.io/v1 Go types,
// refusing unknown fields, and checks what the deployment relies on: a GPU worker group the
// in-tree autoscaler may grow, the Kafka secret in every pod's environment, and a RayJob that runs
// on that cluster. tests/integration/test_deploy_manifests.py runs it:
//
//	go run . ../../../deploy/kuberay/raycluster.yaml ../../../deploy/kuberay/rayjob.yaml
//
// It prints one line per manifest and exits 1 naming every problem found.
package main

import (
	"fmt"
	"os"
	"strings"

	rayv1 "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// secretVariable must come from a Secret on every container that runs clstream code.
const secretVariable = "CLSTREAM_KAFKA__SASL_PASSWORD"

// kafkaVariables are the Kafka settings every clstream container needs.
var kafkaVariables = []string{
	"CLSTREAM_KAFKA__BOOTSTRAP_SERVERS",
	"CLSTREAM_KAFKA__SECURITY_PROTOCOL",
	"CLSTREAM_KAFKA__SASL_MECHANISM",
	"CLSTREAM_KAFKA__SASL_USERNAME",
	secretVariable,
}

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kuberaycheck MANIFEST.yaml...")
		os.Exit(2)
	}
	var found problems
	clusters := map[string]bool{}
	var jobs []*rayv1.RayJob
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			found.add("%s: %v", path, err)
			continue
		}
		var meta struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(data, &meta); err != nil {
			found.add("%s: not YAML: %v", path, err)
			continue
		}
		if meta.APIVersion != rayv1.GroupVersion.String() {
			found.add("%s: apiVersion %q, want %q", path, meta.APIVersion, rayv1.GroupVersion.String())
			continue
		}
		switch meta.Kind {
		case "RayCluster":
			var cluster rayv1.RayCluster
			// UnmarshalStrict: an unknown or duplicated field is an error, as `kubectl apply
			// --validate=strict` would make it, rather than a setting silently dropped.
			if err := yaml.UnmarshalStrict(data, &cluster); err != nil {
				found.add("%s: %v", path, err)
				continue
			}
			before := len(found)
			checkCluster(path, &cluster.Spec, &found)
			clusters[cluster.Name] = true
			report(path, "RayCluster", cluster.Name, len(found) == before)
		case "RayJob":
			var job rayv1.RayJob
			if err := yaml.UnmarshalStrict(data, &job); err != nil {
				found.add("%s: %v", path, err)
				continue
			}
			before := len(found)
			checkJob(path, &job, &found)
			jobs = append(jobs, &job)
			report(path, "RayJob", job.Name, len(found) == before)
		default:
			found.add("%s: kind %q is neither RayCluster nor RayJob", path, meta.Kind)
		}
	}
	for _, job := range jobs {
		if name := job.Spec.ClusterSelector["ray.io/cluster"]; name != "" && !clusters[name] {
			found.add("RayJob %s selects RayCluster %q, which none of the manifests defines", job.Name, name)
		}
	}
	if len(found) > 0 {
		fmt.Fprintln(os.Stderr, strings.Join(found, "\n"))
		os.Exit(1)
	}
}

func report(path, kind, name string, ok bool) {
	if ok {
		fmt.Printf("ok %s: %s %s\n", path, kind, name)
	}
}

func checkCluster(path string, spec *rayv1.RayClusterSpec, found *problems) {
	if spec.EnableInTreeAutoscaling == nil || !*spec.EnableInTreeAutoscaling {
		found.add("%s: enableInTreeAutoscaling must be true", path)
	}
	head := spec.HeadGroupSpec.Template.Spec
	checkContainers(path, "head", head.Containers, found)
	// The driver runs on the head (a RayJob's entrypoint): it must join that Ray, not start its own.
	if value(head.Containers, "CLSTREAM_DRIVER__RAY_ADDRESS") == "" {
		found.add("%s: head: CLSTREAM_DRIVER__RAY_ADDRESS is unset, so the driver would start a Ray of its own", path)
	}
	if !declaresPort(head.Containers, 9464) {
		found.add("%s: head: no containerPort 9464 (metrics.port) for the PodMonitor", path)
	}
	gpuGroups := 0
	for _, group := range spec.WorkerGroupSpecs {
		where := fmt.Sprintf("%s: worker group %s", path, group.GroupName)
		pod := group.Template.Spec
		checkContainers(where, "worker", pod.Containers, found)
		minReplicas, maxReplicas := int32(0), int32(0)
		if group.MinReplicas != nil {
			minReplicas = *group.MinReplicas
		}
		if group.MaxReplicas != nil {
			maxReplicas = *group.MaxReplicas
		}
		if group.MaxReplicas == nil || minReplicas > maxReplicas {
			found.add("%s: minReplicas %d must not exceed maxReplicas %d (both set)", where, minReplicas, maxReplicas)
		}
		if group.Replicas != nil && (*group.Replicas < minReplicas || *group.Replicas > maxReplicas) {
			found.add("%s: replicas %d outside [minReplicas, maxReplicas]", where, *group.Replicas)
		}
		if len(pod.Containers) == 0 {
			continue
		}
		gpus := pod.Containers[0].Resources.Limits[corev1.ResourceName("nvidia.com/gpu")]
		if gpus.IsZero() {
			continue
		}
		gpuGroups++
		if len(pod.Tolerations) == 0 || len(pod.NodeSelector) == 0 {
			found.add("%s: a GPU group needs tolerations and a nodeSelector for the GPU nodes", where)
		}
		// The driver puts actors on GPUs only when Ray already counts one at start
		// (pipelines/streaming/ray_pool.py): keep one GPU worker up.
		if minReplicas < 1 {
			found.add("%s: minReplicas %d: with no GPU node at start the actors run on CPUs", where, minReplicas)
		}
	}
	if gpuGroups == 0 {
		found.add("%s: no worker group has an nvidia.com/gpu limit", path)
	}
}

func checkJob(path string, job *rayv1.RayJob, found *problems) {
	if !strings.HasPrefix(strings.TrimSpace(job.Spec.Entrypoint), "clstream run") {
		found.add("%s: entrypoint %q is not `clstream run ...`", path, job.Spec.Entrypoint)
	}
	switch {
	case job.Spec.RayClusterSpec != nil && len(job.Spec.ClusterSelector) > 0:
		found.add("%s: set rayClusterSpec or clusterSelector, not both", path)
	case job.Spec.RayClusterSpec != nil:
		checkCluster(path, job.Spec.RayClusterSpec, found)
	case job.Spec.ClusterSelector["ray.io/cluster"] == "":
		found.add("%s: neither rayClusterSpec nor clusterSelector[ray.io/cluster] is set", path)
	}
}

// checkContainers: the first container runs Ray (KubeRay's convention) and so clstream's code.
func checkContainers(where, role string, containers []corev1.Container, found *problems) {
	if len(containers) == 0 {
		found.add("%s: %s pod has no containers", where, role)
		return
	}
	env := map[string]corev1.EnvVar{}
	for _, variable := range containers[0].Env {
		env[variable.Name] = variable
	}
	for _, name := range kafkaVariables {
		if _, ok := env[name]; !ok {
			found.add("%s: %s container lacks %s", where, role, name)
		}
	}
	if secret, ok := env[secretVariable]; ok {
		if secret.Value != "" || secret.ValueFrom == nil || secret.ValueFrom.SecretKeyRef == nil {
			found.add("%s: %s container: %s must come from a secretKeyRef, never a literal", where, role, secretVariable)
		}
	}
}

func value(containers []corev1.Container, name string) string {
	if len(containers) == 0 {
		return ""
	}
	for _, variable := range containers[0].Env {
		if variable.Name == name {
			return variable.Value
		}
	}
	return ""
}

func declaresPort(containers []corev1.Container, port int32) bool {
	for _, container := range containers {
		for _, declared := range container.Ports {
			if declared.ContainerPort == port {
				return true
			}
		}
	}
	return false
}
