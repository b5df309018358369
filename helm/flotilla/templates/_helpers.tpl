{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it contains the chart name. */}}
{{- define "flotilla.fullname" -}}
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

{{/* chart label value: name-version. */}}
{{- define "flotilla.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "flotilla.labels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "web").
*/}}
{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects: (dict "ctx" $ "component" "web"). */}}
{{- define "flotilla.componentLabels" -}}
{{ include "flotilla.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pod template labels: component labels plus podLabels. */}}
{{- define "flotilla.podLabels" -}}
{{ include "flotilla.componentLabels" . }}
{{- with .ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The control plane's ServiceAccount. */}}
{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The agents' ServiceAccount (no API permissions, token not mounted). */}}
{{- define "flotilla.agentServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-agent" (include "flotilla.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- "default" }}
{{- end }}
{{- end }}

{{/* Control-plane image reference. */}}
{{- define "flotilla.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Agent image reference: agent.image.*, falling back to image.* and the appVersion. */}}
{{- define "flotilla.agentImage" -}}
{{- $repo := default .Values.image.repository .Values.agent.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.agent.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Name of the Secret with SECRET_KEY and the bootstrap token. */}}
{{- define "flotilla.secretName" -}}
{{- default (printf "%s-secrets" (include "flotilla.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* Name of the Secret the chart writes for external URLs given as values. */}}
{{- define "flotilla.urlSecretName" -}}
{{- printf "%s-urls" (include "flotilla.fullname" .) }}
{{- end }}

{{- define "flotilla.postgresqlName" -}}
{{- printf "%s-postgresql" (include "flotilla.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flotilla.redisName" -}}
{{- printf "%s-redis" (include "flotilla.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret holding the in-chart PostgreSQL password (key "password"). */}}
{{- define "flotilla.postgresqlSecretName" -}}
{{- default (include "flotilla.postgresqlName" .) .Values.postgresql.internal.existingSecret }}
{{- end }}

{{/*
Where the database URL comes from: "existing", "url" or "internal". Fails the
render with a readable message when nothing is configured.
*/}}
{{- define "flotilla.databaseSource" -}}
{{- if .Values.postgresql.external.existingSecret }}existing
{{- else if .Values.postgresql.external.url }}url
{{- else if .Values.postgresql.internal.enabled }}internal
{{- else }}{{ fail "postgresql: set postgresql.external.url or postgresql.external.existingSecret, or enable postgresql.internal.enabled" }}
{{- end }}
{{- end }}

{{- define "flotilla.redisSource" -}}
{{- if .Values.redis.external.existingSecret }}existing
{{- else if .Values.redis.external.url }}url
{{- else if .Values.redis.internal.enabled }}internal
{{- else }}{{ fail "redis: set redis.external.url or redis.external.existingSecret, or enable redis.internal.enabled" }}
{{- end }}
{{- end }}

{{/* A value of a Secret that already exists in the cluster, else "" (no cluster: ""). */}}
{{- define "flotilla.existingSecretValue" -}}
{{- $secret := lookup "v1" "Secret" .namespace .name }}
{{- if and $secret $secret.data (hasKey $secret.data .key) }}
{{- index $secret.data .key | b64dec }}
{{- end }}
{{- end }}

{{/*
Environment of every control-plane container: the database and broker URLs, the
secrets, and the settings from config.*. The URLs with credentials come from
Secrets only; for the in-chart databases the password is spliced in with
Kubernetes' $(VAR) expansion, so it never appears in the pod spec.
*/}}
{{- define "flotilla.env" -}}
{{- $db := include "flotilla.databaseSource" . }}
{{- $redis := include "flotilla.redisSource" . }}
{{- if eq $db "internal" }}
- name: FLOTILLA_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.postgresqlSecretName" . }}
      key: password
- name: DATABASE_URL
  value: {{ printf "postgresql://%s:$(FLOTILLA_DB_PASSWORD)@%s:5432/%s" .Values.postgresql.internal.username (include "flotilla.postgresqlName" .) .Values.postgresql.internal.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ ternary .Values.postgresql.external.existingSecret (include "flotilla.urlSecretName" .) (eq $db "existing") }}
      key: {{ ternary .Values.postgresql.external.existingSecretKey "database-url" (eq $db "existing") }}
{{- end }}
{{- if eq $redis "internal" }}
- name: FLOTILLA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.redisName" . }}
      key: password
- name: CELERY_BROKER_URL
  value: {{ printf "redis://:$(FLOTILLA_REDIS_PASSWORD)@%s:6379/0" (include "flotilla.redisName" .) | quote }}
{{- else }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ ternary .Values.redis.external.existingSecret (include "flotilla.urlSecretName" .) (eq $redis "existing") }}
      key: {{ ternary .Values.redis.external.existingSecretKey "broker-url" (eq $redis "existing") }}
{{- end }}
- name: SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.secretName" . }}
      key: {{ .Values.secrets.secretKeyKey }}
- name: FLOTILLA_AGENT_BOOTSTRAP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.secretName" . }}
      key: {{ .Values.secrets.bootstrapTokenKey }}
- name: FLOTILLA_KUBERNETES_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
# Prometheus scrapes /metrics by the pod's IP: settings add it to ALLOWED_HOSTS.
- name: FLOTILLA_POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- range $name, $value := .Values.config.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* envFrom of every control-plane container: the non-secret settings. */}}
{{- define "flotilla.envFrom" -}}
- configMapRef:
    name: {{ include "flotilla.fullname" . }}
{{- end }}

{{/* Pod securityContext: non-root UID 10001, RuntimeDefault seccomp. */}}
{{- define "flotilla.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container securityContext: no capabilities, no escalation, read-only root. */}}
{{- define "flotilla.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Writable scratch space for a read-only root filesystem. */}}
{{- define "flotilla.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end }}

{{- define "flotilla.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/flotilla
{{- end }}

{{/*
Pod-level settings every control-plane pod shares: pull secrets, ServiceAccount,
security context and scheduling constraints of one component. Call with
(dict "ctx" $ "component" .Values.web).
*/}}
{{- define "flotilla.podCommon" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "flotilla.serviceAccountName" .ctx }}
securityContext:
  {{- include "flotilla.podSecurityContext" .ctx | nindent 2 }}
{{- with .component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A checksum of the settings, so pods roll when they change. */}}
{{- define "flotilla.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
