{{/*
Names. Every resource name starts with the release's fullname, so several releases share a namespace safely.
*/}}
{{- define "clothing-model.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "clothing-model.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clothing-model.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fullname with a suffix, at most 63 characters: the fullname is cut, never the suffix, so the components' and the
test objects' names stay distinct for every release name Helm accepts (up to 53 characters).
Usage: include "clothing-model.suffixedName" (list $ "gateway")
*/}}
{{- define "clothing-model.suffixedName" -}}
{{- $suffix := index . 1 }}
{{- $base := include "clothing-model.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "clothing-model.tfServing.fullname" -}}
{{- include "clothing-model.suffixedName" (list . "tf-serving") }}
{{- end }}

{{- define "clothing-model.gateway.fullname" -}}
{{- include "clothing-model.suffixedName" (list . "gateway") }}
{{- end }}

{{/*
The two components as "values key: component label"; templates that render the same kind for both range over it.
*/}}
{{- define "clothing-model.components" -}}
tfServing: tf-serving
gateway: gateway
{{- end }}

{{/*
Labels. Selectors use name, instance and component (tf-serving or gateway), never the chart version.
*/}}
{{- define "clothing-model.labels" -}}
helm.sh/chart: {{ include "clothing-model.chart" . }}
{{ include "clothing-model.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "clothing-model.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "clothing-model.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clothing-model.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name of a component. Usage: include "clothing-model.serviceAccountName" (dict "root" $ "key" "gateway")
*/}}
{{- define "clothing-model.serviceAccountName" -}}
{{- $sa := (index .root.Values .key).serviceAccount }}
{{- if $sa.create }}
{{- default (include (printf "clothing-model.%s.fullname" .key) .root) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag[suffix][@digest]; the tag defaults to the chart's appVersion.
Usage: include "clothing-model.image" (dict "image" .Values.gateway.image "root" $ "suffix" "")
*/}}
{{- define "clothing-model.image" -}}
{{- $tag := printf "%s%s" (default .root.Chart.AppVersion .image.tag) (default "" .suffix) }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
A model image's reference: repository[:tag][@digest], no default tag (a model is not versioned with the chart).
*/}}
{{- define "clothing-model.modelImage" -}}
{{- .repository }}{{ with .tag }}:{{ . }}{{ end }}{{ with .digest }}@{{ . }}{{ end }}
{{- end }}

{{- define "clothing-model.tfServing.image" -}}
{{- $suffix := ternary .Values.tfServing.gpu.imageTagSuffix "" .Values.tfServing.gpu.enabled }}
{{- include "clothing-model.image" (dict "image" .Values.tfServing.image "root" . "suffix" $suffix) }}
{{- end }}

{{- define "clothing-model.gateway.image" -}}
{{- include "clothing-model.image" (dict "image" .Values.gateway.image "root" .) }}
{{- end }}

{{/*
The address the gateway dials: the TF Serving Service's FQDN in the release namespace; dns:/// (gRPC's DNS resolver,
needed for round_robin over the headless Service's pod IPs) in client load-balancing mode.
*/}}
{{- define "clothing-model.tfServingHost" -}}
{{- if .Values.gateway.tfServingHost }}
{{- .Values.gateway.tfServingHost }}
{{- else }}
{{- $fqdn := printf "%s.%s.svc.%s:8500" (include "clothing-model.tfServing.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- ternary (printf "dns:///%s" $fqdn) $fqdn (eq .Values.loadBalancing.mode "client") }}
{{- end }}
{{- end }}

{{/*
The gateway's in-cluster URL, for the helm test pods.
*/}}
{{- define "clothing-model.gateway.url" -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "clothing-model.gateway.fullname" .) .Release.Namespace .Values.clusterDomain .Values.gateway.service.port }}
{{- end }}

{{/*
The gateway's model contracts (model.json): the `model` block, or with `models` the list of their contracts (their
serving fields left out), the first being the default model. uint8 is always present (null when unset): Helm 4
drops null values, Helm 3 keeps them.
*/}}
{{- define "clothing-model.modelContract" -}}
{{- if .Values.models }}
{{- $contracts := list }}
{{- range .Values.models }}
{{- $contract := omit . "versions" "versionLabels" "canary" "shadow" }}
{{- if not (hasKey $contract "uint8") }}
{{- $_ := set $contract "uint8" nil }}
{{- end }}
{{- $contracts = append $contracts $contract }}
{{- end }}
{{- toJson $contracts }}
{{- else }}
{{- $model := deepCopy .Values.model }}
{{- if not (hasKey $model "uint8") }}
{{- $_ := set $model "uint8" nil }}
{{- end }}
{{- toJson $model }}
{{- end }}
{{- end }}

{{/*
The gateway's traffic policies (GATEWAY_TRAFFIC), model name -> {canary, shadow}, for the models that have one;
empty when none does. Their labels, and `stable` (which answers clients), must be version labels of the model.
*/}}
{{- define "clothing-model.traffic" -}}
{{- $traffic := dict }}
{{- range $model := .Values.models }}
{{- $policy := pick . "canary" "shadow" }}
{{- if $policy }}
{{- $labels := keys (default dict .versionLabels) }}
{{- range $part, $spec := $policy }}
{{- if not (has $spec.label $labels) }}
{{- fail (printf "models: %s's %s label %s is not one of its versionLabels" $model.name $part $spec.label) }}
{{- end }}
{{- end }}
{{- if not (has "stable" $labels) }}
{{- fail (printf "models: %s has a traffic policy, so it needs a stable version label to answer clients" .name) }}
{{- end }}
{{- $_ := set $traffic .name $policy }}
{{- end }}
{{- end }}
{{- with $traffic }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
TF Serving's ModelServerConfig (models.config) for `models`: each model under `<basePath>/<name>`, its `versions`
(`specific`; none: the latest) and `versionLabels`. A label must name one of the versions served.
*/}}
{{- define "clothing-model.tfServing.modelConfig" -}}
{{- $basePath := trimSuffix "/" .Values.tfServing.modelSource.basePath }}
{{- $names := list -}}
model_config_list {
{{- range .Values.models }}
{{- if has .name $names }}
{{- fail (printf "models: %s is listed twice; each model is listed once" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- $served := list }}
{{- range .versions }}
{{- $served = append $served (toString (int64 .)) }}
{{- end }}
{{- $name := .name }}
  config {
    name: {{ .name | quote }}
    base_path: {{ printf "%s/%s" $basePath .name | quote }}
    model_platform: "tensorflow"
    {{- with $served }}
    model_version_policy { specific { {{- range . }} versions: {{ . }}{{ end }} } }
    {{- end }}
    {{- range $label, $version := .versionLabels }}
    {{- if and $served (not (has (toString (int64 $version)) $served)) }}
    {{- fail (printf "models: %s's label %s names version %d, which is not in its versions %v" $name $label (int64 $version) $served) }}
    {{- end }}
    version_labels { key: {{ $label | quote }} value: {{ int64 $version }} }
    {{- end }}
  }
{{- end }}
}
{{- end }}

{{/*
Whether a component is scaled by a KEDA ScaledObject ("true") rather than an HPA: KEDA asked for and its API served.
Usage: include "clothing-model.useKeda" (dict "root" $ "key" "gateway")
*/}}
{{- define "clothing-model.useKeda" -}}
{{- $autoscaling := (index .root.Values .key).autoscaling }}
{{- if and $autoscaling.enabled $autoscaling.keda.enabled (.root.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") }}true{{ end }}
{{- end }}

{{/*
Pod-template pieces shared by both Deployments.
*/}}
{{- define "clothing-model.podAnnotations" -}}
{{- if eq .root.Values.loadBalancing.mode "linkerd" }}
linkerd.io/inject: enabled
config.linkerd.io/proxy-cpu-request: {{ .root.Values.loadBalancing.linkerdProxy.cpuRequest | quote }}
config.linkerd.io/proxy-memory-request: {{ .root.Values.loadBalancing.linkerdProxy.memoryRequest | quote }}
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Topology spread: the values' constraints, each with this component's pods as labelSelector unless one is given.
Usage: include "clothing-model.topologySpreadConstraints" (dict "root" $ "values" .Values.gateway "component" "gateway")
*/}}
{{- define "clothing-model.topologySpreadConstraints" -}}
{{- $selector := fromYaml (include "clothing-model.selectorLabels" .root) }}
{{- $_ := set $selector "app.kubernetes.io/component" .component }}
{{- $constraints := list }}
{{- range .values.topologySpreadConstraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $constraints = append $constraints $constraint }}
{{- end }}
{{- toYaml $constraints }}
{{- end }}

{{/*
TF Serving's config files (the ConfigMap's data): the batching parameters and the Prometheus monitoring config.
*/}}
{{- define "clothing-model.tfServing.config" -}}
{{- with .Values.tfServing.batching }}
{{- if .enabled }}
{{- if and .allowedBatchSizes (ne (int (last .allowedBatchSizes)) (int .maxBatchSize)) }}
{{- fail "tfServing.batching.allowedBatchSizes: the last size must equal maxBatchSize" }}
{{- end }}
batching.config: |
  max_batch_size { value: {{ int64 .maxBatchSize }} }
  batch_timeout_micros { value: {{ int64 .batchTimeoutMicros }} }
  max_enqueued_batches { value: {{ int64 .maxEnqueuedBatches }} }
  num_batch_threads { value: {{ int64 .numBatchThreads }} }
  {{- range .allowedBatchSizes }}
  allowed_batch_sizes: {{ int64 . }}
  {{- end }}
{{- end }}
{{- end }}
{{- if .Values.tfServing.monitoring.enabled }}
monitoring.config: |
  prometheus_config {
    enable: true
    path: "/monitoring/prometheus/metrics"
  }
{{- end }}
{{- end }}

{{/*
The model URI as an rclone on-the-fly remote: credentials from the environment (IRSA, Workload Identity, env vars).
*/}}
{{- define "clothing-model.rcloneSource" -}}
{{- if hasPrefix "s3://" . }}
{{- printf ":s3,provider=AWS,env_auth=true:%s" (trimPrefix "s3://" .) }}
{{- else if hasPrefix "gs://" . }}
{{- printf ":gcs,env_auth=true:%s" (trimPrefix "gs://" .) }}
{{- else }}
{{- printf ":http,url='%s':" . }}
{{- end }}
{{- end }}

{{/*
KServe mode: the InferenceService name, kserve.name or the fullname. KServe's naming rule is checked here since the
fullname comes from the release name; 51 characters leave room for the "-transformer" suffix of its Services.
*/}}
{{- define "clothing-model.kserve.name" -}}
{{- $name := default (include "clothing-model.fullname" .) .Values.kserve.name }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "InferenceService name %q: KServe wants lowercase letters, digits and '-', starting with a letter; set kserve.name" $name) }}
{{- end }}
{{- if gt (len $name) 51 }}
{{- fail (printf "InferenceService name %q is longer than 51 characters; set a shorter kserve.name" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
KServe mode: the roots the InferenceService template and the test pods render with, set as .out.roots: the release's
own root for `model`, or for `models` one root per entry whose Values have `model` = the entry's contract, no
`models`, `kserve.name` = `<kserve.name or fullname>-<model name>` (lowercased, `_` and `.` as `-`) and
`kserve.predictor.storageUri` = the entry's `kserve.predictor.modelStorageUris`. KServe serves the latest version of a
storage URI and splits traffic itself (`canaryTrafficPercent`), so versions, labels, canary and shadow are refused.
Usage: $out := dict; include "clothing-model.kserve.roots" (dict "root" $ "out" $out); range $out.roots
*/}}
{{- define "clothing-model.kserve.roots" -}}
{{- $root := .root }}
{{- $roots := list }}
{{- if not $root.Values.models }}
{{- $roots = list $root }}
{{- end }}
{{- $base := default (include "clothing-model.fullname" $root) $root.Values.kserve.name }}
{{- $names := list }}
{{- range $model := $root.Values.models }}
{{- with pick $model "versions" "versionLabels" "canary" "shadow" }}
{{- fail (printf "models: %s has %s; in kserve mode each model is an InferenceService serving the latest version of its storage URI (KServe's own canaryTrafficPercent splits traffic there)" $model.name (keys . | sortAlpha | join ", ")) }}
{{- end }}
{{- $uri := index $root.Values.kserve.predictor.modelStorageUris $model.name | default "" }}
{{- if not $uri }}
{{- fail (printf "models: kserve mode needs kserve.predictor.modelStorageUris[%q], the model's storage URI" $model.name) }}
{{- end }}
{{- $name := printf "%s-%s" $base (regexReplaceAll "[_.]" (lower $model.name) "-") }}
{{- if has $name $names }}
{{- fail (printf "models: two models make the InferenceService name %s; rename one" $name) }}
{{- end }}
{{- $names = append $names $name }}
{{- $values := deepCopy $root.Values }}
{{- $_ := set $values "model" (deepCopy $model) }}
{{- $_ := set $values "models" list }}
{{- $_ := set $values.kserve "name" $name }}
{{- $_ := set $values.kserve.predictor "storageUri" $uri }}
{{- $roots = append $roots (dict "Values" $values "Release" $root.Release "Chart" $root.Chart "Capabilities" $root.Capabilities "Template" $root.Template "Files" $root.Files) }}
{{- end }}
{{- $_ := set .out "roots" $roots }}
{{- end }}

{{/*
KServe mode: the predictor's ServiceAccount (storage credentials); empty means the namespace's default.
*/}}
{{- define "clothing-model.kserve.serviceAccountName" -}}
{{- $sa := .Values.kserve.predictor.serviceAccount }}
{{- if $sa.create }}
{{- default (include "clothing-model.suffixedName" (list . "predictor")) $sa.name }}
{{- else }}
{{- $sa.name }}
{{- end }}
{{- end }}

{{/*
The URL the helm test pods call: the gateway Service, or in kserve mode the transformer's cluster-local address
(Standard mode: KServe's `<isvc>-transformer` Service, port 80).
*/}}
{{- define "clothing-model.test.endpoint" -}}
{{- if eq .Values.mode "kserve" }}
{{- printf "http://%s-transformer.%s.svc.%s" (include "clothing-model.kserve.name" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- include "clothing-model.gateway.url" . }}
{{- end }}
{{- end }}

{{/*
KServe mode: the replica and autoscaling fields of a component (predictor or transformer values).
*/}}
{{- define "clothing-model.kserve.scaling" -}}
minReplicas: {{ .minReplicas }}
maxReplicas: {{ .maxReplicas }}
{{- with .scaleMetric }}
scaleMetric: {{ . }}
{{- end }}
{{- if not (kindIs "invalid" .scaleTarget) }}
scaleTarget: {{ .scaleTarget }}
{{- end }}
{{- end }}

{{/*
A container's resources with the GPU limit added when gpu.enabled (the resource name and count from gpu).
Usage: include "clothing-model.resources" (dict "resources" $tfs.resources "gpu" $tfs.gpu)
*/}}
{{- define "clothing-model.resources" -}}
{{- $resources := deepCopy .resources }}
{{- if .gpu.enabled }}
{{- $_ := set $resources "limits" (merge (dict .gpu.resourceName .gpu.count) (default dict $resources.limits)) }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
The gateway container, the same in both modes but for what each mode gives it: in kubernetes mode the TF Serving
Service to dial, the contract file from its ConfigMap, port 9696 and a preStop pause; as KServe's transformer the
contract inline, the predictor's protocol, port 8080 (KServe appends --model_name, --predictor_host, --http_port).
KServe's Standard mode has no queue-proxy draining the pod, so there (`drain`) the preStop pause stays.
Usage: include "clothing-model.gateway.container" (dict "root" $ "kserve" false)
*/}}
{{- define "clothing-model.gateway.container" -}}
{{- $root := .root }}
{{- $gw := $root.Values.gateway }}
{{- $port := ternary 8080 9696 .kserve }}
- name: {{ ternary "kserve-container" "gateway" .kserve }}
  image: {{ include "clothing-model.gateway.image" $root }}
  imagePullPolicy: {{ $gw.image.pullPolicy }}
  env:
    {{- if .kserve }}
    - name: GATEWAY_MODEL_CONTRACT
      value: {{ include "clothing-model.modelContract" $root | quote }}
    - name: GATEWAY_PREDICTOR_PROTOCOL
      value: {{ $root.Values.kserve.predictor.protocol }}
    {{- else }}
    - name: TF_SERVING_HOST
      value: {{ include "clothing-model.tfServingHost" $root | quote }}
    - name: GATEWAY_MODEL_CONTRACT_FILE
      value: /etc/clothing-model/model.json
    - name: GATEWAY_LB_POLICY
      value: {{ ternary "round_robin" "pick_first" (eq $root.Values.loadBalancing.mode "client") }}
    {{- end }}
    - name: GATEWAY_DEADLINE_SECONDS
      value: {{ $gw.deadlineSeconds | quote }}
    - name: GATEWAY_ALLOWED_NETWORKS
      value: {{ join "," $gw.allowedNetworks | quote }}
    - name: GATEWAY_MAX_DOWNLOAD_BYTES
      value: {{ int64 $gw.maxDownloadBytes | quote }}
    {{- with $gw.preprocessing }}
    - name: GATEWAY_PREPROCESSING
      value: {{ . }}
    {{- end }}
    - name: GATEWAY_LOG_LEVEL
      value: {{ $gw.logLevel }}
    - name: GATEWAY_WORKERS
      value: {{ $gw.workers | quote }}
    - name: GATEWAY_MAX_IN_FLIGHT
      value: {{ $gw.maxInFlight | quote }}
    - name: GATEWAY_MAX_QUEUE_SECONDS
      value: {{ $gw.maxQueueSeconds | quote }}
    - name: GATEWAY_MAX_LOOP_LAG_SECONDS
      value: {{ $gw.maxLoopLagSeconds | quote }}
    - name: GATEWAY_MAX_DOWNLOADS
      value: {{ $gw.maxDownloads | quote }}
    - name: GATEWAY_MAX_DOWNLOADS_PER_HOST
      value: {{ $gw.maxDownloadsPerHost | quote }}
    {{- with include "clothing-model.traffic" $root }}
    - name: GATEWAY_TRAFFIC
      value: {{ . | quote }}
    - name: GATEWAY_MAX_SHADOW_IN_FLIGHT
      value: {{ $gw.maxShadowInFlight | quote }}
    {{- end }}
    {{- with $gw.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: {{ ternary "http1" "http" .kserve }}
      containerPort: {{ $port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: {{ ternary 8080 "http" .kserve }}
    {{- toYaml $gw.startupProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz?exclude=models
      port: {{ ternary 8080 "http" .kserve }}
    {{- toYaml $gw.readinessProbe | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ ternary 8080 "http" .kserve }}
    {{- toYaml $gw.livenessProbe | nindent 4 }}
  {{- if or (not .kserve) .drain }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ $gw.preStopSleepSeconds }}"]
  {{- end }}
  securityContext:
    {{- toYaml $gw.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml $gw.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if not .kserve }}
    - name: model-contract
      mountPath: /etc/clothing-model
      readOnly: true
    {{- end }}
{{- end }}
