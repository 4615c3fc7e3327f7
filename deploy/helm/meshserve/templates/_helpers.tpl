{{/*
Naming, labels and per-service helpers.

Most helpers take a "workload context": (dict "root" $ "svc" "model" "track" "stable").
svc is one of gateway|features|preprocess|model; track is stable|canary.
*/}}

{{- define "meshserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix, at most 40 characters so "<fullname>-preprocess-headless" fits 63. */}}
{{- define "meshserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "meshserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The four services, in call order. */}}
{{- define "meshserve.services" -}}
- gateway
- features
- preprocess
- model
{{- end -}}

{{/* Services that get a canary Deployment when canary.enabled. */}}
{{- define "meshserve.canaryServices" -}}
- gateway
- preprocess
- model
{{- end -}}

{{/*
Fixed facts of each service (the service contracts): env prefix, Python module,
and the grpc.health.v1 service name that turns SERVING once artifacts are loaded and warm.
*/}}
{{- define "meshserve.meta" -}}
gateway:
  envPrefix: MESHSERVE_GATEWAY
  module: meshserve_gateway
  health: meshserve.v1.PredictionService
features:
  envPrefix: MESHSERVE_FEATURES
  module: meshserve_features
  health: meshserve.v1.FeatureService
preprocess:
  envPrefix: MESHSERVE_PREPROCESS
  module: meshserve_preprocess
  health: meshserve.v1.PreprocessService
model:
  envPrefix: MESHSERVE_MODEL
  module: meshserve_model
  health: inference.GRPCInferenceService
{{- end -}}

{{/*
All workloads to deploy: a list of {svc, track}.
*/}}
{{- define "meshserve.workloads" -}}
{{- range $svc := include "meshserve.services" . | fromYamlArray }}
- svc: {{ $svc }}
  track: stable
{{- end }}
{{- if .Values.canary.enabled }}
{{- range $svc := include "meshserve.canaryServices" . | fromYamlArray }}
- svc: {{ $svc }}
  track: canary
{{- end }}
{{- end }}
{{- end -}}

{{/* Name of a workload's Deployment and ConfigMap: <fullname>-<svc>[-canary]. */}}
{{- define "meshserve.workloadName" -}}
{{- $base := printf "%s-%s" (include "meshserve.fullname" .root) .svc -}}
{{- if eq .track "canary" -}}{{ $base }}-canary{{- else -}}{{ $base }}{{- end -}}
{{- end -}}

{{/* Name of a service's main (ClusterIP) Service. ctx: root, svc. */}}
{{- define "meshserve.serviceName" -}}
{{- printf "%s-%s" (include "meshserve.fullname" .root) .svc -}}
{{- end -}}

{{/* Fully qualified host of a service's main Service. ctx: root, svc. */}}
{{- define "meshserve.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "meshserve.serviceName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* Name of the ServiceAccount of a service. ctx: root, svc. */}}
{{- define "meshserve.serviceAccountName" -}}
{{- $sa := (index .root.Values .svc).serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "meshserve.serviceName" .) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "meshserve.labels" -}}
helm.sh/chart: {{ include "meshserve.chart" . }}
{{ include "meshserve.podLabels" . }}
{{- end -}}

{{/* Labels on every pod template (no chart version, so a chart bump alone rolls nothing). */}}
{{- define "meshserve.podLabels" -}}
app.kubernetes.io/name: {{ include "meshserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one service (both tracks). ctx: root, svc. */}}
{{- define "meshserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* Selector labels of one workload (one track). ctx: root, svc, track. */}}
{{- define "meshserve.workloadSelectorLabels" -}}
{{ include "meshserve.selectorLabels" . }}
track: {{ .track }}
{{- end -}}

{{/* Labels of an object that belongs to one service. ctx: root, svc. */}}
{{- define "meshserve.componentLabels" -}}
{{ include "meshserve.labels" .root }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/*
Image reference of a workload. ctx: root, svc, track.
With model.gpu.enabled the model runs the CUDA build (docker/README.md tags it <tag>-cu126;
the CPU build's torch sees no GPU): model.gpu.imageTag as is, else the model tag (or, on the
canary track, canary.imageTag) plus model.gpu.imageTagSuffix unless it already ends with it.
*/}}
{{- define "meshserve.image" -}}
{{- $v := index .root.Values .svc -}}
{{- $d := .root.Values.imageDefaults -}}
{{- $tag := toString (default (default .root.Chart.AppVersion $d.tag) $v.image.tag) -}}
{{- $gpu := and (eq .svc "model") $v.gpu.enabled -}}
{{- $canaryTag := "" -}}
{{- if and (eq .track "canary") .root.Values.canary.imageTag -}}
{{- $canaryTag = toString .root.Values.canary.imageTag -}}
{{- end -}}
{{- if and $gpu (not $canaryTag) $v.gpu.imageTag -}}
{{- $tag = $v.gpu.imageTag -}}
{{- else -}}
{{- if $canaryTag -}}
{{- $tag = $canaryTag -}}
{{- end -}}
{{- if $gpu -}}
{{- $suffix := toString (default "" $v.gpu.imageTagSuffix) -}}
{{- if and $suffix (not (hasSuffix $suffix $tag)) -}}
{{- $tag = printf "%s%s" $tag $suffix -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $repo := $v.image.repository -}}
{{- if $d.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $d.registry) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}

{{/*
gRPC target the gateway of a given track uses for a downstream service.
ctx: root, svc (downstream), track (of the calling gateway).
- without Istio: dns:/// on the headless Service, so grpc-python balances per call
  over the pod IPs (round_robin is set through the service config by the gateway);
- with Istio: the ClusterIP Service; the sidecar balances per request and applies
  the VirtualService. A canary gateway calls the canary-only Services of preprocess
  and model (version consistency), and the shared features Service.
*/}}
{{- define "meshserve.target" -}}
{{- $v := index .root.Values .svc -}}
{{- $fullname := include "meshserve.fullname" .root -}}
{{- $override := index .root.Values.gateway.targets .svc -}}
{{- if and (eq .track "canary") (has .svc (include "meshserve.canaryServices" .root | fromYamlArray)) -}}
{{- printf "%s-%s-canary:%d" $fullname .svc (int $v.port) -}}
{{- else if $override -}}
{{- $override -}}
{{- else if .root.Values.istio.enabled -}}
{{- printf "%s-%s:%d" $fullname .svc (int $v.port) -}}
{{- else -}}
{{- printf "dns:///%s-%s-headless.%s.svc.%s:%d" $fullname .svc .root.Release.Namespace .root.Values.clusterDomain (int $v.port) -}}
{{- end -}}
{{- end -}}

{{/*
Plain environment of a workload (the ConfigMap data), as a YAML map of strings.
ctx: root, svc, track.
*/}}
{{- define "meshserve.configData" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .svc -}}
{{- $p := (index (include "meshserve.meta" . | fromYaml) .svc).envPrefix -}}
{{- $env := dict -}}
{{- $_ := set $env (printf "%s_HOST" $p) "0.0.0.0" -}}
{{- $_ := set $env (printf "%s_PORT" $p) (toString $v.port) -}}
{{- $_ := set $env (printf "%s_METRICS_PORT" $p) (toString $v.metricsPort) -}}
{{- $_ := set $env (printf "%s_GRACE_PERIOD_S" $p) (toString $v.gracePeriodSeconds) -}}
{{- $_ := set $env (printf "%s_LOG_LEVEL" $p) (toString $root.Values.logging.level) -}}
{{- $_ := set $env (printf "%s_LOG_JSON" $p) (toString $root.Values.logging.json) -}}
{{- $_ := set $env (printf "%s_ACCESS_LOG" $p) (toString (default false $root.Values.logging.accessLog)) -}}
{{- include "meshserve.otelEnv" (dict "ctx" . "env" $env) -}}
{{- /* Always set, even empty: "" must override the image's default (docker/Dockerfile). */ -}}
{{- $_ := set $env "GRPC_EXPERIMENTS" (toString (($root.Values.grpc).experiments)) -}}
{{- /* The root filesystem is read-only: caches and temporary files go to emptyDirs. */ -}}
{{- $_ := set $env "HOME" "/var/cache/meshserve" -}}
{{- $_ := set $env "MESHSERVE_HOME" "/var/cache/meshserve" -}}
{{- $_ := set $env "XDG_CACHE_HOME" "/var/cache/meshserve" -}}
{{- $_ := set $env "TMPDIR" "/var/cache/meshserve" -}}
{{- include "meshserve.tlsEnv" (dict "ctx" . "env" $env) -}}
{{- if eq .svc "gateway" -}}
{{- range $down := list "features" "preprocess" "model" -}}
{{- $_ := set $env (printf "%s_%s_TARGET" $p (upper $down)) (include "meshserve.target" (dict "root" $root "svc" $down "track" $.track)) -}}
{{- end -}}
{{- $_ := set $env (printf "%s_MAX_BATCH_ROWS" $p) (toString $v.maxBatchRows) -}}
{{- $_ := set $env (printf "%s_MODEL_NAME" $p) (default $root.Values.model.modelName $v.modelName) -}}
{{- $auth := $v.auth -}}
{{- if and $auth (ne $auth.mode "none") -}}
{{- /* Nothing when auth is off, so an upgrade without auth leaves the gateway's config as it was. */ -}}
{{- $_ := set $env (printf "%s_AUTH_MODE" $p) $auth.mode -}}
{{- if eq $auth.mode "api_key" -}}
{{- $_ := set $env (printf "%s_AUTH_API_KEYS_FILE" $p) (printf "%s/%s" (include "meshserve.authMountPath" .) $auth.apiKeys.key) -}}
{{- else -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_JWKS_FILE" $p) (printf "%s/%s" (include "meshserve.authMountPath" .) $auth.jwt.jwksKey) -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_ISSUER" $p) $auth.jwt.issuer -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_AUDIENCE" $p) $auth.jwt.audience -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_ALGORITHMS" $p) (toJson $auth.jwt.algorithms) -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_CALLER_CLAIM" $p) $auth.jwt.callerClaim -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_LEEWAY_S" $p) (toString $auth.jwt.leewaySeconds) -}}
{{- $_ := set $env (printf "%s_AUTH_JWT_METRIC_CALLERS" $p) (toJson (default (list) $auth.jwt.metricCallers)) -}}
{{- end -}}
{{- end -}}
{{- else if eq .svc "features" -}}
{{- if not $v.feast.existingSecret -}}
{{- $_ := set $env (printf "%s_FEAST_REGISTRY" $p) $v.feast.registry -}}
{{- end -}}
{{- $_ := set $env (printf "%s_FEAST_PROJECT" $p) $v.feast.project -}}
{{- $_ := set $env (printf "%s_FEATURE_SERVICE" $p) $v.feast.featureService -}}
{{- $_ := set $env (printf "%s_ONLINE_STORE" $p) $v.onlineStore -}}
{{- if and (eq $v.onlineStore "redis") (not $v.redis.existingSecret) -}}
{{- $_ := set $env (printf "%s_REDIS_URL" $p) $v.redis.url -}}
{{- end -}}
{{- else -}}
{{- /* preprocess and model load artifacts from MLflow by alias. */ -}}
{{- $_ := set $env (printf "%s_MLFLOW_TRACKING_URI" $p) $root.Values.mlflow.trackingUri -}}
{{- $_ := set $env "MLFLOW_TRACKING_URI" $root.Values.mlflow.trackingUri -}}
{{- $_ := set $env (printf "%s_MODEL_NAME" $p) $v.modelName -}}
{{- $_ := set $env (printf "%s_ALIAS" $p) (ternary $root.Values.canary.alias $v.alias (eq .track "canary")) -}}
{{- if eq .svc "model" -}}
{{- $_ := set $env (printf "%s_DEVICE" $p) $v.device -}}
{{- $_ := set $env (printf "%s_NUM_THREADS" $p) (toString $v.numThreads) -}}
{{- end -}}
{{- end -}}
{{- range $k, $val := $v.env -}}
{{- $_ := set $env $k (toString $val) -}}
{{- end -}}
{{- range $k := keys $env | sortAlpha }}
{{ $k }}: {{ index $env $k | quote }}
{{- end -}}
{{- end -}}

{{/* Secret-backed environment of a workload (secretKeyRef only; never inlined). ctx: root, svc. */}}
{{- define "meshserve.secretEnv" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .svc -}}
{{- if and (has .svc (list "preprocess" "model")) $root.Values.mlflow.existingSecret -}}
{{- range $name := keys $root.Values.mlflow.secretEnv | sortAlpha }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.mlflow.existingSecret }}
      key: {{ index $root.Values.mlflow.secretEnv $name }}
{{- end }}
{{- end }}
{{- if and (eq .svc "features") $v.feast.existingSecret }}
- name: MESHSERVE_FEATURES_FEAST_REGISTRY
  valueFrom:
    secretKeyRef:
      name: {{ $v.feast.existingSecret }}
      key: {{ $v.feast.registryKey }}
{{- end }}
{{- if and (eq .svc "features") (eq $v.onlineStore "redis") $v.redis.existingSecret }}
- name: MESHSERVE_FEATURES_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret }}
      key: {{ $v.redis.urlKey }}
{{- end }}
{{- end -}}

{{/* Where the gateway's auth file (API keys or JWKS) is mounted, read-only. */}}
{{- define "meshserve.authMountPath" -}}
/etc/meshserve/auth
{{- end -}}

{{/*
Volume source of the gateway's auth file (a secret: or configMap: block), or nothing
when auth is off or the workload is not a gateway. ctx: root, svc.
Mode 0440 (288): readable by the pod's fsGroup only, as the gateway runs.
*/}}
{{- define "meshserve.authVolumeSource" -}}
{{- if eq .svc "gateway" -}}
{{- $auth := .root.Values.gateway.auth -}}
{{- if eq $auth.mode "api_key" -}}
secret:
  secretName: {{ $auth.apiKeys.existingSecret }}
  defaultMode: 288
  items:
    - key: {{ $auth.apiKeys.key }}
      path: {{ $auth.apiKeys.key }}
{{- else if eq $auth.mode "jwt" -}}
{{- if $auth.jwt.jwksSecret -}}
secret:
  secretName: {{ $auth.jwt.jwksSecret }}
{{- else -}}
configMap:
  name: {{ $auth.jwt.jwksConfigMap }}
{{- end }}
  defaultMode: 288
  items:
    - key: {{ $auth.jwt.jwksKey }}
      path: {{ $auth.jwt.jwksKey }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A grpc probe. args: port, service (may be empty), cfg (period/failure/timeout). */}}
{{- define "meshserve.grpcProbe" -}}
grpc:
  port: {{ .port }}
  {{- if .service }}
  service: {{ .service }}
  {{- end }}
periodSeconds: {{ .cfg.periodSeconds }}
failureThreshold: {{ .cfg.failureThreshold }}
timeoutSeconds: {{ .cfg.timeoutSeconds }}
{{- with .cfg.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
{{- end -}}

{{/* timeout and retries of a VirtualService route. arg: istio.virtualService. */}}
{{- define "meshserve.vsPolicy" -}}
{{- with .timeout }}
timeout: {{ . }}
{{- end }}
{{- with .retries }}
retries:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
TLS of a workload (values: tls). Adds its settings to the env dict of configData.
args: ctx (root, svc, track), env. TLS off: only MESHSERVE_<SVC>_PLAINTEXT, the explicit choice (and
the health port, which the probes use either way).
*/}}
{{- define "meshserve.tlsEnv" -}}
{{- $root := .ctx.root -}}
{{- $svc := .ctx.svc -}}
{{- $t := $root.Values.tls -}}
{{- $p := (index (include "meshserve.meta" .ctx | fromYaml) $svc).envPrefix -}}
{{- $env := .env -}}
{{- $_ := set $env (printf "%s_PLAINTEXT" $p) (ternary "false" (toString $t.plaintext) $t.enabled) -}}
{{- $_ := set $env (printf "%s_HEALTH_PORT" $p) (toString $root.Values.grpc.healthPort) -}}
{{- if $t.enabled -}}
{{- $dir := trimSuffix "/" $t.mountPath -}}
{{- $_ := set $env (printf "%s_TLS_CERT_FILE" $p) (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $env (printf "%s_TLS_KEY_FILE" $p) (printf "%s/tls.key" $dir) -}}
{{- if ternary $t.gatewayMutual $t.mutual (eq $svc "gateway") -}}
{{- $_ := set $env (printf "%s_TLS_CLIENT_CA_FILE" $p) (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- if eq $svc "gateway" -}}
{{- $_ := set $env (printf "%s_UPSTREAM_TLS_CA_FILE" $p) (printf "%s/ca.crt" $dir) -}}
{{- if $t.mutual -}}
{{- $_ := set $env (printf "%s_UPSTREAM_TLS_CERT_FILE" $p) (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $env (printf "%s_UPSTREAM_TLS_KEY_FILE" $p) (printf "%s/tls.key" $dir) -}}
{{- end -}}
{{- with $t.serverName -}}
{{- $_ := set $env (printf "%s_UPSTREAM_TLS_SERVER_NAME" $p) . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the TLS Secret of a service (empty when TLS is off). ctx: root, svc. */}}
{{- define "meshserve.tlsSecret" -}}
{{- $t := .root.Values.tls -}}
{{- if $t.enabled -}}
{{- default $t.existingSecret (index (default (dict) $t.secrets) .svc) -}}
{{- end -}}
{{- end -}}

{{/* Port of a service's kubelet gRPC probes: always the plaintext health-only server
(answered at the concurrent-call limit, and with TLS on). ctx: root, svc. */}}
{{- define "meshserve.probePort" -}}
{{- .root.Values.grpc.healthPort -}}
{{- end -}}

{{/* Standard OpenTelemetry variables of a workload into the dict .env. ctx: workload context. */}}
{{- define "meshserve.otelEnv" -}}
{{- $t := .ctx.root.Values.tracing -}}
{{- $env := .env -}}
{{- $attrs := list (printf "k8s.namespace.name=%s" .ctx.root.Release.Namespace) (printf "meshserve.track=%s" .ctx.track) -}}
{{- range $k, $v := $t.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- $_ := set $env "OTEL_SERVICE_NAME" (printf "meshserve-%s" .ctx.svc) -}}
{{- $_ := set $env "OTEL_RESOURCE_ATTRIBUTES" (join "," $attrs) -}}
{{- if $t.enabled -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "otlp" -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $t.endpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_INSECURE" (toString (hasPrefix "http://" $t.endpoint)) -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" "parentbased_traceidratio" -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" (toString $t.sampleRatio) -}}
{{- else -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "none" -}}
{{- end -}}
{{- end -}}
