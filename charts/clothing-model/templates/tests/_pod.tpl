{{/*
A helm test pod running the gateway image's smoke client against the gateway Service (in kserve mode: the
transformer, in KServe's V1 protocol); restricted, no token, deleted when it succeeds (and before the next run). Usage:
include "clothing-model.testPod" (dict "root" $ "name" "ready" "weight" 1 "args" (list "--ready-only") "testData" false)
*/}}
{{- define "clothing-model.testPod" -}}
{{- $root := .root }}
{{- $gw := $root.Values.gateway }}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "clothing-model.suffixedName" (list $root (printf "test-%s" .name)) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "clothing-model.labels" $root | nindent 4 }}
    app.kubernetes.io/component: test
  annotations:
    helm.sh/hook: test
    helm.sh/hook-weight: {{ .weight | quote }}
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
    # A meshed test pod would never complete: its proxy sidecar keeps running.
    linkerd.io/inject: disabled
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $gw.podSecurityContext | nindent 4 }}
  containers:
    - name: smoke
      image: {{ include "clothing-model.gateway.image" $root }}
      imagePullPolicy: {{ $gw.image.pullPolicy }}
      command: ["python", "-m", "clothing_gateway.smoke"]
      args:
        - --endpoint
        - {{ include "clothing-model.test.endpoint" $root }}
        {{- if eq $root.Values.mode "kserve" }}
        - --kserve-model
        - {{ include "clothing-model.kserve.name" $root }}
        {{- end }}
        {{- range .args }}
        - {{ . }}
        {{- end }}
      securityContext:
        {{- toYaml $gw.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml $root.Values.tests.resources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if .testData }}
        - name: test-data
          mountPath: /test-data
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir: {}
    {{- if .testData }}
    - name: test-data
      configMap:
        name: {{ include "clothing-model.suffixedName" (list $root "test-data") }}
    {{- end }}
  {{- with $gw.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $gw.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
