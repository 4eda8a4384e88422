{{/* The release's full name: the release name when it contains the chart name. */}}
{{- define "tributary.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tributary.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/part-of: tributary
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels for one component: (dict "ctx" $ "component" "worker") */}}
{{- define "tributary.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tributary.serviceAccountName" -}}
{{- default (include "tributary.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "tributary.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tributary.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- printf "https://%s-etcd:2379" (include "tributary.fullname" .) -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end -}}

{{- define "tributary.storeUrl" -}}
{{- if .Values.store.bundled.enabled -}}
{{- printf "s3://%s/cluster?endpoint=http://%s-s3:9000&region=us-east-1" .Values.store.bundled.bucket (include "tributary.fullname" .) -}}
{{- else -}}
{{- .Values.store.url -}}
{{- end -}}
{{- end -}}

{{- define "tributary.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tributary.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Pod annotations: Prometheus's when metrics.podAnnotations, then (dict "ctx" $ "extra" MAP). */}}
{{- define "tributary.podAnnotations" -}}
{{- $a := dict -}}
{{- if .ctx.Values.metrics.podAnnotations -}}
{{- $_ := set $a "prometheus.io/scrape" "true" -}}
{{- $_ := set $a "prometheus.io/port" (toString .ctx.Values.ports.http) -}}
{{- $_ := set $a "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $a = merge (deepCopy (default dict .extra)) $a -}}
{{- if $a -}}{{- toYaml $a -}}{{- end -}}
{{- end -}}

{{/* Env every role gets: name, HTTP address, certs, etcd, store, lease; credentials. */}}
{{- define "tributary.commonEnv" -}}
- name: TRIBUTARY_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: TRIBUTARY_HTTP
  value: {{ printf "0.0.0.0:%d" (int .Values.ports.http) | quote }}
- name: TRIBUTARY_CERTS
  value: /certs
- name: TRIBUTARY_ETCD
  value: {{ include "tributary.etcdEndpoints" . | quote }}
- name: TRIBUTARY_STORE
  value: {{ include "tributary.storeUrl" . | quote }}
- name: TRIBUTARY_LEASE_TTL
  value: {{ .Values.leaseTtlSeconds | quote }}
{{- if .Values.etcd.bundled.enabled }}
# The bundled etcd requires client certificates from the cluster CA: each pod presents its
# node certificate (laid out by the certs init container).
- name: TRIBUTARY_ETCD_CA
  value: /certs/ca.pem
- name: TRIBUTARY_ETCD_CERT
  value: /certs/$(TRIBUTARY_NAME).pem
- name: TRIBUTARY_ETCD_KEY
  value: /certs/$(TRIBUTARY_NAME).key
{{- else if .Values.etcd.tls.enabled }}
- name: TRIBUTARY_ETCD_CA
  value: /etcd-tls/ca.crt
- name: TRIBUTARY_ETCD_CERT
  value: /etcd-tls/tls.crt
- name: TRIBUTARY_ETCD_KEY
  value: /etcd-tls/tls.key
{{- end }}
{{- end -}}

{{- define "tributary.envFrom" -}}
- secretRef:
    name: {{ .Values.store.credentialsSecret }}
{{- end -}}

{{/* The init container that lays the TLS Secret out as `--certs DIR` reads it, for the
node named by TRIBUTARY_NAME: (dict "ctx" $) for the pod's name, (dict "ctx" $ "nodeName"
NAME) for a fixed one (etcd's Service name). */}}
{{- define "tributary.certsInit" -}}
- name: certs
  image: {{ include "tributary.image" .ctx }}
  imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
  # A cert-manager Secret (tls.crt, tls.key, ca.crt; also what tls.generate makes) is renamed
  # for this node's name; a Secret made from `tributary certs` output is copied as it is
  # (never ca.key).
  command: ["/bin/sh", "-c"]
  args:
    - |
      set -eu
      if [ -f /tls/tls.crt ]; then
        cp /tls/ca.crt /certs/ca.pem
        cp /tls/tls.crt "/certs/$TRIBUTARY_NAME.pem"
        cp /tls/tls.key "/certs/$TRIBUTARY_NAME.key"
      else
        cp /tls/ca.pem "/tls/$TRIBUTARY_NAME.pem" "/tls/$TRIBUTARY_NAME.key" /certs/
      fi
      chmod 0600 "/certs/$TRIBUTARY_NAME.key"
  env:
    - name: TRIBUTARY_NAME
      {{- if .nodeName }}
      value: {{ .nodeName }}
      {{- else }}
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
      {{- end }}
  securityContext:
    {{- include "tributary.containerSecurityContext" .ctx | nindent 4 }}
  volumeMounts:
    - name: tls
      mountPath: /tls
      readOnly: true
    - name: certs
      mountPath: /certs
{{- end -}}

{{/* The DNS names every certificate of the release must carry: coordinator and worker pods
(up to maxWorkers), and the bundled etcd's Service names when it is on. (dict "ctx" $
"maxWorkers" N) */}}
{{- define "tributary.dnsNames" -}}
{{- $fullname := include "tributary.fullname" .ctx -}}
{{- range $i := until (int .ctx.Values.coordinator.replicas) }}
- {{ $fullname }}-coordinator-{{ $i }}
{{- end }}
{{- range $i := until (int (max .maxWorkers .ctx.Values.worker.replicas)) }}
- {{ $fullname }}-worker-{{ $i }}
{{- end }}
{{- if .ctx.Values.etcd.bundled.enabled }}
- {{ $fullname }}-etcd
- {{ $fullname }}-etcd.{{ .ctx.Release.Namespace }}.svc
{{- end }}
{{- end -}}

{{- define "tributary.certsVolumes" -}}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
- name: certs
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: tmp
  emptyDir: {}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.bundled.enabled) }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.secretName }}
    defaultMode: 0440
    items:
      - key: {{ .Values.etcd.tls.caKey }}
        path: ca.crt
      - key: {{ .Values.etcd.tls.certKey }}
        path: tls.crt
      - key: {{ .Values.etcd.tls.keyKey }}
        path: tls.key
{{- end }}
{{- end -}}

{{- define "tributary.certsMounts" -}}
- name: certs
  mountPath: /certs
  readOnly: true
# The root filesystem is read-only; checkpoints are staged in temporary directories.
- name: tmp
  mountPath: /tmp
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.bundled.enabled) }}
- name: etcd-tls
  mountPath: /etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Probes on /healthz and /readyz: (dict "ctx" $ "startup" .Values.worker.startupProbe) */}}
{{- define "tributary.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .startup.periodSeconds }}
  failureThreshold: {{ .startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}
