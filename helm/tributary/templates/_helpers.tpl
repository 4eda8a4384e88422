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
{{- printf "http://%s-etcd:2379" (include "tributary.fullname" .) -}}
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
{{- if .Values.etcd.tls.enabled }}
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

{{/* The init container that lays the TLS Secret out as `--certs DIR` reads it. */}}
{{- define "tributary.certsInit" -}}
- name: certs
  image: {{ include "tributary.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # A cert-manager Secret (tls.crt, tls.key, ca.crt) is renamed for this pod's name; a
  # Secret made from `tributary certs` output is copied as it is (never ca.key).
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
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
  securityContext:
    {{- include "tributary.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: tls
      mountPath: /tls
      readOnly: true
    - name: certs
      mountPath: /certs
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
{{- if .Values.etcd.tls.enabled }}
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
{{- if .Values.etcd.tls.enabled }}
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
