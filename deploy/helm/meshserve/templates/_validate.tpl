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
{{- if and (eq .Values.features.onlineStore "redis") (not .Values.features.redis.url) (not .Values.features.redis.existingSecret) -}}
{{- fail "features.onlineStore is redis: set features.redis.url or features.redis.existingSecret" -}}
{{- end -}}
{{- if and .Values.features.redis.existingSecret (not .Values.features.redis.urlKey) -}}
{{- fail "features.redis.existingSecret is set: set features.redis.urlKey, the key holding host:port,password=..." -}}
{{- end -}}
{{- end -}}
