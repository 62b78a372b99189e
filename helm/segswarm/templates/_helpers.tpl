{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "segswarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects; leaves room for the "-redis-url" suffix. */}}
{{- define "segswarm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "segswarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object of the release. */}}
{{- define "segswarm.labels" -}}
helm.sh/chart: {{ include "segswarm.chart" . }}
app.kubernetes.io/name: {{ include "segswarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: segswarm
{{- end }}

{{/* Selector of the transcoder pods. */}}
{{- define "segswarm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "segswarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: transcoder
{{- end }}

{{/* Selector of the bundled Redis. */}}
{{- define "segswarm.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "segswarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "segswarm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "segswarm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "segswarm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "segswarm.claimName" -}}
{{- default (printf "%s-data" (include "segswarm.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{- define "segswarm.redisName" -}}
{{- printf "%s-redis" (include "segswarm.fullname" .) }}
{{- end }}

{{/* "true" when the pods get a REDIS_URL. */}}
{{- define "segswarm.hasRedis" -}}
{{- if or .Values.redis.enabled .Values.redis.external.url .Values.redis.external.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when the chart renders its own auth Secret. */}}
{{- define "segswarm.authSecretRendered" -}}
{{- if and (not .Values.auth.existingSecret) (or .Values.auth.apiToken .Values.auth.webhookSecret) }}true{{ end }}
{{- end }}

{{- define "segswarm.authSecretName" -}}
{{- default (printf "%s-auth" (include "segswarm.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Grace: preStop sleep + the pod's own shutdown grace + a margin. */}}
{{- define "segswarm.terminationGracePeriodSeconds" -}}
{{- add .Values.preStopSleepSeconds .Values.config.shutdownGraceSeconds .Values.terminationGraceMarginSeconds }}
{{- end }}

{{/* Refuses value combinations that cannot work. */}}
{{- define "segswarm.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA creates its own HorizontalPodAutoscaler" }}
{{- end }}
{{- if and .Values.redis.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) }}
{{- fail "redis.enabled=true bundles a Redis: unset redis.external.url / existingSecret, or set redis.enabled=false to use the external one" }}
{{- end }}
{{- if and .Values.redis.external.url .Values.redis.external.existingSecret }}
{{- fail "set either redis.external.url or redis.external.existingSecret, not both" }}
{{- end }}
{{- if and (not (include "segswarm.hasRedis" .)) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled .Values.keda.enabled) }}
{{- fail "several pods need Redis to share work: set redis.enabled=true or redis.external.*, or replicaCount=1 without autoscaling (local mode)" }}
{{- end }}
{{- if and .Values.keda.enabled (not .Values.redis.enabled) (not .Values.keda.address) }}
{{- fail "keda.address (host:port of the external Redis, as KEDA reaches it) is required with an external Redis" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.keda.enabled (lt (int .Values.keda.maxReplicas) (int .Values.keda.minReplicas)) }}
{{- fail "keda.maxReplicas must be >= keda.minReplicas" }}
{{- end }}
{{- end }}
