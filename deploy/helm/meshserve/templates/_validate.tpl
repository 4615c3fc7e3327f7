{{/*
Checks that values.schema.json cannot express (comparisons between two values,
cross-key requirements). Each failure names the keys to fix.
Included from validate.yaml, which renders nothing.
*/}}
{{- define "meshserve.validate" -}}
{{- $root := . -}}
{{- range $svc := include "meshserve.services" . | fromYamlArray -}}
{{- $v := index $root.Values $svc -}}
{{- $a := $v.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%d) must be <= %s.autoscaling.maxReplicas (%d)" $svc (int $a.minReplicas) $svc (int $a.maxReplicas)) -}}
{{- end -}}
{{- if le (int $v.terminationGracePeriodSeconds) (int $v.gracePeriodSeconds) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed %s.gracePeriodSeconds (%d), the drain time after SIGTERM" $svc (int $v.terminationGracePeriodSeconds) $svc (int $v.gracePeriodSeconds)) -}}
{{- end -}}
{{- if eq (int $v.port) (int $v.metricsPort) -}}
{{- fail (printf "%s.port and %s.metricsPort must differ (both %d)" $svc $svc (int $v.port)) -}}
{{- end -}}
{{- if and $v.pdb.enabled (hasKey $v.pdb "minAvailable") (hasKey $v.pdb "maxUnavailable") -}}
{{- fail (printf "%s.pdb: set only one of minAvailable and maxUnavailable (set the other to null)" $svc) -}}
{{- end -}}
{{- if and $v.pdb.enabled (not (hasKey $v.pdb "minAvailable")) (not (hasKey $v.pdb "maxUnavailable")) -}}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable" $svc) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.model.autoscaling.enabled (eq .Values.model.autoscaling.metric "custom") (not .Values.model.autoscaling.custom.name) -}}
{{- fail "model.autoscaling.metric is custom: set model.autoscaling.custom.name (the per-pod metric served by your metrics adapter)" -}}
{{- end -}}
{{- if and .Values.canary.enabled (not .Values.istio.enabled) -}}
{{- fail "canary.enabled requires istio.enabled: the canary weight and header routing are applied by Istio VirtualServices" -}}
{{- end -}}
{{- if and (not .Values.canary.enabled) (gt (int .Values.canary.weight) 0) -}}
{{- fail (printf "canary.weight is %d but canary.enabled is false: set canary.enabled=true (and istio.enabled=true) or canary.weight=0" (int .Values.canary.weight)) -}}
{{- end -}}
{{- if and .Values.canary.enabled (eq .Values.canary.alias .Values.model.alias) -}}
{{- fail (printf "canary.alias (%s) must differ from model.alias: the canary pods must load another model version" .Values.canary.alias) -}}
{{- end -}}
{{- /* From this weight on the canary carries at least half the traffic: never on one unprotected pod. */ -}}
{{- if and .Values.canary.enabled (ge (int .Values.canary.weight) 50) -}}
{{- range $svc := include "meshserve.canaryServices" . | fromYamlArray -}}
{{- $n := int (index $root.Values.canary.replicas $svc) -}}
{{- if lt $n 2 -}}
{{- fail (printf "canary.weight is %d but canary.replicas.%s is %d: from weight 50 the canary carries at least half the traffic, and one pod (which gets no PodDisruptionBudget) fails that share on a node drain or crash; set canary.replicas.gateway, .preprocess and .model to 2 or more (they then get a PodDisruptionBudget), or keep canary.weight below 50" (int $root.Values.canary.weight) $svc $n) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.model.device "cuda") (not .Values.model.gpu.enabled) -}}
{{- fail "model.device is cuda but model.gpu.enabled is false: the model pods would request no GPU and run the CPU image, whose torch sees no CUDA device (never Ready); set model.gpu.enabled=true or model.device=auto|cpu" -}}
{{- end -}}
{{- $tls := .Values.tls -}}
{{- if and (not $tls.enabled) (not $tls.plaintext) -}}
{{- fail "tls.enabled and tls.plaintext are both false: set tls.enabled=true (with tls.existingSecret or tls.secrets) to serve TLS, or tls.plaintext=true to choose plaintext gRPC explicitly (e.g. with istio.enabled)" -}}
{{- end -}}
{{- if and $tls.enabled .Values.istio.enabled -}}
{{- fail "tls.enabled with istio.enabled: keep TLS off under Istio (the sidecars' mTLS encrypts and authenticates every hop; TLS inside it hides the gRPC calls from Istio's routing and canary split)" -}}
{{- end -}}
{{- if $tls.enabled -}}
{{- range $svc := include "meshserve.services" . | fromYamlArray -}}
{{- if not (include "meshserve.tlsSecret" (dict "root" $root "svc" $svc)) -}}
{{- fail (printf "tls.enabled: set tls.existingSecret or tls.secrets.%s (a Secret with ca.crt, tls.crt, tls.key)" $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $svc := include "meshserve.services" . | fromYamlArray -}}
{{- $v := index $root.Values $svc -}}
{{- $hp := int $root.Values.grpc.healthPort -}}
{{- if or (eq $hp (int $v.port)) (eq $hp (int $v.metricsPort)) -}}
{{- fail (printf "grpc.healthPort (%d) must differ from %s.port and %s.metricsPort" $hp $svc $svc) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.features.onlineStore "redis") (not .Values.features.redis.url) (not .Values.features.redis.existingSecret) -}}
{{- fail "features.onlineStore is redis: set features.redis.url or features.redis.existingSecret" -}}
{{- end -}}
{{- $auth := .Values.gateway.auth -}}
{{- if and (eq $auth.mode "api_key") (not $auth.apiKeys.existingSecret) -}}
{{- fail "gateway.auth.mode is api_key: set gateway.auth.apiKeys.existingSecret, the Secret holding the caller:sha256 keys file" -}}
{{- end -}}
{{- if eq $auth.mode "jwt" -}}
{{- if eq (ternary 1 0 (not (empty $auth.jwt.jwksConfigMap))) (ternary 1 0 (not (empty $auth.jwt.jwksSecret))) -}}
{{- fail "gateway.auth.mode is jwt: set exactly one of gateway.auth.jwt.jwksConfigMap and gateway.auth.jwt.jwksSecret (the JWKS of public keys)" -}}
{{- end -}}
{{- if or (not $auth.jwt.issuer) (not $auth.jwt.audience) -}}
{{- fail "gateway.auth.mode is jwt: set gateway.auth.jwt.issuer and gateway.auth.jwt.audience (tokens must carry both)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.istio.enabled (eq (include "meshserve.serviceAccountName" (dict "root" . "svc" "gateway")) "default") -}}
{{- fail "istio.enabled: features, preprocess and model admit only the gateway's service account, and it is \"default\", shared by every pod of the namespace; set gateway.serviceAccount.create=true or gateway.serviceAccount.name" -}}
{{- end -}}
{{- if and .Values.features.feast.existingSecret (not .Values.features.feast.registryKey) -}}
{{- fail "features.feast.existingSecret is set: set features.feast.registryKey, the key holding the registry URL" -}}
{{- end -}}
{{- if and .Values.features.redis.existingSecret (not .Values.features.redis.urlKey) -}}
{{- fail "features.redis.existingSecret is set: set features.redis.urlKey, the key holding host:port,password=..." -}}
{{- end -}}
{{- end -}}
